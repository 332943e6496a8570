//! containerd-shim-hull-v2: the containerd shim v2 for runtime `io.containerd.hull.v2`.

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    rt.block_on(containerd_shim::asynchronous::run::<
        hull_shim::shim::HullShim,
    >(
        hull_shim::shim::RUNTIME_ID,
        Some(hull_shim::shim::shim_config()),
    ));
}
