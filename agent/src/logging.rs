//! tracing setup: one line per event on stderr (the VM console in the guest), quiet by
//! default; the level comes from `--log`, `HULL_LOG` or the `hull.log=` kernel parameter.

use tracing_subscriber::EnvFilter;

pub fn init(filter: &str) {
    let filter = std::env::var("HULL_LOG").unwrap_or_else(|_| filter.to_string());
    // libcgroups warns about every controller a host lacks, on every call.
    let filter = format!("{filter},libcgroups=error");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
