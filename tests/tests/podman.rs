//! Podman (Debian's 4.3, with conmon and netavark) running containers on hull as its OCI
//! runtime: each container a microVM on the backend `auto` picks here (QEMU TCG on this
//! PVM host, hull-vmm where KVM is real). Podman gets a private store and run root, a
//! containers.conf naming this build's `hull` and pointing it (through conmon's
//! environment) at this tree's guest, and an image imported from a local busybox tree:
//! no registry.
//!
//! Checked as a user sees it: output and exit status of `run --rm`; `-d` with a volume
//! and a memory limit (the VM grows by it), `exec` with its status, `logs`, `pause` /
//! `unpause`, `stop` (the workload's SIGTERM trap runs); `-it` on a terminal with its
//! size; bridge networking with a published port reached from the host; and nothing of
//! any container left afterwards.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use hull_tests::oci::{self, http_get, text};
use std::time::Duration;

const IMAGE: &str = "localhost/hull-test-busybox:latest";

/// This test's Podman: its store, run root and containers.conf, and hull's config.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        hull_tests::require_root();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        oci::hull_config(d, "memory_mib = 256\n");
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\nruntime = \"hull\"\nconmon_env_vars = [\"PATH={}\", \"HULL_CONFIG={}\"]\n\
                 [engine.runtimes]\nhull = [\"{}\"]\n",
                std::env::var("PATH").unwrap_or_default(),
                d.join("hull.toml").display(),
                hull_tests::target_bin_dir().join("hull").display()
            ),
        )
        .unwrap();
        let p = Podman { dir };
        let tarball = oci::busybox_tarball(p.dir.path());
        let imported = p.run(&["import", tarball.to_str().unwrap(), IMAGE]);
        assert!(imported.status.success(), "{}", text(&imported));
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--cgroup-manager")
            .arg("cgroupfs")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// No container, VM process, pod directory or mount of this test is left.
    fn assert_clean(&self) {
        let listed = self.ok(&["ps", "-aq"]);
        assert!(listed.trim().is_empty(), "containers left: {listed}");
        oci::assert_gone(
            &self.run_dir().to_string_lossy(),
            &self.run_dir().join("hull-oci"),
        );
        assert!(hull_tests::agent::mounts_under(&self.run_dir()).is_empty());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd(&["rm", "-af", "-t", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .cmd(&["rmi", "-af"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn host_kernel() -> String {
    let u = nix::sys::utsname::uname().unwrap();
    u.release().to_string_lossy().into_owned()
}

#[test]
fn podman_runs_containers_in_microvms() {
    let p = Podman::new();

    // run --rm: output from the guest kernel, the exit status.
    let o = p.run(&["run", "--rm", IMAGE, "sh", "-c", "uname -r; exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{}", text(&o));
    let release = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        !release.is_empty() && release != host_kernel(),
        "the container ran on the guest kernel, not the host's: {release}"
    );

    // -d with a volume and a memory limit; exec, logs, pause/unpause, stop.
    let vol = p.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("f"), "from the host\n").unwrap();
    let script = "echo started; trap 'echo got TERM; exit 0' TERM; while true; do sleep 1; done";
    p.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "-v",
        &format!("{}:/data", vol.display()),
        "--memory",
        "128m",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let o = p.run(&[
        "exec",
        "c1",
        "sh",
        "-c",
        "cat /data/f; grep MemTotal /proc/meminfo; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("from the host"), "{out}");
    let mem_kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out}"));
    assert!(
        mem_kib > 256 * 1024,
        "a 256 MiB VM grown by the 128 MiB limit: MemTotal {mem_kib} kB"
    );
    p.ok(&["pause", "c1"]);
    let state = p.ok(&["inspect", "--format", "{{.State.Status}}", "c1"]);
    assert_eq!(state.trim(), "paused");
    p.ok(&["unpause", "c1"]);
    p.ok(&["stop", "-t", "30", "c1"]);
    let logs = p.ok(&["logs", "c1"]);
    assert!(
        logs.contains("started") && logs.contains("got TERM"),
        "{logs}"
    );
    let code = p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "c1"]);
    assert_eq!(code.trim(), "0");
    p.ok(&["rm", "c1"]);
    p.assert_clean();
}

#[test]
fn podman_gives_a_terminal_and_a_network() {
    let p = Podman::new();

    // -it, on a terminal that `script` makes, sized before podman starts.
    let podman = format!(
        "stty cols 91 rows 27; CONTAINERS_CONF={} podman --root {} --runroot {} \
         --cgroup-manager cgroupfs run -it --rm {IMAGE} sh -c 'tty; stty size; exit 3'",
        p.dir.path().join("containers.conf").display(),
        p.dir.path().join("storage").display(),
        p.dir.path().join("runroot").display(),
    );
    let o = Command::new("script")
        .args(["-qec", &podman, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        out.contains("/dev/pts/"),
        "a terminal in the container: {out:?}"
    );
    assert!(out.contains("27 91"), "the caller's terminal size: {out:?}");

    // Bridge networking: a published port reaches the server in the VM.
    let www = p.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served from a hull microVM\n").unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16;
    p.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "-v",
        &format!("{}:/www", www.display()),
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let mut body = String::new();
    let got = hull_tests::wait_until(Duration::from_secs(30), || {
        body = http_get(port).unwrap_or_default();
        body.contains("served from a hull microVM")
    });
    assert!(got, "GET through the published port: {body:?}");
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    p.assert_clean();
}
