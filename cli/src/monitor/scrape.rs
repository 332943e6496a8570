//! Fetches one pod's `/metrics` from the metrics socket in its directory: HTTP/1 over the
//! unix socket, with a deadline and a bound on what is read.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The most one pod's exposition may be.
const MAX_BYTES: usize = 8 << 20;

/// One pod's OpenMetrics text, within `deadline`.
pub async fn pod(socket: &Path, deadline: Duration) -> anyhow::Result<String> {
    tokio::time::timeout(deadline, fetch(socket))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {deadline:?}"))?
}

async fn fetch(socket: &Path) -> anyhow::Result<String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, "hull-shim")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
    let body = Limited::new(resp.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}
