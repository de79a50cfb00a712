//! The HTTP endpoint on `--http-bind`: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! Gauges of state (resources by status and condition, leadership, memory) are read at scrape
//! time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::k8s::health::Health;
use crate::k8s::leader::Fence;
use crate::runtime::metrics::Metrics;
use crate::Error;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    fence: Fence,
}

/// Binds `bind` and returns the bound address and the server future, which ends after
/// `shutdown` completes. `fence` tells whether this replica leads (`ssm_operator_leader`).
pub async fn serve(
    bind: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    fence: Fence,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = std::io::Result<()>>), Error> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| Error::Http { bind, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Http { bind, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics,
            health,
            fence,
        });
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    Ok((bound, async move { server.await }))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let counts = state.health.counts();
    state
        .metrics
        .set_tracked(counts.iter().map(|(status, n)| (status.as_str(), *n)));
    state.metrics.set_resources(state.health.condition_counts());
    state.metrics.set_leader(state.fence.allows_writes());
    if let Some(bytes) = crate::runtime::memory::resident_bytes() {
        state.metrics.set_resident_memory(bytes);
    }
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_watch_makes_the_process_unready_until_it_recovers() {
        let health = Health::default();
        assert!(!health.is_ready(), "not ready before the caches synced");
        health.set_ready(true);
        assert!(health.is_ready());
        health.set_failing(0, true);
        health.set_failing(1, true);
        assert!(!health.is_ready());
        health.set_failing(0, false);
        assert!(!health.is_ready(), "watch 1 still failing");
        health.set_failing(1, false);
        assert!(health.is_ready());
    }
}
