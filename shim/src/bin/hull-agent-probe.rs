//! `hull-agent-probe`: asks a pod VM's agent, through the VM's hybrid vsock socket,
//! whether it serves and what the guest is; with `--destroy`, ends the pod (DestroySandbox,
//! after which the guest resets and its VMM exits). For operators debugging a pod, and
//! for tests of VMMs that have no shim on top yet.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hull_protocols::agent::{
    DestroySandboxRequest, GetGuestDetailsRequest, GetGuestStatsRequest, ReseedGuestRequest,
};
use hull_protocols::health::CheckRequest;
use hull_shim::agent_client::AgentClient;

#[derive(Debug, Parser)]
#[command(
    name = "hull-agent-probe",
    about = "Check a hull pod VM's agent over hybrid vsock"
)]
struct Cli {
    /// The VM's hybrid vsock unix socket.
    #[arg(long)]
    vsock_uds: PathBuf,
    /// Seconds to wait for the agent to answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Before the checks, hand the guest 64 bytes of fresh entropy (and this hostname,
    /// if given), as a VM restored from a snapshot needs.
    #[arg(long)]
    reseed: bool,
    #[arg(long, requires = "reseed")]
    hostname: Option<String>,
    /// End the pod after the checks.
    #[arg(long)]
    destroy: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(probe(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull-agent-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fills `buf` from the host kernel's CRNG.
fn getrandom_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    let n = nix::errno::Errno::result(
        // SAFETY: getrandom writes at most buf.len() bytes into the buffer we own.
        unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) },
    )?;
    anyhow::ensure!(n as usize == buf.len(), "getrandom gave {n} bytes");
    Ok(())
}

async fn probe(cli: &Cli) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let client = AgentClient::connect(&cli.vsock_uds, Duration::from_secs(cli.timeout)).await?;
    let ctx = || ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
    let health = client.health.check(ctx(), &CheckRequest::new()).await?;
    println!(
        "health {:?} (connected after {:.2?})",
        health.status.enum_value_or_default(),
        started.elapsed()
    );
    if cli.reseed {
        let mut req = ReseedGuestRequest::new();
        req.entropy = vec![0; 64];
        getrandom_fill(&mut req.entropy)?;
        req.hostname = cli.hostname.clone().unwrap_or_default();
        client.agent.reseed_guest(ctx(), &req).await?;
        println!("reseeded");
    }
    let g = client
        .agent
        .get_guest_details(ctx(), &GetGuestDetailsRequest::new())
        .await?;
    println!(
        "guest kernel {}, memory {} MiB, {} cpu(s), agent {} (API {})",
        g.kernel_release,
        g.mem_total_bytes >> 20,
        g.online_cpus,
        g.agent_version,
        g.api_version
    );
    println!(
        "guest random_uuid={} hostname={}",
        g.random_uuid, g.hostname
    );
    let stats = client
        .agent
        .get_guest_stats(ctx(), &GetGuestStatsRequest::new())
        .await?;
    println!("guest uptime_ms={}", stats.uptime_ms);
    if cli.destroy {
        client
            .agent
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await?;
        println!("destroyed");
    }
    Ok(())
}
