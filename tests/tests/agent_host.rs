//! Tier 2: hull-agent on a host unix socket creating real busybox containers (root).
//! Each test runs its own agent in a private directory; dropping it checks for leaks.

use std::time::Duration;

use hull_protocols::agent::*;
use hull_protocols::health::CheckRequest;
use hull_protocols::health::health_check_response::ServingStatus;
use hull_tests::agent::HostAgent;
use hull_tests::agent_ops::*;
use hull_tests::bundle::{cgroup_dirs, rootfs_in, seccomp_denying_mkdir, spec};
use oci_spec::runtime::{LinuxPidsBuilder, LinuxResourcesBuilder};
use ttrpc::Code;

#[tokio::test]
async fn health_and_version() {
    let a = HostAgent::start().await;
    let r = a.health.check(ctx(), &CheckRequest::new()).await.unwrap();
    assert_eq!(r.status.enum_value_or_default(), ServingStatus::SERVING);
    let v = a.health.version(ctx(), &CheckRequest::new()).await.unwrap();
    assert_eq!(v.api_version, hull_protocols::API_VERSION);
}

#[tokio::test]
async fn stdout_stderr_and_exit_codes() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    let r = run(
        &a.agent,
        "ok",
        &spec(&rootfs, &["sh", "-c", "echo to-out; echo to-err >&2"]),
    )
    .await;
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.status),
        ("to-out\n", "to-err\n", 0)
    );

    let r = run(&a.agent, "three", &spec(&rootfs, &["sh", "-c", "exit 3"])).await;
    assert_eq!(r.status, 3);

    // A large burst right before exit must arrive whole.
    let r = run(
        &a.agent,
        "burst",
        &spec(&rootfs, &["sh", "-c", "seq 1 20000"]),
    )
    .await;
    assert_eq!(r.stdout.lines().count(), 20000);
    assert_eq!(r.stdout.lines().last(), Some("20000"));
    for id in ["ok", "three", "burst"] {
        remove(&a.agent, id).await.unwrap();
    }
}

#[tokio::test]
async fn sigkill_reports_137_and_cleans_up() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    create(&a.agent, "k", &spec(&rootfs, &["sleep", "60"]))
        .await
        .unwrap();
    start(&a.agent, "k").await.unwrap();
    signal(&a.agent, "k", "", 9, false).await.unwrap();
    assert_eq!(wait(&a.agent, "k", "").await, 137);
    // A signal to a process that has exited is refused, and the agent keeps serving.
    assert_eq!(
        code(signal(&a.agent, "k", "", 15, false).await),
        Code::NOT_FOUND
    );
    remove(&a.agent, "k").await.unwrap();
    assert!(
        !a.state().join("runtime/k").exists(),
        "libcontainer state left behind"
    );
    assert!(!a.state().join("bundles/k").exists(), "bundle left behind");
    assert_eq!(
        cgroup_dirs("k"),
        Vec::<std::path::PathBuf>::new(),
        "cgroup left behind"
    );
    assert_eq!(code(remove(&a.agent, "k").await), Code::NOT_FOUND);
}

#[tokio::test]
async fn stdin_through_cat() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    create(&a.agent, "cat", &spec(&rootfs, &["cat"]))
        .await
        .unwrap();
    start(&a.agent, "cat").await.unwrap();
    write_stdin(&a.agent, "cat", "", b"hello through stdin\n").await;
    close_stdin(&a.agent, "cat", "").await;
    assert_eq!(
        read_all(&a.agent, "cat", "", false).await,
        "hello through stdin\n"
    );
    assert_eq!(wait(&a.agent, "cat", "").await, 0);
    remove(&a.agent, "cat").await.unwrap();
}

#[tokio::test]
async fn tty_with_resize() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    let mut s = spec(
        &rootfs,
        &["sh", "-c", "read line; tty; stty size; echo got:$line"],
    );
    s.process_mut().as_mut().unwrap().set_terminal(Some(true));
    create(&a.agent, "t", &s).await.unwrap();
    let mut st = ContainerStateRequest::new();
    st.container_id = "t".into();
    assert!(a.agent.container_state(ctx(), &st).await.unwrap().terminal);
    // A tty process has no separate stderr.
    let mut rq = ReadStreamRequest::new();
    rq.container_id = "t".into();
    rq.len = 10;
    assert_eq!(
        code(a.agent.read_stderr(ctx(), &rq).await),
        Code::FAILED_PRECONDITION
    );

    let mut rs = TtyWinResizeRequest::new();
    rs.container_id = "t".into();
    rs.rows = 33;
    rs.columns = 111;
    a.agent.tty_win_resize(ctx(), &rs).await.unwrap();
    start(&a.agent, "t").await.unwrap();
    write_stdin(&a.agent, "t", "", b"typed\n").await;
    let out = read_all(&a.agent, "t", "", false).await;
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("33 111"), "{out:?}");
    assert!(out.contains("got:typed"), "{out:?}");
    assert_eq!(wait(&a.agent, "t", "").await, 0);
    remove(&a.agent, "t").await.unwrap();
}

#[tokio::test]
async fn exec_into_running_container_and_pid_namespace() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    create(&a.agent, "svc", &spec(&rootfs, &["sleep", "60"]))
        .await
        .unwrap();
    start(&a.agent, "svc").await.unwrap();

    let process = serde_json::json!({
        "args": ["sh", "-c", "echo exec-ok; ps -o pid,args; exit 7"],
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "terminal": false,
    });
    let mut req = ExecProcessRequest::new();
    req.container_id = "svc".into();
    req.exec_id = "e1".into();
    req.process = serde_json::to_vec(&process).unwrap();
    a.agent.exec_process(ctx(), &req).await.unwrap();
    assert_eq!(
        code(a.agent.exec_process(ctx(), &req).await),
        Code::ALREADY_EXISTS
    );
    close_stdin(&a.agent, "svc", "e1").await;
    let out = read_all(&a.agent, "svc", "e1", false).await;
    assert_eq!(wait(&a.agent, "svc", "e1").await, 7);
    assert!(out.starts_with("exec-ok\n"), "{out:?}");
    // In the container's pid namespace its init is pid 1.
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sleep", "60"]),
        "{out:?}"
    );

    let mut lp = ListProcessesRequest::new();
    lp.container_id = "svc".into();
    let procs = a.agent.list_processes(ctx(), &lp).await.unwrap();
    assert!(
        procs
            .processes
            .iter()
            .any(|p| p.exec_id.is_empty() && p.pid > 1)
    );

    // SIGTERM would be dropped: pid 1 of a pid namespace ignores unhandled signals.
    signal(&a.agent, "svc", "", 9, true).await.unwrap();
    assert_eq!(wait(&a.agent, "svc", "").await, 137);
    remove(&a.agent, "svc").await.unwrap();
}

#[tokio::test]
async fn hostname_and_readonly_rootfs() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    let mut s = spec(&rootfs, &["sh", "-c", "hostname; touch /newfile"]);
    s.set_hostname(Some("hull-test-host".into()));
    let mut root = s.root().clone().unwrap();
    root.set_readonly(Some(true));
    s.set_root(Some(root));
    let r = run(&a.agent, "ro", &s).await;
    assert_eq!(r.stdout, "hull-test-host\n");
    assert!(r.stderr.contains("Read-only file system"), "{:?}", r.stderr);
    assert_ne!(r.status, 0);
    assert!(!rootfs.join("newfile").exists());
    remove(&a.agent, "ro").await.unwrap();
}

#[tokio::test]
async fn pause_resume_update_stats() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    create(&a.agent, "p", &spec(&rootfs, &["sleep", "60"]))
        .await
        .unwrap();
    start(&a.agent, "p").await.unwrap();
    let mut st = ContainerStateRequest::new();
    st.container_id = "p".into();
    let state = |s: ContainerStateResponse| s.status.enum_value_or_default();
    use container_state_response::Status as S;

    let mut pr = PauseContainerRequest::new();
    pr.container_id = "p".into();
    a.agent.pause_container(ctx(), &pr).await.unwrap();
    assert_eq!(
        state(a.agent.container_state(ctx(), &st).await.unwrap()),
        S::PAUSED
    );
    let mut rr = ResumeContainerRequest::new();
    rr.container_id = "p".into();
    a.agent.resume_container(ctx(), &rr).await.unwrap();
    assert_eq!(
        state(a.agent.container_state(ctx(), &st).await.unwrap()),
        S::RUNNING
    );
    assert_eq!(
        code(a.agent.resume_container(ctx(), &rr).await),
        Code::FAILED_PRECONDITION
    );

    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(64i64).build().unwrap())
        .build()
        .unwrap();
    let mut ur = UpdateContainerRequest::new();
    ur.container_id = "p".into();
    ur.resources = serde_json::to_vec(&res).unwrap();
    a.agent.update_container(ctx(), &ur).await.unwrap();
    ur.resources = b"{bad".to_vec();
    assert_eq!(
        code(a.agent.update_container(ctx(), &ur).await),
        Code::INVALID_ARGUMENT
    );

    let mut sr = StatsContainerRequest::new();
    sr.container_id = "p".into();
    let stats = a.agent.stats_container(ctx(), &sr).await.unwrap();
    assert_eq!(stats.pids.current, 1);
    assert_eq!(stats.pids.limit, 64);
    assert!(stats.memory.usage > 0);
    remove(&a.agent, "p").await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_agent_keeps_serving() {
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    let good = spec(&rootfs, &["true"]);

    assert_eq!(code(start(&a.agent, "nope").await), Code::NOT_FOUND);
    assert_eq!(
        code(signal(&a.agent, "nope", "", 9, false).await),
        Code::NOT_FOUND
    );
    for bad_id in ["a/b", "..", "../x", ""] {
        assert_eq!(
            code(create(&a.agent, bad_id, &good).await),
            Code::INVALID_ARGUMENT,
            "{bad_id:?}"
        );
    }

    let mut missing = good.clone();
    missing
        .root_mut()
        .as_mut()
        .unwrap()
        .set_path(a.shared().join("absent/rootfs"));
    assert!(message(create(&a.agent, "m", &missing).await).contains("does not exist"));

    let mut outside = good.clone();
    outside.root_mut().as_mut().unwrap().set_path("/".into());
    assert_eq!(
        code(create(&a.agent, "o", &outside).await),
        Code::INVALID_ARGUMENT
    );

    let mut bind = good.clone();
    let mut mounts = bind.mounts().clone().unwrap();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/host-etc")
            .typ("bind")
            .source("/etc")
            .options(vec!["rbind".into()])
            .build()
            .unwrap(),
    );
    bind.set_mounts(Some(mounts));
    assert!(message(create(&a.agent, "b", &bind).await).contains("outside the shared directory"));

    let mut req = CreateContainerRequest::new();
    req.container_id = "malformed".into();
    req.oci_spec = b"{\"ociVersion\": 12".to_vec();
    assert_eq!(
        code(a.agent.create_container(ctx(), &req).await),
        Code::INVALID_ARGUMENT
    );

    let missing_binary = spec(&rootfs, &["/bin/does-not-exist"]);
    assert_ne!(
        code(create(&a.agent, "nobin", &missing_binary).await),
        Code::OK
    );
    assert!(
        !a.state().join("runtime/nobin").exists(),
        "failed create left state"
    );

    create(&a.agent, "dup", &spec(&rootfs, &["sleep", "60"]))
        .await
        .unwrap();
    assert_eq!(
        code(create(&a.agent, "dup", &good).await),
        Code::ALREADY_EXISTS
    );
    start(&a.agent, "dup").await.unwrap();
    assert_eq!(
        code(start(&a.agent, "dup").await),
        Code::FAILED_PRECONDITION
    );
    let mut ex = ExecProcessRequest::new();
    ex.container_id = "dup".into();
    ex.exec_id = "../escape".into();
    ex.process = b"{}".to_vec();
    assert_eq!(
        code(a.agent.exec_process(ctx(), &ex).await),
        Code::INVALID_ARGUMENT
    );
    ex.exec_id = "x".into();
    assert_eq!(
        code(a.agent.exec_process(ctx(), &ex).await),
        Code::INVALID_ARGUMENT
    );
    let mut w = WaitProcessRequest::new();
    w.container_id = "dup".into();
    w.exec_id = "unknown-exec".into();
    assert_eq!(code(a.agent.wait_process(ctx(), &w).await), Code::NOT_FOUND);

    assert_eq!(
        a.health
            .check(ctx(), &CheckRequest::new())
            .await
            .unwrap()
            .status
            .enum_value_or_default(),
        ServingStatus::SERVING
    );
    remove(&a.agent, "dup").await.unwrap();
}

#[tokio::test]
async fn sandbox_shares_uts_and_destroy_stops_the_agent() {
    let mut a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    let mut sb = CreateSandboxRequest::new();
    sb.sandbox_id = "pod1".into();
    sb.hostname = "pod-host".into();
    a.agent.create_sandbox(ctx(), &sb).await.unwrap();
    assert_eq!(
        code(a.agent.create_sandbox(ctx(), &sb).await),
        Code::ALREADY_EXISTS
    );

    // Two containers of the pod see the pod's hostname, not the host's.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    for id in ["c1", "c2"] {
        let r = run(&a.agent, id, &spec(&rootfs, &["hostname"])).await;
        assert_eq!(r.stdout, "pod-host\n");
    }
    assert_eq!(
        nix::unistd::gethostname().unwrap().into_string().unwrap(),
        host
    );
    create(&a.agent, "left-running", &spec(&rootfs, &["sleep", "60"]))
        .await
        .unwrap();
    start(&a.agent, "left-running").await.unwrap();

    a.agent
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .unwrap();
    assert_eq!(
        a.wait_exit(Duration::from_secs(20)),
        Some(0),
        "agent did not stop after DestroySandbox"
    );
    assert!(hull_tests::agent::mounts_under(a.dir.path()).is_empty());
    assert!(
        std::fs::read_dir(a.state().join("runtime"))
            .unwrap()
            .next()
            .is_none(),
        "containers left"
    );
}

#[tokio::test]
async fn process_and_security_fields_of_the_spec() {
    use oci_spec::runtime::{LinuxCapabilities, PosixRlimitBuilder, PosixRlimitType};
    let a = HostAgent::start().await;
    let rootfs = rootfs_in(&a.shared(), "c");
    std::fs::create_dir_all(rootfs.join("work")).unwrap();
    let script = "id -u; id -g; id -G; echo env=$GREETING; pwd; umask; ulimit -n; \
                  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /proc/self/oom_score_adj; \
                  wc -c < /proc/cmdline; echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo ro-sys; \
                  cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
                  mkdir /tmp/x 2>&1 || echo mkdir-denied";
    let mut s = spec(&rootfs, &["sh", "-c", script]);
    let mut p = s.process().clone().unwrap();
    let mut user = p.user().clone();
    user.set_uid(1000);
    user.set_gid(1001);
    user.set_additional_gids(Some(vec![2000, 2001]));
    user.set_umask(Some(0o027));
    p.set_user(user);
    p.set_env(Some(vec!["PATH=/bin".into(), "GREETING=hi".into()]));
    p.set_cwd("/work".into());
    p.set_no_new_privileges(Some(true));
    p.set_oom_score_adj(Some(123));
    p.set_rlimits(Some(vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(512u64)
            .soft(256u64)
            .build()
            .unwrap(),
    ]));
    // Only CAP_CHOWN (bit 0) in the effective set.
    let caps: std::collections::HashSet<_> =
        [oci_spec::runtime::Capability::Chown].into_iter().collect();
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps.clone()));
    lc.set_inheritable(Some(caps.clone()));
    lc.set_ambient(Some(caps));
    p.set_capabilities(Some(lc));
    s.set_process(Some(p));
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp_denying_mkdir()));
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    masked.push("/proc/cmdline".into());
    linux.set_masked_paths(Some(masked));
    linux.set_sysctl(Some(
        [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "80".to_string(),
        )]
        .into(),
    ));
    s.set_linux(Some(linux));

    let r = run(&a.agent, "fields", &s).await;
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "1001",
            "1001 2000 2001",
            "env=hi",
            "/work",
            "0027",
            "256",
            "CapEff:\t0000000000000001",
            "NoNewPrivs:\t1",
            "123",
            "0",
            "ro-sys",
            "80",
            "mkdir: can't create directory '/tmp/x': Operation not permitted",
            "mkdir-denied",
        ],
        "stderr: {}",
        r.stderr
    );
    remove(&a.agent, "fields").await.unwrap();
}

/// ReseedGuest touches the kernel's randomness and hostname: a host-mode agent refuses it
/// (it would change the host's), and bad input is refused before anything else.
#[tokio::test]
async fn reseed_is_refused_outside_a_pod_vm_and_checked() {
    let a = HostAgent::start().await;
    let before = nix::unistd::gethostname().unwrap();
    let mut r = ReseedGuestRequest::new();
    r.entropy = vec![7; 64];
    r.hostname = "not-the-host".into();
    assert_eq!(
        code(a.agent.reseed_guest(ctx(), &r).await),
        Code::FAILED_PRECONDITION
    );
    r.entropy = vec![7; 4];
    assert_eq!(
        code(a.agent.reseed_guest(ctx(), &r).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(nix::unistd::gethostname().unwrap(), before);
    let d = a
        .agent
        .get_guest_details(ctx(), &GetGuestDetailsRequest::new())
        .await
        .unwrap();
    assert_eq!(d.random_uuid.len(), 36, "{}", d.random_uuid);
    assert_eq!(d.hostname, before.to_string_lossy());
}
