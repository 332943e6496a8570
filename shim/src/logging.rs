//! Shim logs: `tracing` lines into the `log` FIFO containerd opens in the bundle (it
//! copies them into its own log), tagged with the namespace and the shim's first task id.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, namespace: &str, id: &str) {
    let filter = std::env::var("HULL_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    // O_RDWR: opening a FIFO this way never blocks, whether or not containerd reads yet.
    let result = match OpenOptions::new().read(true).write(true).open("log") {
        Ok(f) => builder.with_writer(Mutex::new(f)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    if result.is_ok() {
        tracing::debug!(namespace, id, "hull shim logging");
    }
}
