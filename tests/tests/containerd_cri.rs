//! The CRI path as the kubelet uses it: containerd's CRI plugin with a `hull` runtime
//! handler, driven by PyPI's CRI client (scripts in tests/cri).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hull_tests::containerd::Containerd;

/// The set-up script's Python (with the CRI client).
fn python() -> PathBuf {
    std::env::var("HULL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hull"))
        .join("venv/bin/python")
}

/// Runs a CRI client script from tests/cri with the set-up script's Python; returns stdout.
fn run_script(c: &Containerd, name: &str, extra: &[&std::ffi::OsStr]) -> String {
    let python = python();
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let script = hull_tests::repo_root().join("tests/cri").join(name);
    let out = Command::new(&python)
        .env("HULL_CONFIG", c.hull_config())
        .arg(&script)
        .arg(c.socket())
        .arg(&logs)
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} with {} (run scripts/setup.sh): {e}",
                script.display(),
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}\n--- containerd ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.tail_log()
    );
    stdout
}

#[test]
fn pod_with_two_containers_in_one_vm() {
    let c = Containerd::start(true);
    let out = run_script(&c, "pod_lifecycle.py", &[c.dir.path().as_os_str()]);
    assert!(out.contains("pod lifecycle ok"));
    c.assert_clean();
}

/// Pods on a CNI bridge: the guest's eth0 has the pod IP, pods reach each other and the
/// bridge's side reaches them (ping, HTTP), containers of a pod share localhost,
/// resolv.conf is the pod's DNSConfig, a hostNetwork pod is refused, and nothing is left.
#[test]
fn pods_on_a_cni_bridge_reach_each_other_and_the_host() {
    let c = Containerd::start(true);
    let python = python();
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut script = Command::new(&python)
        .arg(hull_tests::repo_root().join("tests/cri/pod_network.py"))
        .arg(c.socket())
        .arg(&logs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting pod_network.py");
    let mut out = BufReader::new(script.stdout.take().unwrap());
    let mut seen = String::new();
    let ip = loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let status = script.wait().unwrap();
            panic!(
                "pod_network.py ended ({status}) before READY:\n{seen}\n{}",
                c.tail_log()
            );
        }
        eprint!("{line}");
        seen.push_str(&line);
        if let Some(ip) = line.strip_prefix("READY ") {
            break ip.trim().to_string();
        }
    };
    let host = |args: &[&str]| {
        let o = c.host_net_cmd("busybox", args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (pinged, _) = host(&["ping", "-c", "1", "-W", "5", &ip]);
    let (fetched, page) = host(&[
        "timeout",
        "10",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{ip}:8080/index.html"),
    ]);
    script.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    eprint!("{rest}");
    let status = script.wait().unwrap();
    assert!(pinged, "the bridge's side cannot ping pod {ip}");
    assert!(
        fetched && page.trim() == "hull-web-ok",
        "HTTP from the bridge's side to {ip}: {page:?}"
    );
    assert!(
        status.success() && rest.contains("pod network ok"),
        "{seen}{rest}\n{}",
        c.tail_log()
    );
    c.assert_clean();
}

/// A CRI pod with two containers as the operator sees it: `hull pods` lists it with both
/// containers; `hull monitor`'s /metrics (real HTTP, parsed by Prometheus' parser in the
/// script) has its VM's, guest's, containers' and agent calls' figures, and none once the
/// pod is removed; the monitor's event lines tell the pod's life.
#[test]
fn hull_pods_and_monitor_see_a_cri_pod_with_two_containers() {
    let c = Containerd::start(true);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hull = hull_tests::target_bin_dir().join("hull");
    let mut monitor = Command::new(&hull)
        .args(["monitor", "--listen", &format!("127.0.0.1:{port}")])
        .env("HULL_CONFIG", c.hull_config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting hull monitor");
    // Serving once it says so on stderr.
    let mut said = String::new();
    BufReader::new(monitor.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.contains("serving"), "{said}");

    let out = run_script(
        &c,
        "pod_observed.py",
        &[
            hull.as_os_str(),
            std::ffi::OsStr::new(&format!("http://127.0.0.1:{port}/metrics")),
        ],
    );
    assert!(out.contains("pod observed ok"), "{out}");
    let sandbox = out.lines().next().unwrap().trim().to_string();

    // Events are polled twice a second: give the last ones time to be printed.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _ = monitor.kill();
    let mut events = String::new();
    monitor
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut events)
        .unwrap();
    let _ = monitor.wait();
    let kinds: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["sandbox"] == sandbox.as_str())
        .map(|v| v["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        kinds,
        ["boot", "ready", "shutdown", "removed"],
        "events:\n{events}"
    );
    c.assert_clean();
}
