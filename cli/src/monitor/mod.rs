//! `hull monitor`: one Prometheus endpoint for every pod on the node, and the pods'
//! lifecycle events as JSON lines on stdout. At each `GET /metrics` it scrapes every
//! pod's shim (the metrics socket in each pod directory) at once, each with a deadline,
//! and merges the answers; the series carry the namespace and sandbox labels the shims
//! put on them. Like kata-monitor, it keeps no state of its own beyond its counters.

mod events;
mod merge;
mod scrape;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use hull_shim::config::HullConfig;
use hull_shim::pod_metrics::{SOCKET, is_metrics_get, openmetrics, reply};

/// How long one pod's shim may take to answer a scrape.
const POD_DEADLINE: Duration = Duration::from_secs(5);
/// How often the pods' event files are read.
const EVENT_POLL: Duration = Duration::from_millis(500);

/// The monitor's own figures.
#[derive(Default)]
struct Own {
    pods: Gauge,
    failures: Counter,
}

pub fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let cfg = HullConfig::load()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg.run_dir, listen))
}

async fn serve(run_dir: PathBuf, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
    eprintln!("hull monitor: serving http://{listen}/metrics; events follow as JSON lines");
    let events_dir = run_dir.clone();
    std::thread::spawn(move || {
        let mut follower = events::Follower::default();
        loop {
            if follower
                .poll(&events_dir, &mut std::io::stdout().lock())
                .is_err()
            {
                return; // stdout is gone
            }
            std::thread::sleep(EVENT_POLL);
        }
    });
    let own = Arc::new(Own::default());
    let run_dir = Arc::new(run_dir);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            // Out of descriptors, or a connection reset before it was taken: not fatal.
            Err(e) => {
                eprintln!("hull monitor: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (run_dir, own) = (run_dir.clone(), own.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| answer(req, run_dir.clone(), own.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer<B>(
    req: Request<B>,
    run_dir: Arc<PathBuf>,
    own: Arc<Own>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !is_metrics_get(&req) {
        return Ok(reply(StatusCode::NOT_FOUND, "hull monitor: GET /metrics\n"));
    }
    Ok(openmetrics(gather(&run_dir, &own).await))
}

/// Every pod's metrics socket under `run_dir` (`<namespace>/<pod>/metrics.sock`).
fn sockets(run_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = hull_shim::pod_dir::pod_dirs(run_dir)
        .into_iter()
        .map(|pod| pod.join(SOCKET))
        .filter(|s| s.exists())
        .collect();
    out.sort();
    out
}

/// All pods' expositions merged, with the monitor's own figures.
async fn gather(run_dir: &Path, own: &Own) -> String {
    let mut jobs = tokio::task::JoinSet::new();
    let socks = sockets(run_dir);
    for (i, s) in socks.iter().enumerate() {
        let s = s.clone();
        jobs.spawn(async move { (i, scrape::pod(&s, POD_DEADLINE).await) });
    }
    let mut answers: Vec<(usize, String)> = Vec::new();
    while let Some(done) = jobs.join_next().await {
        match done {
            Ok((i, Ok(text))) => answers.push((i, text)),
            Ok((i, Err(e))) => {
                own.failures.inc();
                eprintln!("hull monitor: {}: {e:#}", socks[i].display());
            }
            Err(_) => {
                own.failures.inc();
            }
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    own.pods
        .set(i64::try_from(answers.len()).unwrap_or(i64::MAX));
    let mut merger = merge::Merger::default();
    for (_, text) in &answers {
        merger.add(text);
    }
    let mut reg = Registry::default();
    reg.register(
        "hull_monitor_pods",
        "Pods whose shim answered the last scrape",
        own.pods.clone(),
    );
    reg.register(
        "hull_monitor_scrape_failures",
        "Pod scrapes that failed or ran out of time",
        own.failures.clone(),
    );
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &reg);
    merger.add(&text);
    merger.finish()
}
