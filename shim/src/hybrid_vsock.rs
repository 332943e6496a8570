//! The host side of Firecracker's hybrid vsock: connect to the VMM's unix socket, send
//! `CONNECT <port>\n`, and read `OK <host port>\n`; after that the stream is a plain
//! byte pipe to the guest's vsock port. vhost-device-vsock and hull-vmm both speak it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest acceptable reply line; `OK 4294967295` fits with room to spare.
const MAX_REPLY: usize = 32;

/// One attempt: fails if nothing listens on the guest port yet.
pub async fn connect(uds: &Path, port: u32) -> anyhow::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)
        .await
        .with_context(|| format!("connecting to {}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Byte by byte: whatever follows the newline belongs to the guest's protocol.
    let mut line = Vec::with_capacity(MAX_REPLY);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            bail!("vsock port {port}: connection closed before OK (nothing listening yet?)");
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_REPLY {
            bail!("vsock port {port}: reply line too long");
        }
    }
    parse_ok(&line).with_context(|| {
        format!(
            "vsock port {port}: bad reply {:?}",
            String::from_utf8_lossy(&line)
        )
    })?;
    Ok(s)
}

fn parse_ok(line: &[u8]) -> anyhow::Result<u32> {
    let text = std::str::from_utf8(line)?;
    let port = text.strip_prefix("OK ").context("expected OK <port>")?;
    Ok(port.trim().parse()?)
}

/// How long one CONNECT may wait for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Retries `connect` until the guest listens or `timeout` passes (a booting VM).
pub async fn connect_retry(uds: &Path, port: u32, timeout: Duration) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, connect(uds, port)).await;
        match attempt
            .unwrap_or_else(|_| Err(anyhow::anyhow!("vsock port {port}: no answer to CONNECT")))
        {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("gave up after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn ok_line() {
        assert_eq!(parse_ok(b"OK 1073741824").unwrap(), 1073741824);
        assert!(parse_ok(b"ERR").is_err());
        assert!(parse_ok(b"OK x").is_err());
    }

    #[tokio::test]
    async fn handshake_leaves_following_bytes_for_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            s.get_mut().write_all(b"OK 1024\nhello").await.unwrap();
        });
        let mut s = connect(&path, 1024).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_when_closed_without_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        assert!(connect(&path, 1024).await.is_err());
    }
}
