//! `make demo`: boots a hull pod VM (QEMU; TCG where KVM can't run a guest), runs one
//! busybox container in it through the agent, shows its output, and tears it all down.
//! The containerd path replaces this once the shim lands.

use std::time::Instant;

use hull_tests::agent_ops::{ctx, remove, run};
use hull_tests::bundle::{rootfs_in, spec};
use hull_tests::vm::TestVm;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let (accel, why) = hull_shim::hypervisor::accel::Accel::detect();
    println!(
        "hull demo: booting a pod VM ({accel:?}{})",
        if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        }
    );
    let mut t = TestVm::boot(256).await?;
    println!("hull demo: agent answered {:.2?} after start", t.boot_time);
    t.create_sandbox("demo-pod", "hull-demo").await?;
    let rootfs = rootfs_in(&t.shared(), "hello");
    let script = "echo \"Hello from a container in a hull microVM!\"; \
                  echo \"guest kernel $(uname -r), hostname $(hostname), pid $$\"";
    let r = run(
        &t.client.agent,
        "hello",
        &spec(&t.guest_path(&rootfs), &["sh", "-c", script]),
    )
    .await;
    println!("---- container output ----");
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    println!("---- exit status {} ----", r.status);
    remove(&t.client.agent, "hello").await?;
    t.client
        .agent
        .destroy_sandbox(ctx(), &Default::default())
        .await?;
    let exited = t.vm.wait_exit(std::time::Duration::from_secs(60))?;
    println!(
        "hull demo: VM shut down ({}), total {:.2?}",
        exited
            .map(|s| s.to_string())
            .unwrap_or("still running".into()),
        started.elapsed()
    );
    if r.status != 0 {
        anyhow::bail!("container exited with {}", r.status);
    }
    Ok(())
}
