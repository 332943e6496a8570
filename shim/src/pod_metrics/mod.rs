//! The pod's Prometheus metrics. What the shim counts as it goes (agent call latencies and
//! failures, boot time, OOM kills) lives in `PodMetrics`; what is read at each scrape (the
//! VM's processes, the guest, its containers) is gathered by `collect`. `serve` answers
//! `GET /metrics` on `<pod dir>/metrics.sock` in the OpenMetrics text format, every series
//! labelled with the pod's namespace and sandbox id; `hull monitor` merges all pods.

mod collect;
mod serve;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use serve::{CONTENT_TYPE, is_metrics_get, openmetrics, reply, serve};

/// The metrics socket in the pod directory.
pub const SOCKET: &str = "metrics.sock";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

fn rpc_histogram() -> Histogram {
    // 1 ms .. ~33 s: a KVM answer to a TCG guest still setting up a container.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What the shim accumulates over the pod's life.
pub struct PodMetrics {
    rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    rpc_errors: Family<MethodLabels, Counter>,
    boot_seconds: Gauge<f64, AtomicU64>,
    oom_kills: Counter,
}

impl Default for PodMetrics {
    fn default() -> Self {
        PodMetrics {
            rpc_seconds: Family::new_with_constructor(rpc_histogram),
            rpc_errors: Family::default(),
            boot_seconds: Gauge::default(),
            oom_kills: Counter::default(),
        }
    }
}

impl PodMetrics {
    /// Runs one request/answer agent call, recording how long it took and whether it
    /// failed. (Calls that wait for an event, WaitProcess and GetOOMEvent, are not timed.)
    pub async fn rpc<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = ttrpc::Result<T>>,
    ) -> ttrpc::Result<T> {
        let started = Instant::now();
        let r = call.await;
        let labels = MethodLabels { method };
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.rpc_errors.get_or_create(&labels).inc();
        }
        r
    }

    /// VM start to agent ready, retries included.
    pub fn set_boot(&self, took: Duration) {
        self.boot_seconds.set(took.as_secs_f64());
    }

    pub fn oom_kill(&self) {
        self.oom_kills.inc();
    }

    fn register(&self, reg: &mut Registry) {
        reg.register(
            "hull_agent_rpc_duration_seconds",
            "Agent call latency seen by the shim (vsock round trip included), by method",
            self.rpc_seconds.clone(),
        );
        reg.register(
            "hull_agent_rpc_errors",
            "Agent calls that failed or ran out of time, by method",
            self.rpc_errors.clone(),
        );
        reg.register(
            "hull_pod_boot_seconds",
            "VMM start to agent ready, boot retries included",
            self.boot_seconds.clone(),
        );
        reg.register(
            "hull_pod_oom_kills",
            "Processes of the pod's containers the guest kernel OOM-killed",
            self.oom_kills.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_timed_and_failures_counted_by_method() {
        let m = PodMetrics::default();
        let ok: ttrpc::Result<u8> = m.rpc("CreateContainer", async { Ok(1) }).await;
        assert_eq!(ok.unwrap(), 1);
        let failed: ttrpc::Result<u8> = m
            .rpc("StartContainer", async {
                Err(ttrpc::Error::Others("boom".into()))
            })
            .await;
        assert!(failed.is_err());
        m.set_boot(Duration::from_millis(1500));
        m.oom_kill();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("hull_agent_rpc_duration_seconds_count{method=\"CreateContainer\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hull_agent_rpc_errors_total{method=\"StartContainer\"} 1"),
            "{text}"
        );
        assert!(!text.contains("hull_agent_rpc_errors_total{method=\"CreateContainer\"}"));
        assert!(text.contains("hull_pod_boot_seconds 1.5"), "{text}");
        assert!(text.contains("hull_pod_oom_kills_total 1"), "{text}");
    }
}
