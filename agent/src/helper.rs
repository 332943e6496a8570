//! `hull-agent runtime …`: a short-lived, single-threaded child of the agent that drives
//! libcontainer. libcontainer forks and clones; doing that from the agent's tokio threads
//! risks a child inheriting a held lock, so each create or exec runs here instead.
//!
//! The helper's own stdio is the container process's stdio; its result (the new pid, or
//! the error) goes to a JSON file the agent reads after the helper exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Subcommand)]
pub enum RuntimeCmd {
    /// Create a container's init process, stopped before exec until StartContainer.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        bundle: PathBuf,
    },
    /// Start an additional process in a running container.
    Exec {
        #[command(flatten)]
        common: Common,
        /// OCI process JSON.
        #[arg(long)]
        process: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    #[arg(long)]
    pub root: PathBuf,
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub result: PathBuf,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HelperResult {
    Pid(i32),
    Error(String),
}

pub fn run(cmd: RuntimeCmd) -> ExitCode {
    let (common, outcome) = match cmd {
        RuntimeCmd::Create { common, bundle } => {
            let r = create(&common, &bundle);
            (common, r)
        }
        RuntimeCmd::Exec { common, process } => {
            let r = exec(&common, &process);
            (common, r)
        }
    };
    let (result, code) = match outcome {
        Ok(pid) => (HelperResult::Pid(pid), ExitCode::SUCCESS),
        Err(e) => (HelperResult::Error(format!("{e:#}")), ExitCode::FAILURE),
    };
    let json = serde_json::to_vec(&result).expect("result serializes");
    if std::fs::write(&common.result, json).is_err() {
        return ExitCode::from(2);
    }
    code
}

fn builder(c: &Common) -> anyhow::Result<ContainerBuilder> {
    Ok(ContainerBuilder::new(c.id.clone(), SyscallType::Linux)
        .with_root_path(&c.root)
        .context("libcontainer root")?
        .with_console_socket(c.console_socket.as_ref()))
}

fn create(c: &Common, bundle: &Path) -> anyhow::Result<i32> {
    let container = builder(c)?
        .validate_id()
        .context("container id")?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    container
        .pid()
        .map(|p| p.as_raw())
        .context("created container has no pid")
}

fn exec(c: &Common, process: &Path) -> anyhow::Result<i32> {
    let pid = builder(c)?
        .as_tenant()
        .with_process(Some(process))
        .with_detach(true)
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(pid.as_raw())
}
