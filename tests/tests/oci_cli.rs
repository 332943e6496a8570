//! `hull` as an OCI runtime, driven the way go-runc and conmon drive runc: one subprocess
//! per command, the container's stdio handed to `create`, its pid read from `--pid-file`
//! and reaped by the caller (this test is a child subreaper, as conmon and
//! containerd-shim-runc-v2 are). Each container is a real pod VM on whatever backend
//! `auto` picks here (QEMU TCG on this PVM host, hull-vmm where KVM is real); nothing
//! below depends on which.
//!
//! Checked: the create/start/state/kill/delete lifecycle and its state JSON, the exit
//! status the caller reaps, signals reaching the workload in the guest, pause/resume, ps,
//! exec (foreground and detached), update and events, terminal containers, list, `run`
//! in the foreground, runc's errors and exit status for an unknown id, a duplicate id, a
//! bad bundle, a second start and a delete of a running container, the JSON error log
//! go-runc reads, a supervisor killed outright, and that nothing (state entry, pod
//! directory, VM process, mount) is left after each delete or failed create.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use hull_tests::bundle;
use hull_tests::oci::{self, text};

/// One test's world: a hull config with a private run directory, a state root, bundles.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        hull_tests::require_root();
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        oci::hull_config(dir.path(), "");
        World { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `hull --root <root> args...`, as a command to run.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(hull_tests::target_bin_dir().join("hull"));
        c.arg("--root")
            .arg(self.root())
            .args(args)
            .env("HULL_CONFIG", self.dir.path().join("hull.toml"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `hull args...`. Its output goes through files, not pipes: a supervisor that
    /// a failing assertion did not expect would hold a pipe open and hang the test.
    fn hull(&self, args: &[&str]) -> Output {
        let out = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        let err = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        let status = self
            .cmd(args)
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .status()
            .expect("running hull");
        Output {
            status,
            stdout: std::fs::read(out.path()).unwrap(),
            stderr: std::fs::read(err.path()).unwrap(),
        }
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.hull(args);
        assert!(o.status.success(), "hull {args:?} failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command that must fail as runc fails (exit status 1); its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.hull(args);
        assert_eq!(o.status.code(), Some(1), "hull {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// A bundle `name` with a busybox rootfs running `args`.
    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let b = self.dir.path().join(name);
        let rootfs = b.join("rootfs");
        bundle::busybox_rootfs(&rootfs).unwrap();
        let spec = bundle::spec(Path::new("rootfs"), args);
        std::fs::write(b.join("config.json"), bundle::to_json(&spec)).unwrap();
        b
    }

    /// Edits the bundle's config.json.
    fn edit_spec(&self, bundle: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut spec);
        std::fs::write(path, spec.to_string()).unwrap();
    }

    /// `create` with the container's stdout and stderr going to files in the bundle;
    /// the supervisor's pid, from the pid file.
    fn create(&self, id: &str, bundle: &Path) -> i32 {
        let pid_file = bundle.join("pid");
        let status = self
            .cmd(&[
                "create",
                "--bundle",
                bundle.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                id,
            ])
            .stdout(File::create(bundle.join("stdout")).unwrap())
            .stderr(File::create(bundle.join("stderr")).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "create {id}: {}",
            std::fs::read_to_string(bundle.join("stderr")).unwrap_or_default()
        );
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Fails unless no trace of any container is left: state entries, pod directories,
    /// mounts, and processes whose command line names this test's directory.
    fn assert_clean(&self) {
        let marker = self.dir.path().to_string_lossy().into_owned();
        let leftovers = || {
            let entries: Vec<_> = std::fs::read_dir(self.root())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            let mounts = hull_tests::agent::mounts_under(&self.run_dir());
            (entries, mounts, oci::processes_naming(&marker))
        };
        let clean = hull_tests::wait_until(Duration::from_secs(15), || {
            let (e, m, r) = leftovers();
            e.is_empty() && m.is_empty() && r.is_empty()
        });
        assert!(clean, "left behind: {:?}", leftovers());
        oci::assert_gone(&marker, &self.run_dir().join("hull-oci"));
    }
}

impl Drop for World {
    /// A test that failed half-way must not leave VMs running under the next ones.
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self
                .cmd(&["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The supervisor's parent (`hull create`) exits at once; as conmon does, this process
/// adopts it so that it can reap it and read the container's exit status.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER"));
}

/// Waits (up to `timeout`) for the supervisor `pid` to exit; its exit status, as a shell
/// reports it (128 + n for a signal).
fn reap(pid: i32, timeout: Duration) -> i32 {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => {}
            Err(e) => panic!("waitpid {pid}: {e} (not adopted?)"),
        }
        assert!(Instant::now() < deadline, "supervisor {pid} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn create_start_state_delete_as_go_runc_drives_it() {
    let w = World::new();
    let b = w.bundle(
        "echo",
        &[
            "sh",
            "-c",
            "echo hello from hull; echo to stderr >&2; exit 3",
        ],
    );
    // Host-side hooks, each writing the state it got on stdin into the bundle.
    let hook = |name: &str| {
        serde_json::json!([{"path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", b.display())]}])
    };
    w.edit_spec(&b, |s| {
        s["hooks"] = serde_json::json!({
            "createRuntime": hook("createRuntime"),
            "poststart": hook("poststart"),
            "poststop": hook("poststop"),
        })
    });
    let hook_state = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(b.join(format!("{name}.json"))).unwrap()).unwrap()
    };
    let pid = w.create("echo", &b);
    let cr = hook_state("createRuntime");
    assert_eq!(cr["id"], "echo", "{cr}");
    assert_eq!(cr["status"], "creating", "{cr}");
    assert_eq!(cr["pid"], pid, "{cr}");
    assert!(!b.join("poststart.json").exists());
    let st = w.state("echo");
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["pid"], pid, "state's pid is the pid file's: {st}");
    assert_eq!(st["id"], "echo");
    assert_eq!(st["bundle"], b.canonicalize().unwrap().to_str().unwrap());
    assert!(
        st["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1."))
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // runc's errors while it exists: a duplicate id, a second create changing nothing.
    let dup = w.fails(&["create", "--bundle", b.to_str().unwrap(), "echo"]);
    assert!(
        dup.contains("container with given ID already exists"),
        "{dup}"
    );
    assert_eq!(w.status("echo"), "created");
    let listed: serde_json::Value =
        serde_json::from_str(&w.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["id"], "echo", "{listed}");
    assert_eq!(w.ok(&["list", "-q"]).trim(), "echo");

    w.ok(&["start", "echo"]);
    assert_eq!(hook_state("poststart")["status"], "running");
    assert_eq!(
        reap(pid, Duration::from_secs(60)),
        3,
        "the workload's exit status"
    );
    let out = std::fs::read_to_string(b.join("stdout")).unwrap();
    let err = std::fs::read_to_string(b.join("stderr")).unwrap();
    assert_eq!(out, "hello from hull\n", "the container's stdout only");
    assert!(err.contains("to stderr"), "{err}");
    let st = w.state("echo");
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["pid"], 0, "{st}");
    let again = w.fails(&["start", "echo"]);
    assert!(
        again.contains("cannot start a container that has stopped"),
        "{again}"
    );

    assert!(!b.join("poststop.json").exists());
    w.ok(&["delete", "echo"]);
    assert_eq!(hook_state("poststop")["status"], "stopped");
    let gone = w.fails(&["state", "echo"]);
    assert!(gone.contains("container does not exist"), "{gone}");
    w.assert_clean();
}

#[test]
fn signals_pause_ps_and_delete_of_a_running_container() {
    let w = World::new();
    let script = "trap 'echo got TERM; exit 7' TERM; echo up; while true; do sleep 1; done";
    let b = w.bundle("loop", &["sh", "-c", script]);
    let pid = w.create("loop", &b);
    w.ok(&["start", "loop"]);
    let twice = w.fails(&["start", "loop"]);
    assert!(
        twice.contains("cannot start an already running container"),
        "{twice}"
    );
    assert_eq!(w.status("loop"), "running");
    let running = w.fails(&["delete", "loop"]);
    assert!(
        running.contains("cannot delete container loop that is not stopped: running"),
        "{running}"
    );
    assert_eq!(
        w.status("loop"),
        "running",
        "a refused delete changes nothing"
    );

    // The table: the workload's processes in the guest (sh and its sleep). The JSON,
    // which callers take for host pids: the supervisor only.
    let table = w.ok(&["ps", "loop"]);
    assert!(table.lines().skip(1).count() >= 1, "{table}");
    let pids: Vec<i64> = serde_json::from_str(&w.ok(&["ps", "--format", "json", "loop"])).unwrap();
    assert_eq!(pids, vec![i64::from(pid)], "host pids: the supervisor's");

    // exec, in the foreground: its output, its status, the command line's changes.
    let o = w.hull(&[
        "exec",
        "--env",
        "FOO=bar",
        "--user",
        "65534:65534",
        "--cwd",
        "/tmp",
        "loop",
        "sh",
        "-c",
        "echo $FOO $(id -u) $(pwd); echo oops >&2; exit 9",
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bar 65534 /tmp\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("oops"),
        "{}",
        text(&o)
    );
    // --detach: the holder's pid to reap; a signal to it reaches the process in the guest.
    let exec_pid = b.join("exec.pid");
    w.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        exec_pid.to_str().unwrap(),
        "loop",
        "sh",
        "-c",
        "trap 'exit 11' TERM; while true; do sleep 1; done",
    ]);
    let holder: i32 = std::fs::read_to_string(&exec_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(reap(holder, Duration::from_secs(30)), 11);
    let e = w.fails(&["exec", "loop"]);
    assert!(e.contains("no command"), "{e}");

    w.ok(&["pause", "loop"]);
    assert_eq!(w.status("loop"), "paused");
    let e = w.fails(&["exec", "loop", "true"]);
    assert!(e.contains("paused"), "{e}");
    w.ok(&["resume", "loop"]);
    assert_eq!(w.status("loop"), "running");

    // update: limits applied to the container's cgroup in the guest, read back by events.
    let e = w.fails(&["update", "loop"]);
    assert!(e.contains("nothing to change"), "{e}");
    w.ok(&["update", "--memory", "64m", "--pids-limit", "50", "loop"]);
    let ev: serde_json::Value =
        serde_json::from_str(&w.ok(&["events", "--stats", "loop"])).unwrap();
    assert_eq!(ev["type"], "stats", "{ev}");
    assert_eq!(ev["id"], "loop", "{ev}");
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 64 << 20, "{ev}");
    assert_eq!(ev["data"]["pids"]["limit"], 50, "{ev}");
    assert!(ev["data"]["pids"]["current"].as_u64() >= Some(1), "{ev}");
    assert!(
        ev["data"]["cpu"]["usage"]["total"].as_u64() > Some(0),
        "{ev}"
    );

    let bad = w.fails(&["kill", "loop", "NOSUCHSIG"]);
    assert!(bad.contains("invalid signal"), "{bad}");
    w.ok(&["kill", "loop", "TERM"]);
    assert_eq!(
        reap(pid, Duration::from_secs(60)),
        7,
        "the trap's exit status"
    );
    let out = std::fs::read_to_string(b.join("stdout")).unwrap();
    assert_eq!(out, "up\ngot TERM\n");
    assert_eq!(w.status("loop"), "stopped");
    let e = w.fails(&["exec", "loop", "true"]);
    assert!(e.contains("stopped"), "{e}");
    w.ok(&["delete", "loop"]);
    w.assert_clean();

    // --force ends a running container and its VM.
    let pid = w.create("forced", &w.bundle("forced", &["sleep", "1000"]));
    w.ok(&["start", "forced"]);
    w.ok(&["delete", "--force", "forced"]);
    assert_eq!(reap(pid, Duration::from_secs(30)), 137, "SIGKILL's status");
    w.assert_clean();
}

#[test]
fn run_in_the_foreground_prints_and_exits_with_the_status() {
    let w = World::new();
    let b = w.bundle("fg", &["sh", "-c", "cat; echo exiting; exit 5"]);
    let mut child = w
        .cmd(&["run", "--bundle", b.to_str().unwrap(), "fg"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "through stdin\nexiting\n",
        "{}",
        text(&o)
    );
    // `run` without --keep deletes the container.
    let gone = w.fails(&["state", "fg"]);
    assert!(gone.contains("container does not exist"), "{gone}");
    w.assert_clean();
    assert!(o.status.signal().is_none());
}

#[test]
fn bad_input_gets_runc_errors_and_leaves_nothing() {
    let w = World::new();
    for args in [
        &["state", "nosuch"][..],
        &["start", "nosuch"],
        &["kill", "nosuch", "KILL"],
        &["delete", "nosuch"],
        &["pause", "nosuch"],
        &["ps", "nosuch"],
    ] {
        let e = w.fails(args);
        assert!(e.contains("container does not exist"), "{args:?}: {e}");
    }
    // An id that would leave the state root.
    let e = w.fails(&["state", "../etc"]);
    assert!(!e.is_empty());

    let missing = w.dir.path().join("no-such-bundle");
    let e = w.fails(&["create", "--bundle", missing.to_str().unwrap(), "c1"]);
    assert!(e.contains("no-such-bundle"), "{e}");

    let b = w.bundle("broken", &["true"]);
    std::fs::write(
        b.join("config.json"),
        b"{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    let log = w.dir.path().join("runtime.log");
    let e = w.fails(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "c1",
    ]);
    assert!(e.contains("config.json"), "{e}");
    // go-runc reads the last line of the log for the error.
    let last = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error", "{line}");
    assert!(
        line["msg"].as_str().unwrap().contains("config.json"),
        "{line}"
    );
    assert!(line["time"].as_str().is_some(), "{line}");

    // Hooks meant for the container's namespaces (in the VM) are refused up front; a
    // failing createRuntime hook undoes a create whose VM had booted.
    let b = w.bundle("hooked", &["true"]);
    w.edit_spec(&b, |s| {
        s["hooks"] = serde_json::json!({"createContainer": [{"path": "/bin/true"}]})
    });
    let e = w.fails(&["create", "--bundle", b.to_str().unwrap(), "c3"]);
    assert!(e.contains("createContainer"), "{e}");
    w.edit_spec(&b, |s| {
        s["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/sh",
            "args": ["sh", "-c", "echo hook says no >&2; exit 2"]}]})
    });
    let e = w.fails(&["create", "--bundle", b.to_str().unwrap(), "c3"]);
    assert!(
        e.contains("hook /bin/sh") && e.contains("exit status: 2"),
        "{e}"
    );
    w.assert_clean();

    // A spec the guest refuses: the VM boots, creating fails, everything is undone.
    let b = w.bundle("nobinary", &["/no/such/binary"]);
    let o = w.hull(&["create", "--bundle", b.to_str().unwrap(), "c2"]);
    if o.status.success() {
        // runc too creates such a container and fails at start; either way nothing stays.
        let e = w.fails(&["start", "c2"]);
        assert!(!e.is_empty());
        w.ok(&["delete", "--force", "c2"]);
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    }
    w.assert_clean();
    assert!(w.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn spec_and_features_answer_without_a_vm() {
    let w = World::new();
    let b = w.dir.path().join("fresh");
    std::fs::create_dir_all(&b).unwrap();
    w.ok(&["spec", "--bundle", b.to_str().unwrap()]);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs", "{spec}");
    assert!(spec["process"]["args"].is_array(), "{spec}");
    let again = w.fails(&["spec", "--bundle", b.to_str().unwrap()]);
    assert!(again.contains("config.json"), "{again}");
    let features: serde_json::Value = serde_json::from_str(&w.ok(&["features"])).unwrap();
    assert!(features["ociVersionMax"].as_str().is_some(), "{features}");
}

/// A supervisor killed with SIGKILL (an OOM kill, a careless operator) takes its VM with
/// it; the container reads as stopped and `delete` removes what was left on disk.
#[test]
fn a_killed_supervisor_leaves_no_vm_running() {
    let w = World::new();
    let pid = w.create("orphan", &w.bundle("orphan", &["sleep", "1000"]));
    w.ok(&["start", "orphan"]);
    let marker = w.run_dir().join("hull-oci").join("orphan");
    let vm_procs = || oci::processes_naming(&marker.to_string_lossy());
    assert!(
        !vm_procs().is_empty(),
        "the VM's daemons name the pod directory"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(reap(pid, Duration::from_secs(10)), 137);
    assert!(
        hull_tests::wait_until(Duration::from_secs(15), || vm_procs().is_empty()),
        "VM processes outlived their supervisor: {:?}",
        vm_procs()
    );
    assert_eq!(w.status("orphan"), "stopped");
    w.ok(&["delete", "orphan"]);
    w.assert_clean();
}

/// Receives the pty master that `create --console-socket` sends, as conmon does.
fn receive_master(listener: &std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("a descriptor in the console socket's message");
    // SAFETY: the descriptor was just received in SCM_RIGHTS; nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// `process.terminal`: the caller gets the pty's master through its console socket; what
/// it writes reaches the container's terminal in the guest, its window size too, and the
/// container's output comes back on the master.
#[test]
fn a_terminal_container_is_reached_through_the_console_socket() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let w = World::new();
    let b = w.bundle(
        "tty",
        &[
            "sh",
            "-c",
            "tty >/dev/null && echo on a tty; stty size; read l; echo \"got $l\"; exit 6",
        ],
    );
    w.edit_spec(&b, |s| s["process"]["terminal"] = true.into());

    // Without a console socket, runc's refusal; nothing made.
    let e = w.fails(&["create", "--bundle", b.to_str().unwrap(), "tty"]);
    assert!(e.contains("console socket"), "{e}");
    assert!(w.ok(&["list", "-q"]).trim().is_empty());

    let sock_path = w.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let pid_file = b.join("pid");
    let o = w.hull(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "tty",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let master = receive_master(&listener);
    let ws = libc::winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a pointer valid across the call.
    unsafe { tiocswinsz(master.as_raw_fd(), &ws) }.unwrap();
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the supervisor, the slave's last holder, has exited.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    w.ok(&["start", "tty"]);
    std::fs::File::from(master).write_all(b"ping\n").unwrap();
    assert_eq!(reap(pid, Duration::from_secs(60)), 6);
    let out = output.join().unwrap();
    assert!(out.contains("on a tty"), "{out:?}");
    assert!(
        out.contains("33 101"),
        "the window size set on the master: {out:?}"
    );
    assert!(out.contains("got ping"), "{out:?}");
    w.ok(&["delete", "tty"]);
    w.assert_clean();
}
