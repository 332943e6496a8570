//! OCI hooks that run on the host: `prestart` and `createRuntime` in the supervisor
//! once it holds the container's namespace, before the VM boots (a failure undoes the
//! create), `poststart` after `start` and
//! `poststop` after `delete` (a failure is a warning, as the runtime spec says). Each
//! gets the container's state JSON on stdin and is killed at its `timeout` (or after
//! `DEFAULT_TIMEOUT`): a hook must not hang the runtime. `createContainer` and
//! `startContainer` are meant to run in the container's namespaces, which are in the
//! VM, out of the host's reach: a spec with them is refused at `create`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use oci_spec::runtime::{Hook, Hooks, Spec};

/// How much of a failed hook's stderr its error quotes.
const MAX_SAID: u64 = 4096;

/// The longest a hook without a `timeout` may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Refuses hooks hull cannot run where the spec says they run.
pub fn check(spec: &Spec) -> anyhow::Result<()> {
    let Some(h) = spec.hooks() else {
        return Ok(());
    };
    let in_container = |v: &Option<Vec<Hook>>| v.as_ref().is_some_and(|v| !v.is_empty());
    if in_container(h.create_container()) || in_container(h.start_container()) {
        anyhow::bail!(
            "hooks.createContainer and hooks.startContainer run in the container's namespaces, \
             which are inside its VM: hull cannot run them"
        );
    }
    Ok(())
}

/// The hooks that prepare the runtime's environment: `prestart` (deprecated, still run
/// as runc runs it), then `createRuntime`.
pub fn create_runtime(spec: &Spec) -> Vec<Hook> {
    #[allow(deprecated)]
    let mut all = of(spec, Hooks::prestart);
    all.extend(of(spec, Hooks::create_runtime));
    all
}

/// The hooks of one phase.
pub fn of(spec: &Spec, pick: fn(&Hooks) -> &Option<Vec<Hook>>) -> Vec<Hook> {
    spec.hooks()
        .as_ref()
        .and_then(|h| pick(h).clone())
        .unwrap_or_default()
}

/// Runs `hooks` in order with `state` on stdin; the first failure ends the run.
pub fn run(hooks: &[Hook], state: &serde_json::Value) -> anyhow::Result<()> {
    let input = serde_json::to_vec(state)?;
    for h in hooks {
        run_one(h, &input).with_context(|| format!("hook {}", h.path().display()))?;
    }
    Ok(())
}

/// As `run`, each failure a warning on stderr instead.
pub fn run_warning(hooks: &[Hook], state: &serde_json::Value) {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for h in hooks {
        if let Err(e) = run_one(h, &input) {
            eprintln!("hull: warning: hook {}: {e:#}", h.path().display());
        }
    }
}

fn run_one(h: &Hook, input: &[u8]) -> anyhow::Result<()> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args()
        && let Some((argv0, rest)) = args.split_first()
    {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(rest);
    }
    if let Some(env) = h.env() {
        cmd.env_clear();
        cmd.envs(env.iter().filter_map(|kv| kv.split_once('=')));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting it")?;
    // What it says goes into the error, bounded; the rest is read and dropped so that a
    // chatty hook does not block on a full pipe.
    let said = child.stderr.take().map(|mut err| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut head = Vec::new();
            let _ = (&mut err).take(MAX_SAID).read_to_end(&mut head);
            let _ = tx.send(String::from_utf8_lossy(&head).trim().to_string());
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        rx
    });
    // A hook that does not read its stdin must not block us: the state is small, and a
    // closed pipe is the hook's business.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    // A child the hook left behind may hold its stderr open: wait only briefly for it.
    let said = || {
        said.and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .filter(|t| !t.is_empty())
            .map_or_else(String::new, |t| format!(": {t}"))
    };
    let limit = h
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            anyhow::bail!("failed: {status}{}", said());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running after {} s: killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    fn hook(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default().path("/bin/sh").args(vec![
            "sh".into(),
            "-c".into(),
            script.into(),
        ]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn a_hook_reads_the_state_and_its_failure_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("state");
        let state = serde_json::json!({"id": "c1", "status": "created"});
        run(&[hook(&format!("cat > {}", out.display()), None)], &state).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got, state);
        let e = run(&[hook("echo no good >&2; exit 3", None)], &state).unwrap_err();
        assert!(
            format!("{e:#}").contains("exit status: 3: no good"),
            "{e:#}"
        );
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let started = Instant::now();
        let e = run(&[hook("sleep 30", Some(1))], &serde_json::json!({})).unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn hooks_for_the_container_namespace_are_refused() {
        let mut spec = Spec::default();
        spec.set_hooks(Some(
            HooksBuilder::default()
                .create_container(vec![hook("true", None)])
                .build()
                .unwrap(),
        ));
        assert!(check(&spec).is_err());
        spec.set_hooks(Some(
            HooksBuilder::default()
                .poststart(vec![hook("true", None)])
                .build()
                .unwrap(),
        ));
        check(&spec).unwrap();
        assert_eq!(of(&spec, Hooks::poststart).len(), 1);
    }
}
