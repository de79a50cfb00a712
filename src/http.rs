//! The HTTP endpoint on `--http-bind`: `/metrics` (Prometheus), `/healthz`, `/readyz`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kube::runtime::reflector::Store;
use tokio::net::TcpListener;

use crate::api::CommandInvocation;
use crate::metrics::Metrics;
use crate::Error;

/// What the endpoints report on, shared with the controller.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    stores: Mutex<Vec<Store<CommandInvocation>>>,
}

impl Health {
    /// Marks the process ready (caches synced, or standing by as a follower) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Adds a controller's cache, counted in the `ssm_operator_invocations` gauge.
    pub fn add_store(&self, store: Store<CommandInvocation>) {
        self.stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(store);
    }

    /// Counts watched resources by SSM status (`Unobserved` before the first answer).
    fn counts(&self) -> BTreeMap<String, i64> {
        let stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let mut counts = BTreeMap::new();
        for object in stores.iter().flat_map(Store::state) {
            let status = object
                .status
                .as_ref()
                .and_then(|s| s.status.clone())
                .unwrap_or_else(|| "Unobserved".to_string());
            *counts.entry(status).or_insert(0) += 1;
        }
        counts
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds `bind` and returns the bound address and the server future, which ends after
/// `shutdown` completes.
pub async fn serve(
    bind: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
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
        .with_state(AppState { metrics, health });
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    Ok((bound, async move { server.await }))
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let counts = state.health.counts();
    state
        .metrics
        .set_tracked(counts.iter().map(|(status, n)| (status.as_str(), *n)));
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
    if state.health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
