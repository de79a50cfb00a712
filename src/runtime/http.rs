//! The HTTP endpoint on `--http-bind`: `/metrics` (Prometheus), `/healthz`, `/readyz`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
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
use crate::runtime::metrics::Metrics;
use crate::Error;

/// What the endpoints report on, shared with the controller.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    stores: Mutex<Vec<Store<CommandInvocation>>>,
    /// Watches (by index in `stores`) that failed and have not recovered yet.
    failing: Mutex<BTreeSet<usize>>,
}

impl Health {
    /// Marks the process ready (caches synced, or standing by as a follower) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Adds a controller's cache, counted in the `ssm_operator_invocations` gauge.
    /// Adds a watch's cache; returns the watch's number for [`Health::set_failing`].
    pub fn add_store(&self, store: Store<CommandInvocation>) -> usize {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.push(store);
        stores.len() - 1
    }

    /// Marks watch number `watch` as failing (list/watch errors) or recovered.
    pub fn set_failing(&self, watch: usize, failing: bool) {
        let mut set = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if failing {
            set.insert(watch);
        } else {
            set.remove(&watch);
        }
    }

    /// Ready: caches synced (or standing by for the Lease) and no watch failing.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self
                .failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    /// The uids of every watched resource.
    pub fn live_uids(&self) -> HashSet<String> {
        crate::k8s::watch::uids_in(&self.stores.lock().unwrap_or_else(PoisonError::into_inner))
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
