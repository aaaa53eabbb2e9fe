//! The Prometheus recorder behind the `metrics` macros, and the `/metrics` listener.
//!
//! Library crates record with `metrics::counter!(names::X509_SVIDS_SIGNED_TOTAL)` and friends;
//! the process installs the recorder once and serves it. Unlike the rest of the library code,
//! [`serve_prometheus`] logs the bound address at info, because a listener being bound is a
//! process lifecycle event that operators look for.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::TelemetryError;

/// Metric names, shaped after SPIRE's (`<subsystem>_<thing>_<unit>`, counters end in `_total`).
pub mod names {
    /// Counter: X.509-SVIDs the server signed.
    pub const X509_SVIDS_SIGNED_TOTAL: &str = "twid_x509_svids_signed_total";
    /// Counter: JWT-SVIDs the server signed.
    pub const JWT_SVIDS_SIGNED_TOTAL: &str = "twid_jwt_svids_signed_total";
    /// Counter with label [`LABEL_RESULT`]: node attestations the server handled.
    pub const NODE_ATTESTATIONS_TOTAL: &str = "twid_node_attestations_total";
    /// Counter with labels [`LABEL_METHOD`] and [`LABEL_CODE`]: Workload API calls.
    pub const WORKLOAD_API_CALLS_TOTAL: &str = "twid_workload_api_calls_total";
    /// Histogram in seconds with label [`LABEL_METHOD`]: Workload API call latency.
    pub const WORKLOAD_API_LATENCY_SECONDS: &str = "twid_workload_api_latency_seconds";
    /// Counter: CA key rotations.
    pub const CA_ROTATIONS_TOTAL: &str = "twid_ca_rotations_total";
    /// Gauge: Unix time in seconds at which the active CA certificate expires.
    pub const CA_AUTHORITY_EXPIRES_AT_SECONDS: &str = "twid_ca_authority_expires_at_seconds";
    /// Counter: failed agent syncs with the server.
    pub const AGENT_SYNC_FAILURES_TOTAL: &str = "twid_agent_sync_failures_total";
    /// Counter: rejections the server did not append to the issuance log because their
    /// source exceeded its rate limit.
    pub const REFUSALS_NOT_RECORDED_TOTAL: &str = "twid_refusals_not_recorded_total";

    /// Label: outcome of an operation (`ok` or an error kind).
    pub const LABEL_RESULT: &str = "result";
    /// Label: gRPC method name.
    pub const LABEL_METHOD: &str = "method";
    /// Label: gRPC status code name.
    pub const LABEL_CODE: &str = "code";
}

/// Histogram buckets for gRPC latencies, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the global `metrics` recorder and returns its handle.
///
/// Calls after the first return the same handle.
// Limit: if some other global recorder was installed first, the returned handle belongs to a
// recorder that receives nothing, so `/metrics` renders an empty page.
pub fn install_metrics_recorder() -> PrometheusHandle {
    HANDLE.get_or_init(build_and_install).clone()
}

fn build_and_install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::WORKLOAD_API_LATENCY_SECONDS.to_owned()),
            LATENCY_BUCKETS,
        )
        .expect("latency bucket list must not be empty");
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(error) = metrics::set_global_recorder(recorder) {
        tracing::debug!(%error, "a global metrics recorder is already installed");
    }
    handle
}

/// Serves `GET /metrics` in the Prometheus text format on `addr`.
///
/// Installs the recorder if needed. The listener is bound before this returns, and the bound
/// address is logged at info. The task runs until the runtime shuts down or it is aborted.
///
/// # Errors
/// Returns [`TelemetryError::Bind`] when `addr` cannot be bound.
pub async fn serve_prometheus(
    addr: SocketAddr,
) -> Result<JoinHandle<std::io::Result<()>>, TelemetryError> {
    let handle = install_metrics_recorder();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "metrics listener bound");
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(handle);
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

/// Renders the current metrics, first folding buffered histogram samples into their buckets.
async fn render_metrics(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    handle.run_upkeep();
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], handle.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::get_path;

    #[tokio::test]
    async fn metrics_page_shows_counter() {
        let addr = crate::test_http::free_loopback_addr().await;
        let server = serve_prometheus(addr).await.unwrap();

        metrics::counter!(names::CA_ROTATIONS_TOTAL).increment(1);
        let (status, body) = get_path(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("twid_ca_rotations_total 1"), "body: {body}");
        server.abort();
    }

    #[test]
    fn recorder_install_is_idempotent() {
        let first = install_metrics_recorder();
        let second = install_metrics_recorder();
        metrics::counter!(names::JWT_SVIDS_SIGNED_TOTAL).increment(2);
        assert!(first.render().contains("twid_jwt_svids_signed_total 2"));
        assert!(second.render().contains("twid_jwt_svids_signed_total 2"));
    }

    #[tokio::test]
    async fn bind_error_is_returned() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve_prometheus(addr).await.unwrap_err();
        assert!(matches!(err, TelemetryError::Bind { addr: a, .. } if a == addr));
    }
}
