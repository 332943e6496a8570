//! Docker (Debian's docker.io 20.10) running containers on hull through
//! `dockerd --add-runtime hull=…`: containerd-shim-runc-v2 drives `hull` as it drives
//! runc. A private dockerd (its own data and exec roots, socket, and a bridge of its own
//! with iptables left alone, so nothing of the host's Docker set-up is touched); an image
//! imported from a local busybox tree. Each container is a microVM on the backend `auto`
//! picks here.
//!
//! Checked as a user sees it: `run --rm` output and exit status, bridge networking (the
//! VM takes the veth that Docker's prestart hook moved into the namespace hull made) with
//! a published port reached from the host, `exec` with its status, `stop` running the
//! workload's SIGTERM trap, `-it` with the terminal's size, and that no container, VM
//! process or pod directory is left.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use hull_tests::oci::{self, http_get, text};
use std::time::Duration;

const IMAGE: &str = "hull-test-busybox:latest";
const DOCKER: &str = "/usr/bin/docker";
const BRIDGE: &str = "hulldk0";

struct Docker {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Docker {
    fn start() -> Docker {
        hull_tests::require_root();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        oci::hull_config(d, "");
        // A bridge of this test's own, so that no docker0 is made or reused.
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        for args in [
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["addr", "add", "172.31.254.1/24", "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
        ] {
            assert!(Command::new("ip").args(&args).status().unwrap().success());
        }
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let daemon = Command::new("dockerd")
            .env("HULL_CONFIG", d.join("hull.toml"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args(["--bridge", BRIDGE, "--iptables=false", "--ip-masq=false"])
            .arg("--add-runtime")
            .arg(format!(
                "hull={}",
                hull_tests::target_bin_dir().join("hull").display()
            ))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let docker = Docker { dir, daemon };
        assert!(
            hull_tests::wait_until(Duration::from_secs(60), || docker
                .run(&["version"])
                .status
                .success()),
            "dockerd did not come up: {}",
            docker.log()
        );
        let tarball = oci::busybox_tarball(docker.dir.path());
        docker.ok(&["import", tarball.to_str().unwrap(), IMAGE]);
        docker
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .args(args)
        .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "docker {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn assert_clean(&self) {
        let listed = self.ok(&["ps", "-aq"]);
        assert!(listed.trim().is_empty(), "containers left: {listed}");
        oci::assert_gone(
            &self.run_dir().to_string_lossy(),
            &self.run_dir().join("hull-oci"),
        );
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = self
            .cmd(&["rm", "-f", "-v", "web", "c1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if !hull_tests::wait_until(Duration::from_secs(30), || {
            matches!(self.daemon.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
}

#[test]
fn docker_runs_containers_in_microvms() {
    let d = Docker::start();

    // run --rm: the guest's network (the bridge's address), the exit status.
    let o = d.run(&[
        "run",
        "--rm",
        "--runtime",
        "hull",
        IMAGE,
        "sh",
        "-c",
        "ip -4 addr show eth0; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}\n{}", text(&o), d.log());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("inet 172.31.254."),
        "the container's address on the test bridge: {}",
        text(&o)
    );

    // A server in a VM, reached through a published port.
    let www = d.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "docker via hull\n").unwrap();
    let port = 20000 + ((std::process::id() + 7) % 20000) as u16;
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--runtime",
        "hull",
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
        body.contains("docker via hull")
    });
    assert!(got, "GET through the published port: {body:?}\n{}", d.log());
    d.ok(&["rm", "-f", "web"]);

    // exec, stop.
    let script = "echo up; trap 'echo got TERM; exit 0' TERM; while true; do sleep 1; done";
    d.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--runtime",
        "hull",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let o = d.run(&["exec", "c1", "sh", "-c", "echo in exec; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "in exec\n");
    d.ok(&["stop", "-t", "30", "c1"]);
    let logs = d.ok(&["logs", "c1"]);
    assert!(logs.contains("up") && logs.contains("got TERM"), "{logs}");
    d.ok(&["rm", "c1"]);

    // -it on a terminal that `script` makes.
    let docker = format!(
        "stty cols 77 rows 22; DOCKER_HOST=unix://{} {DOCKER} run -it --rm --runtime hull \
         {IMAGE} sh -c 'stty size; exit 2'",
        d.dir.path().join("docker.sock").display()
    );
    let o = Command::new("script")
        .args(["-qec", &docker, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("22 77"),
        "{}",
        text(&o)
    );
    d.assert_clean();
}
