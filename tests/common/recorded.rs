//! Metrics recorded by one test (feature `metrics`): a Prometheus recorder installed on the
//! test's thread only, with a current-thread runtime on that thread (so the tasks a test spawns,
//! feeds included, record into it), and the rendered samples read back.

use std::future::Future;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Runs `test` on a current-thread runtime with a recorder of its own; what it recorded, as
/// Prometheus renders it.
pub fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    handle.render()
}

/// The value of `series` (`name{labels}`, exactly as rendered), or `None`.
pub fn sample(rendered: &str, series: &str) -> Option<f64> {
    rendered.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
