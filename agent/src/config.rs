//! Where the agent listens and keeps its state: fixed guest defaults when it runs as
//! PID 1 in the VM, command-line flags when it runs on a host (tests, development).

use std::path::PathBuf;

use hull_protocols::AGENT_VSOCK_PORT;

/// Whether the agent owns the machine (guest PID 1) or is a guest on someone else's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 in the pod VM: mounts the base filesystems, may set the hostname and
    /// powers the VM off on DestroySandbox.
    Guest,
    /// An ordinary process on a host: touches nothing outside its state and shared dirs.
    Host,
}

/// Misbehaviour on purpose (kernel parameter `hull.fault=`), so that the host side can be
/// tested against an agent that is compromised or broken: the host must cope with any
/// agent, and this is how the attack tier gets one. It only changes what this agent does
/// inside its own VM, which a guest can always do anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SignalProcess never answers (a wedged agent).
    HangSignals,
    /// CreateSandbox never answers: an agent that announces itself, then wedges.
    HangSandbox,
    /// CreateContainer never answers: a pod that is up, whose agent wedges on its
    /// first container.
    HangCreate,
    /// SignalProcess answers OK and signals nothing (a lying agent).
    IgnoreSignals,
    /// Before each CreateContainer, tries to plant symlinks and swap the rootfs in the
    /// pod's share (see `fault::plant_in_share`).
    PlantShare,
    /// From the first CreateContainer on, opens as many vsock connections to host port
    /// `fault::FLOOD_PORT` as it can and fills each one past the host's credit (see
    /// `fault::flood_vsock`).
    VsockFlood,
    /// On the first boot attempt (`hull.boot_attempt=1`) never serves nor announces
    /// itself (a guest that hangs in boot), so the shim's retry path runs.
    SilentFirstBoot,
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        match s {
            "hang-signals" => Some(Fault::HangSignals),
            "hang-sandbox" => Some(Fault::HangSandbox),
            "hang-create" => Some(Fault::HangCreate),
            "ignore-signals" => Some(Fault::IgnoreSignals),
            "plant-share" => Some(Fault::PlantShare),
            "vsock-flood" => Some(Fault::VsockFlood),
            "silent-first-boot" => Some(Fault::SilentFirstBoot),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub mode: Mode,
    /// ttrpc listen address: `vsock://-1:1024` or `unix:///path`.
    pub listen: String,
    /// Container rootfs and bind-mount sources must lie under this directory.
    pub shared_dir: PathBuf,
    /// Bundles, libcontainer state, console sockets and sandbox namespaces.
    pub state_dir: PathBuf,
    /// tracing filter, e.g. `info` or `hull_agent=debug`.
    pub log: String,
    /// Deliberate misbehaviour for tests of the host side; none normally.
    pub fault: Option<Fault>,
    /// Which boot of this pod's VM this is (`hull.boot_attempt=`, from the shim); 1 first.
    pub boot_attempt: u32,
    /// Whether to serve the debug console (`hull.debug_console=1`, guest only).
    pub debug_console: bool,
}

impl AgentConfig {
    pub fn guest(kernel_cmdline: &str) -> Self {
        let log = kernel_cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("hull.log="))
            .unwrap_or("warn")
            .to_string();
        let fault = kernel_cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("hull.fault="))
            .and_then(Fault::parse);
        let boot_attempt = kernel_cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("hull.boot_attempt="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let debug_console = kernel_cmdline
            .split_whitespace()
            .any(|w| w == "hull.debug_console=1");
        AgentConfig {
            mode: Mode::Guest,
            listen: format!("vsock://-1:{AGENT_VSOCK_PORT}"),
            shared_dir: PathBuf::from("/run/hull/shared"),
            state_dir: PathBuf::from("/run/hull/state"),
            log,
            fault,
            boot_attempt,
            debug_console,
        }
    }

    /// libcontainer's state root.
    pub fn runtime_root(&self) -> PathBuf {
        self.state_dir.join("runtime")
    }

    /// Per-container files the agent writes (config.json, process specs, sockets).
    pub fn bundles_dir(&self) -> PathBuf {
        self.state_dir.join("bundles")
    }

    /// Bind mounts that keep the pod's shared IPC and UTS namespaces alive.
    pub fn sandbox_ns_dir(&self) -> PathBuf {
        self.state_dir.join("sandbox-ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_log_level_comes_from_cmdline() {
        let c = AgentConfig::guest("console=ttyS0 hull.log=debug quiet");
        assert_eq!(c.log, "debug");
        assert_eq!(c.listen, "vsock://-1:1024");
        assert_eq!(AgentConfig::guest("console=ttyS0").log, "warn");
        assert_eq!(AgentConfig::guest("console=ttyS0").boot_attempt, 1);
        let retry = AgentConfig::guest("hull.boot_attempt=2 hull.fault=silent-first-boot");
        assert_eq!(retry.boot_attempt, 2);
        assert_eq!(retry.fault, Some(Fault::SilentFirstBoot));
        assert_eq!(AgentConfig::guest("console=ttyS0").fault, None);
        assert_eq!(
            AgentConfig::guest("hull.fault=hang-signals").fault,
            Some(Fault::HangSignals)
        );
        assert_eq!(AgentConfig::guest("hull.fault=nonsense").fault, None);
        assert!(AgentConfig::guest("quiet hull.debug_console=1").debug_console);
        assert!(!AgentConfig::guest("hull.debug_console=10").debug_console);
    }
}
