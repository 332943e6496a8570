//! `GET /metrics` over HTTP/1 on the pod's metrics socket. The socket lies in the pod
//! directory (0700), so only root reaches it; each connection is served on its own task
//! and the pod is only borrowed while a scrape runs (the server never keeps it alive).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, Weak};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::pod::Pod;

/// OpenMetrics 1.0, which prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Ids = Arc<Mutex<std::collections::HashSet<String>>>;

/// Binds `<pod dir>/metrics.sock` and serves it until the pod is gone.
pub fn serve(pod: &Arc<Pod>, containers: Ids) -> anyhow::Result<()> {
    let path = pod.dir.join(super::SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let weak = Arc::downgrade(pod);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                // Out of descriptors, say: not a reason to stop serving the pod's metrics.
                Err(e) => {
                    tracing::warn!(error = %e, "metrics socket accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if weak.strong_count() == 0 {
                return;
            }
            let (weak, containers) = (weak.clone(), containers.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    answer(req, weak.clone(), containers.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

/// Whether `req` asks for the metrics (`GET /metrics`), the one request served (here and
/// by `hull monitor`).
pub fn is_metrics_get<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET && req.uri().path() == "/metrics"
}

/// A plain answer with `status`.
pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// `200` with an OpenMetrics exposition.
pub fn openmetrics(text: String) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::OK, text);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

async fn answer<B>(
    req: Request<B>,
    pod: Weak<Pod>,
    containers: Ids,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !is_metrics_get(&req) {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "only GET /metrics is served here\n",
        ));
    }
    let Some(pod) = pod.upgrade() else {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "the pod is gone\n"));
    };
    let mut ids: Vec<String> = containers
        .lock()
        .expect("ids lock")
        .iter()
        .cloned()
        .collect();
    ids.sort();
    Ok(openmetrics(super::collect::scrape(&pod, &ids).await))
}
