//! `hull logs`: a pod's shim log (the lines containerd's log also has, for this pod only)
//! or its VM's serial console, printed and optionally followed, from the pod directory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hull_shim::config::HullConfig;
use hull_shim::daemon::CONSOLE_LOG;
use hull_shim::logging::SHIM_LOG;
use hull_shim::pod_dir::pod_dir;

pub fn run(
    sandbox: &str,
    namespace: Option<&str>,
    console: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let cfg = HullConfig::load()?;
    let dir = find_pod(&cfg, sandbox, namespace)?;
    let file = if console {
        dir.join("vm").join(CONSOLE_LOG)
    } else {
        dir.join(SHIM_LOG)
    };
    copy(&file, follow, &mut std::io::stdout().lock())
}

/// The pod's directory: in `namespace`, or the one namespace that has the sandbox.
pub fn find_pod(
    cfg: &HullConfig,
    sandbox: &str,
    namespace: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let namespaces: Vec<String> = match namespace {
        Some(ns) => vec![ns.to_string()],
        None => std::fs::read_dir(&cfg.run_dir)
            .with_context(|| format!("reading {}", cfg.run_dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
    };
    let found: Vec<(String, PathBuf)> = namespaces
        .into_iter()
        .filter_map(|ns| {
            let dir = pod_dir(cfg, &ns, sandbox).ok()?;
            dir.is_dir().then_some((ns, dir))
        })
        .collect();
    match found.as_slice() {
        [(_, dir)] => Ok(dir.clone()),
        [] => bail!(
            "no pod {sandbox} under {}{}",
            cfg.run_dir.display(),
            namespace
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        ),
        many => bail!(
            "pod {sandbox} is in several namespaces ({}): name one with --namespace",
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Writes `file` to `out`; with `follow`, then what is appended, until the file is gone
/// (the pod was removed).
fn copy(file: &Path, follow: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !follow || !file.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
        // A file truncated under us starts over.
        let pos = f.stream_position()?;
        if f.metadata()?.len() < pos {
            f.seek(SeekFrom::Start(0))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_found_in_its_one_namespace_and_follow_ends_with_the_file() {
        let run = tempfile::tempdir().unwrap();
        let cfg = HullConfig {
            run_dir: run.path().to_path_buf(),
            ..HullConfig::default()
        };
        let dir = pod_dir(&cfg, "k8s.io", "web").unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(run.path().join("default")).unwrap();
        assert_eq!(find_pod(&cfg, "web", None).unwrap(), dir);
        assert!(find_pod(&cfg, "web", Some("default")).is_err());
        assert!(
            find_pod(&cfg, "nope", None)
                .unwrap_err()
                .to_string()
                .contains("no pod nope")
        );
        std::fs::create_dir_all(pod_dir(&cfg, "default", "web").unwrap()).unwrap();
        assert!(
            find_pod(&cfg, "web", None)
                .unwrap_err()
                .to_string()
                .contains("--namespace")
        );
        assert!(
            find_pod(&cfg, "../x", Some("k8s.io")).is_err(),
            "ids are checked"
        );

        let log = dir.join(SHIM_LOG);
        std::fs::write(&log, "one\n").unwrap();
        let remover = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .unwrap()
                    .write_all(b"two\n")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(400));
                std::fs::remove_file(&log).unwrap();
            })
        };
        let mut out = Vec::new();
        copy(&log, true, &mut out).unwrap();
        remover.join().unwrap();
        assert_eq!(out, b"one\ntwo\n");
    }
}
