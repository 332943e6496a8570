//! hull-vmm's API socket, from the shim's side: one JSON request per connection and one
//! answer line, read up to a bound and under a deadline (the VMM runs next to the guest
//! and is trusted less than the shim).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The most of an answer the shim reads.
pub const MAX_ANSWER: u64 = 4096;

/// Sends `request` and returns the answer line (up to `MAX_ANSWER` bytes) as the VMM
/// wrote it, within `timeout`.
pub async fn call_raw(api: &Path, request: &str, timeout: Duration) -> anyhow::Result<String> {
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(api).await?;
        s.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(s.take(MAX_ANSWER))
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("hull-vmm's API did not answer within {timeout:?}"))?
        .with_context(|| format!("hull-vmm's API at {}", api.display()))
}

/// Sends `request`, which must succeed: `{"ok":true}`, or an error with the VMM's reason.
pub async fn call(
    api: &Path,
    request: &serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<()> {
    let line = call_raw(api, &request.to_string(), timeout).await?;
    let answer: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("hull-vmm's API answered {request} with {line:?}"))?;
    if answer.get("ok") == Some(&serde_json::Value::Bool(true)) {
        return Ok(());
    }
    let why = answer
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("no reason given");
    anyhow::bail!("hull-vmm refused {request}: {why}")
}
