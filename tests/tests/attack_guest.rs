//! Attack tier: the guest (or whoever writes a container's spec) plays the attacker, and
//! each test checks the outcome on the host. A private containerd runs the pods with
//! `io.containerd.hull.v2` on whatever backend this host picks (QEMU TCG here, hull-vmm
//! where KVM runs guests); none of these tests depends on one backend's process names.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, IMAGE, NAMESPACE};
use hull_tests::wait_until;

const RUNTIME: &str = "io.containerd.hull.v2";

/// A sandbox id is joined into a host path: one that names a host directory (absolute, or
/// with `..`) is refused before anything is started or removed.
#[test]
fn sandbox_id_annotations_cannot_name_host_paths() {
    let c = Containerd::start(false);
    let victim = tempfile::Builder::new()
        .prefix("hull-victim")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(victim.path().join("precious"), b"keep").unwrap();
    let escape = format!("../../../..{}", victim.path().display());
    for (i, sandbox) in [victim.path().to_str().unwrap(), &escape, "a,b=c"]
        .iter()
        .enumerate()
    {
        let id = format!("evil{i}");
        let out = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &format!("io.kubernetes.cri.sandbox-id={sandbox}"),
            IMAGE,
            &id,
            "true",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "sandbox id {sandbox:?} was accepted");
        assert!(stderr.contains("invalid sandbox id"), "{stderr}");
        let _ = c.ctr(&["containers", "rm", &id]);
    }
    assert_eq!(
        std::fs::read(victim.path().join("precious")).unwrap(),
        b"keep"
    );
    c.assert_clean();
}

/// A compromised agent (`hull.fault=plant-share`) tries, before creating its container,
/// to plant a directory and symlinks in the pod's share and to swap the container's rootfs
/// for a symlink: the shim's working tree is read-only to the guest, every attempt fails
/// with EROFS, and nothing appears on the host.
#[test]
fn guest_cannot_plant_or_swap_paths_in_the_share() {
    let c = Containerd::start_with_hull_config(
        "kernel_params = \"hull.log=info hull.fault=plant-share\"",
    );
    c.run_sleeper("pwn", &[]);
    let pod = c.pod_dir(NAMESPACE, "pwn");
    let console = std::fs::read_to_string(pod.join("vm/console.log")).unwrap();
    let attempts: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("hull.fault plant-share"))
        .collect();
    assert_eq!(attempts.len(), 5, "{console}");
    for a in &attempts {
        assert!(
            a.contains("refused") && a.contains("Read-only file system"),
            "{a}"
        );
    }
    for planted in [
        "mounts/planted",
        "mounts/planted-link",
        "mounts/pwn/mounts-link",
        "mounts/pwn/moved",
    ] {
        assert!(
            std::fs::symlink_metadata(pod.join(planted)).is_err(),
            "{planted} exists on the host"
        );
    }
    assert!(
        std::fs::symlink_metadata(pod.join("mounts/pwn/rootfs"))
            .unwrap()
            .is_dir()
    );
    assert!(!Path::new("/etc/cron.d/planted-link").exists());
    c.kill_and_remove("pwn");
    c.assert_clean();
}

/// The guest makes a setuid-root binary and a device node in a read-write volume. On the
/// host, the share that carries them is nosuid/nodev and inside a 0700 pod directory: no
/// other host user reaches the binary, and the device node cannot be opened through it.
#[test]
fn setuid_files_and_device_nodes_from_the_guest_are_inert_on_the_host() {
    let c = Containerd::start(false);
    let vol = tempfile::Builder::new()
        .prefix("hull-vol")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/vol,options=rbind:rw",
        vol.path().display()
    );
    c.ctr_ok(&[
        "run",
        "-d",
        "--privileged",
        "--runtime",
        RUNTIME,
        "--mount",
        &mount,
        IMAGE,
        "suid",
        "sh",
        "-c",
        "cp /bin/busybox /vol/rootsh && chmod 4755 /vol/rootsh && \
         (mknod /vol/mem c 1 1 || true) && touch /vol/done && sleep 600",
    ]);
    assert!(
        wait_until(Duration::from_secs(60), || vol.path().join("done").exists()),
        "the container did not write its files"
    );
    let pod = c.pod_dir(NAMESPACE, "suid");
    let mode = std::fs::metadata(&pod).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "pod directory mode");
    let run_mode = std::fs::metadata(c.run_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        run_mode & 0o044,
        0,
        "run_dir must not be readable by others"
    );
    for log in ["console.log", "pids"] {
        let m = std::fs::metadata(pod.join("vm").join(log)).unwrap();
        assert_eq!(m.permissions().mode() & 0o077, 0, "{log} mode");
    }

    let shared_vol = std::fs::read_dir(pod.join("shared/suid/mounts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("rootsh").exists())
        .expect("the volume in the share");
    use nix::sys::statvfs::{FsFlags, statvfs};
    let flags = statvfs(&shared_vol).unwrap().flags();
    assert!(
        flags.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
        "{flags:?}"
    );
    // Another host user cannot even reach the setuid binary through the share.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(shared_vol.join("rootsh"))
        .args(["id", "-u"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains('0'),
        "an unprivileged user ran the guest's setuid file: {out:?}"
    );
    if shared_vol.join("mem").exists() {
        let e = std::fs::File::open(shared_vol.join("mem")).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EACCES),
            "a device node from the guest opened on the host"
        );
    }
    c.kill_and_remove("suid");
    c.assert_clean();
    assert!(
        vol.path().join("rootsh").exists(),
        "the volume's data is the user's"
    );
}

/// An agent that never answers SignalProcess (wedged), or answers and does nothing (lying):
/// a SIGKILL still ends the task within the agent deadline, by killing the pod VM, and
/// the pod is deleted with nothing left.
fn sigkill_ends_the_pod_despite(fault: &str) {
    let c = Containerd::start_with_hull_config(&format!(
        "agent_timeout_s = 5\nkernel_params = \"hull.log=info hull.fault={fault}\""
    ));
    c.run_sleeper("stuck", &[]);
    let started = Instant::now();
    let deleted = c.kill_and_remove("stuck");
    assert!(
        deleted.contains("exit code 255"),
        "after {:?} with a {fault} agent: {deleted}",
        started.elapsed()
    );
    c.assert_clean();
}

#[test]
fn wedged_agent_cannot_make_its_pod_unkillable() {
    sigkill_ends_the_pod_despite("hang-signals");
}

#[test]
fn lying_agent_cannot_make_its_pod_unkillable() {
    sigkill_ends_the_pod_despite("ignore-signals");
}

/// The shim is SIGKILLed while the VM boots (its VMM is running, the agent not yet
/// answering): the VMM and its daemons die with it, and containerd's `shim delete` leaves
/// nothing behind.
#[test]
fn shim_killed_during_boot_leaves_nothing() {
    let c = Containerd::start(false);
    let mut run = c
        .ctr_cmd(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            "early",
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vmm = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            vmm = c.vmm_pid("early");
            vmm.is_some()
        }),
        "the VMM never started"
    );
    let console = c.pod_dir(NAMESPACE, "early").join("vm/console.log");
    let booted = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        !booted.contains("hull-agent ready"),
        "too late: the agent already answers"
    );
    for pid in c.shim_pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let vmm = vmm.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{vmm}")).exists()
                || std::fs::read_to_string(format!("/proc/{vmm}/stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
        }),
        "the VMM outlived its shim"
    );
    let out = run.wait().unwrap();
    assert!(!out.success(), "ctr run succeeded with its shim killed");
    let _ = c.ctr(&["task", "delete", "early"]);
    let _ = c.ctr(&["containers", "rm", "early"]);
    c.assert_clean();
}

/// A privileged container floods the serial console: the host keeps a bounded console
/// log (a truncation marker, then nothing), and the pod keeps working.
#[test]
fn console_flood_is_bounded_on_the_host() {
    let c = Containerd::start_with_hull_config("log_max_kib = 64");
    c.ctr_ok(&[
        "run",
        "-d",
        "--privileged",
        "--runtime",
        RUNTIME,
        IMAGE,
        "spam",
        "sh",
        "-c",
        "mknod /tmp/con c 4 64 && head -c 400000 /dev/zero | tr '\\0' x > /tmp/con; sleep 600",
    ]);
    let console = c.pod_dir(NAMESPACE, "spam").join("vm/console.log");
    assert!(
        wait_until(Duration::from_secs(120), || {
            std::fs::read_to_string(&console).is_ok_and(|t| t.contains("truncated"))
        }),
        "the console log never reached its bound:\n{}",
        c.tail_log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let size = std::fs::metadata(&console).unwrap().len();
    assert!(size <= 64 * 1024 + 200, "console.log grew to {size} bytes");
    let out = c.ctr_ok(&["task", "exec", "--exec-id", "e1", "spam", "echo", "alive"]);
    assert_eq!(out.trim(), "alive");
    c.kill_and_remove("spam");
    c.assert_clean();
}

/// Whatever a guest makes its VMM and device daemons do, they share one cgroup of their
/// own with a memory and a task limit; it goes with the pod.
#[test]
fn vm_processes_are_capped_in_a_cgroup_of_their_own() {
    let c = Containerd::start(false);
    c.run_sleeper("capped", &[]);
    let pids = std::fs::read_to_string(c.pod_dir(NAMESPACE, "capped").join("vm/pids")).unwrap();
    let records = hull_shim::daemon::PidRecord::parse_file(&pids);
    assert!(records.len() >= 2, "{pids}");
    // The cgroup each recorded process is in, per hierarchy ("0::/hull/x" on v2,
    // "4:memory:/hull/x" and "8:pids:/hull/x" on v1).
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroups_of = |pid: i32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                if v2 {
                    l.starts_with("0::")
                } else {
                    l.contains(":memory:") || l.contains(":pids:")
                }
            })
            .map(|l| l.rsplit(':').next().unwrap().to_string())
            .collect()
    };
    let first = cgroups_of(records[0].pid);
    let vm_cgroup = first
        .iter()
        .find(|p| p.starts_with("/hull/"))
        .unwrap_or_else(|| panic!("the VMM is not in a hull cgroup: {first:?}"))
        .clone();
    for r in &records {
        let cg = cgroups_of(r.pid);
        assert!(
            cg.iter().all(|p| *p == vm_cgroup),
            "{} ({}) is in {cg:?}",
            r.name,
            r.pid
        );
    }
    let (mem_file, pids_file) = if v2 {
        (
            format!("/sys/fs/cgroup{vm_cgroup}/memory.max"),
            format!("/sys/fs/cgroup{vm_cgroup}/pids.max"),
        )
    } else {
        (
            format!("/sys/fs/cgroup/memory{vm_cgroup}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/pids{vm_cgroup}/pids.max"),
        )
    };
    let mem: u64 = std::fs::read_to_string(&mem_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        mem > 256 << 20 && mem < 4 << 30,
        "memory limit {mem} in {mem_file}"
    );
    assert_eq!(std::fs::read_to_string(&pids_file).unwrap().trim(), "1024");
    c.kill_and_remove("capped");
    c.assert_clean();
    assert!(!Path::new(&mem_file).exists(), "{mem_file} left behind");
}

/// A guest that hangs in its first boot (`hull.fault=silent-first-boot`: the agent never
/// serves when `hull.boot_attempt=1`): at the boot deadline the attempt is torn down whole
/// and the one retry boots a VM whose agent answers; the container runs, and nothing of
/// either attempt is left.
#[test]
fn a_boot_that_hangs_is_torn_down_and_booted_again() {
    let c = Containerd::start_with_hull_config(
        "boot_timeout_s = 25\nkernel_params = \"hull.log=info hull.fault=silent-first-boot\"",
    );
    let started = Instant::now();
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "retried",
        "echo",
        "second boot",
    ]);
    assert_eq!(out.trim(), "second boot");
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "the first boot cannot have answered"
    );
    let log = c.log();
    assert_eq!(
        log.matches("booting it again").count(),
        1,
        "one failed attempt, one retry:\n{}",
        c.tail_log()
    );
    c.assert_clean();
}

/// An agent that announces itself and then never answers CreateSandbox: the pod fails
/// within the agent deadline (not the boot's), says why with the guest's console (where
/// the agent logs), frees its boot slot for the next pod, and leaves nothing behind.
#[test]
fn agent_that_wedges_after_boot_fails_its_pod_within_the_deadline() {
    let c = Containerd::start_with_hull_config(
        "agent_timeout_s = 5\nmax_parallel_boots = 1\nkernel_params = \"hull.log=info hull.fault=hang-sandbox\"",
    );
    let started = Instant::now();
    let out = c.ctr(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "wedged", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wedged agent's pod ran");
    assert!(
        err.contains("sandbox was not set up") && err.contains("CreateSandbox"),
        "{err}"
    );
    assert!(
        err.contains("fault: CreateSandbox never answers"),
        "the error carries no console tail: {err}"
    );
    // The boot itself may take up to its own deadline; the wedge costs only the agent's.
    let boot_deadline = Duration::from_secs(120);
    assert!(
        started.elapsed() < boot_deadline + Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    c.assert_clean();
    // The only boot slot came free: the next pod (the same wedged agent) boots at once
    // instead of waiting for a slot.
    let _ = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "wedged2",
        "true",
    ]);
    assert!(
        !c.log_of("wedged2").contains("every boot slot is taken"),
        "{}",
        c.log_of("wedged2")
    );
    c.assert_clean();
}

/// An agent that wedges on a container's creation (`hull.fault=hang-create`), its pod
/// already up: the create fails once `agent_timeout_s` has passed, in words that say which
/// request the guest did not answer and with the guest's console (where the agent said
/// what it was doing), and `ctr run --rm` leaves nothing behind.
#[test]
fn agent_that_wedges_on_a_create_fails_it_with_its_console() {
    let c = Containerd::start_with_hull_config(
        "agent_timeout_s = 5\nkernel_params = \"hull.log=info hull.fault=hang-create\"",
    );
    let started = Instant::now();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "wedged-create",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wedged agent's container ran");
    assert!(
        err.contains("did not answer CreateContainer within its deadline"),
        "{err}"
    );
    assert!(
        err.contains("fault: CreateContainer never answers"),
        "the error carries no console tail: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120 + 30),
        "took {:?}",
        started.elapsed()
    );
    c.assert_clean();
}
