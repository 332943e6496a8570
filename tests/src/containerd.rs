//! A private containerd 1.6 for tests: its own root, state, sockets and config in a
//! temporary directory, with hull's shim on its PATH and a hull config that boots
//! `build/vmlinux` + `build/initrd.img`. The busybox test image is imported at start.
//! Dropping it stops containerd and anything of the test still running (by pid, found by
//! the test's own directory in its command line), and unmounts what is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub const IMAGE: &str = "docker.io/hull/busybox:test";
pub const NAMESPACE: &str = "hull-test";
/// containerd's namespace for CRI (kubelet) resources.
pub const CRI_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    pub dir: TempDir,
    child: Option<Child>,
    /// With CRI: the network namespace containerd runs in (its CNI bridge lives there).
    netns: Option<String>,
}

/// The pod network of CRI tests: CNI's `bridge` plugin on a bridge in containerd's own
/// network namespace (so test traffic never touches the host's), host-local IPAM, dual
/// stack.
pub const POD_SUBNET_V4: &str = "198.18.0.0/24";
pub const POD_SUBNET_V6: &str = "fd42:4855:4c4c::/64";
pub const POD_GATEWAY_V4: &str = "198.18.0.1";

impl Containerd {
    /// `cri`: also enable containerd's CRI plugin with the `hull` runtime handler and a CNI
    /// pod network (see `POD_SUBNET_V4`); containerd then runs in a network namespace of
    /// its own.
    pub fn start(cri: bool) -> Containerd {
        Self::start_with(cri, "")
    }

    /// Without CRI, with `extra` appended to the shim's hull.toml; a `kernel`,
    /// `kernel_params` or `boot_timeout_s` line in it replaces the default one.
    pub fn start_with_hull_config(extra: &str) -> Containerd {
        Self::start_with(false, extra)
    }

    fn start_with(cri: bool, extra: &str) -> Containerd {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("hull-ctrd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        let build = crate::repo_root().join("build");
        let hull_toml = d.join("hull.toml");
        // TOML refuses a key twice: `extra` replaces these defaults by naming them.
        let names = |key: &str| {
            extra
                .lines()
                .any(|l| l.split('=').next().map(str::trim) == Some(key))
        };
        let mut defaults = String::new();
        for (key, value) in [
            ("kernel", format!("{:?}", build.join("vmlinux"))),
            ("kernel_params", "\"hull.log=info\"".into()),
            ("boot_timeout_s", "45".into()),
        ] {
            if !names(key) {
                defaults += &format!("{key} = {value}\n");
            }
        }
        std::fs::write(
            &hull_toml,
            format!(
                "{defaults}initrd = \"{}\"\nrun_dir = \"{}\"\nlog_level = \"debug\"\n{extra}\n",
                build.join("initrd.img").display(),
                d.join("run").display()
            ),
        )
        .unwrap();
        let cni_section = if cri {
            let conf_dir = d.join("cni");
            std::fs::create_dir_all(&conf_dir).unwrap();
            let conflist = format!(
                r#"{{"cniVersion":"0.4.0","name":"hull-test","plugins":[{{"type":"bridge","bridge":"hullbr0","isGateway":true,"ipMasq":false,"hairpinMode":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_SUBNET_V4}"}}],[{{"subnet":"{POD_SUBNET_V6}"}}]],"routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"::/0"}}],"dataDir":"{ipam}"}}}}]}}"#,
                ipam = d.join("cni-ipam").display()
            );
            std::fs::write(conf_dir.join("10-hull-test.conflist"), conflist).unwrap();
            format!(
                "  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = \"{}\"\n",
                conf_dir.display()
            )
        } else {
            String::new()
        };
        let cri_section = if cri {
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n  \
             sandbox_image = \"docker.io/hull/pause:test\"\n  \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n  \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\n    runtime_type = \"io.containerd.hull.v2\"\n"
                .to_string()
                + &cni_section
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string()
        };
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{cri_section}\n[grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  level = \"info\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let path = format!(
            "{}:{}",
            crate::target_bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let netns = cri.then(new_netns);
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("HULL_CONFIG", &hull_toml)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let c = Containerd {
            dir,
            child: Some(child),
            netns,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let image = crate::repo_root().join("tests/images/busybox-oci.sh");
        let out = Command::new(&image)
            .output()
            .expect("building the busybox image");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tar = String::from_utf8(out.stdout).unwrap();
        c.ctr_ok(&["images", "import", tar.trim()]);
        if cri {
            let out = c
                .ctr_cmd_in(CRI_NAMESPACE, &["images", "import", tar.trim()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "importing into {CRI_NAMESPACE}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c
    }

    /// `program args` run in containerd's network namespace (where the pod bridge is):
    /// "the host" as the pods see it.
    pub fn host_net_cmd(&self, program: &str, args: &[&str]) -> Command {
        let ns = self
            .netns
            .as_ref()
            .expect("containerd runs in a netns only with CRI");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg(program)
            .args(args);
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The hull config file this containerd's shims read (`HULL_CONFIG`).
    pub fn hull_config(&self) -> PathBuf {
        self.dir.path().join("hull.toml")
    }

    /// The hull run directory (pod directories live under `<run>/<namespace>/`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_in(NAMESPACE, args)
    }

    pub fn ctr_cmd_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg("180")
            .arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .arg("-n")
            .arg(namespace)
            .args(args);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    /// Runs ctr and returns its stdout; fails the test (with containerd's log) otherwise.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- containerd log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.tail_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn tail_log(&self) -> String {
        last_lines(self.log().lines())
    }

    /// The last 60 log lines that name `id` (a pod's shim and VM lines carry it): what
    /// one pod went through, when many ran at once.
    pub fn log_of(&self, id: &str) -> String {
        last_lines(self.log().lines().filter(|l| l.contains(id)))
    }

    /// Processes (other than containerd) whose command line names this test's directory:
    /// shims, QEMU, virtiofsd, vhost-device-vsock.
    pub fn leftover_processes(&self) -> Vec<(i32, String)> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        let containerd = self.child.as_ref().map(|c| c.id() as i32);
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if Some(pid) == containerd || pid == std::process::id() as i32 {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&marker)
                && !cmd.starts_with("timeout ")
                && !cmd.contains(" ctr ")
                && !cmd.starts_with("ctr ")
            {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// As `assert_clean`, after giving the shims up to `grace` to finish exiting.
    pub fn assert_clean_within(&self, grace: Duration) {
        assert!(
            crate::wait_until(grace, || self.leftover_processes().is_empty()),
            "left: {:?}\n{}",
            self.leftover_processes(),
            self.tail_log()
        );
        self.assert_clean();
    }

    /// Fails unless no VM, daemon, mount or pod directory of this test is left.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let procs = self.leftover_processes();
            let mounts = crate::agent::mounts_under(&self.run_dir());
            let pods: Vec<PathBuf> = [NAMESPACE, CRI_NAMESPACE]
                .iter()
                .flat_map(|ns| {
                    std::fs::read_dir(self.run_dir().join(ns))
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|e| e.path())
                .collect();
            if procs.is_empty() && mounts.is_empty() && pods.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: processes {procs:?}, mounts {mounts:?}, pod dirs {pods:?}\n{}",
                self.tail_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr run --rm` of `argv` in a new pod `id` on hull's runtime, which must succeed;
    /// what it printed.
    pub fn run_rm_ok(&self, id: &str, argv: &[&str]) -> String {
        let mut args = vec![
            "run",
            "--rm",
            "--runtime",
            "io.containerd.hull.v2",
            IMAGE,
            id,
        ];
        args.extend_from_slice(argv);
        self.ctr_ok(&args)
    }

    /// Starts `n` pods at once (`ctr run --rm`, ids `<prefix><i>`, each echoing its
    /// number) and fails the test unless every one ran and printed its own line.
    pub fn run_at_once(&self, n: usize, prefix: &str) {
        let runs: Vec<_> = (0..n)
            .map(|i| {
                self.ctr_cmd(&[
                    "run",
                    "--rm",
                    "--runtime",
                    "io.containerd.hull.v2",
                    IMAGE,
                    &format!("{prefix}{i}"),
                    "echo",
                    &format!("pod {i} ran"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting ctr")
            })
            .collect();
        // Every run ends before anything is judged: a failure then reports every pod that
        // failed, and no pod is still booting while the test unwinds.
        let outs: Vec<_> = runs
            .into_iter()
            .map(|run| run.wait_with_output().expect("waiting for ctr"))
            .collect();
        let failed: Vec<String> = outs
            .iter()
            .enumerate()
            .filter(|(i, out)| {
                !out.status.success()
                    || String::from_utf8_lossy(&out.stdout).trim() != format!("pod {i} ran")
            })
            .map(|(i, out)| {
                format!(
                    "pod {i}: {}\nstdout: {}\n--- its log lines ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout),
                    self.log_of(&format!("{prefix}{i}"))
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {n} pods failed:\n{}\n--- the log's tail ---\n{}",
            failed.len(),
            failed.join("\n"),
            self.tail_log()
        );
    }

    /// Runs container `id` (`sleep 600`) detached with hull's runtime, and `extra` ctr run
    /// options before the image.
    pub fn run_sleeper(&self, id: &str, extra: &[&str]) {
        let mut args = vec!["run", "-d", "--runtime", "io.containerd.hull.v2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id, "sleep", "600"]);
        self.ctr_ok(&args);
    }

    /// Waits up to `timeout` for task `id` to be STOPPED.
    pub fn wait_stopped(&self, id: &str, timeout: Duration) -> bool {
        crate::wait_until(timeout, || {
            self.ctr_ok(&["task", "ls"])
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("STOPPED"))
        })
    }

    /// SIGKILLs task `id`, waits for it to stop, deletes it and its container; returns
    /// what `task delete` said (ctr prints the exit code on stderr).
    pub fn kill_and_remove(&self, id: &str) -> String {
        self.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
        assert!(
            self.wait_stopped(id, Duration::from_secs(40)),
            "task {id} did not stop after SIGKILL:\n{}",
            self.tail_log()
        );
        let del = self.ctr(&["task", "delete", id]);
        self.ctr_ok(&["containers", "rm", id]);
        String::from_utf8_lossy(&del.stderr).into_owned()
    }

    /// The directory of pod `sandbox` in namespace `namespace`.
    pub fn pod_dir(&self, namespace: &str, sandbox: &str) -> PathBuf {
        self.run_dir().join(namespace).join(sandbox)
    }

    /// The pid of pod `sandbox`'s VMM (QEMU or hull-vmm, whichever the host runs), from the
    /// pod's pid file.
    pub fn vmm_pid(&self, sandbox: &str) -> Option<i32> {
        let pids =
            std::fs::read_to_string(self.pod_dir(NAMESPACE, sandbox).join("vm/pids")).ok()?;
        hull_shim::daemon::PidRecord::parse_file(&pids)
            .into_iter()
            .find(|r| r.role == "vmm")
            .map(|r| r.pid)
    }

    /// The pid of this test's one shim process.
    pub fn shim_pids(&self) -> Vec<i32> {
        self.leftover_processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim-hull-v2"))
            .map(|(p, _)| p)
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

fn stop(pid: i32, grace: Duration) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(child.id() as i32, Duration::from_secs(5));
            let _ = child.wait();
        }
        for (pid, _) in self.leftover_processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        for m in crate::agent::mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// A new named network namespace with loopback up, for one test's containerd.
fn new_netns() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "hull-ctrd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    for args in [
        vec!["netns", "add", name.as_str()],
        vec!["-n", name.as_str(), "link", "set", "lo", "up"],
    ] {
        let out = Command::new("ip").args(&args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    name
}

/// The last 60 of `lines`, joined: enough of a log to read in a failure message.
fn last_lines<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let lines: Vec<&str> = lines.collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
