//! What the tests of hull as an OCI runtime (the runc CLI, Podman, Docker) share: a
//! hull config for this tree's guest, a busybox image tarball, the processes that name
//! a test's directory, a plain HTTP GET, and a readable command output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Writes `<dir>/hull.toml`: this tree's guest kernel and initrd, `run_dir` under
/// `dir`, and `extra` lines. Its path.
pub fn hull_config(dir: &Path, extra: &str) -> PathBuf {
    let build = crate::repo_root().join("build");
    let path = dir.join("hull.toml");
    std::fs::write(
        &path,
        format!(
            "kernel = \"{}\"\ninitrd = \"{}\"\nrun_dir = \"{}\"\n{extra}",
            build.join("vmlinux").display(),
            build.join("initrd.img").display(),
            dir.join("run").display()
        ),
    )
    .expect("writing hull.toml");
    path
}

/// A tarball of a busybox root filesystem in `dir`, for `podman import` / `docker import`.
pub fn busybox_tarball(dir: &Path) -> PathBuf {
    let rootfs = dir.join("image");
    crate::bundle::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let tarball = dir.join("image.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("running tar")
        .success();
    assert!(ok, "tar of {}", rootfs.display());
    tarball
}

/// Processes (not this one) whose command line contains `marker`: pid and command line.
pub fn processes_naming(marker: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (pid != me && cmd.contains(marker)).then_some((pid, cmd))
        })
        .collect()
}

/// Fails unless, within 15 s, no process names `marker` and `dir` has no entries.
pub fn assert_gone(marker: &str, dir: &Path) {
    assert!(
        crate::wait_until(Duration::from_secs(15), || processes_naming(marker)
            .is_empty()),
        "processes left: {:?}",
        processes_naming(marker)
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

/// `GET /` on 127.0.0.1:`port`: the whole response.
pub fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A command's status, stdout and stderr, for an assertion's message.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
