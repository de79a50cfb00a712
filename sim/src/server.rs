//! The HTTP/1.1 front: accepts connections, counts calls, applies the rate limit, injected
//! faults (including slow replies) and latency, and hands each request to [`crate::api`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api;
use crate::error::ApiError;
use crate::faults::{FaultQueue, Hit};
use crate::ids::uuid_v4;
use crate::model::Store;
use crate::protocol::{CONTENT_TYPE as AMZ_JSON, TARGET_PREFIX};
use crate::ratelimit::TokenBucket;

/// Largest request body accepted.
const BODY_LIMIT: usize = 4 * 1024 * 1024;
/// How long shutdown waits for in-flight requests before cutting connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The operations served, whose call counters are plain atomics.
const SERVED: [&str; 5] = [
    "GetCommandInvocation",
    "ListCommandInvocations",
    "ListCommands",
    "SendCommand",
    "CancelCommand",
];

/// Request counters: one atomic per served operation, a map for anything else.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    served: [AtomicU64; SERVED.len()],
    /// Requests naming an operation the simulator does not serve (or none).
    other: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    throttled: AtomicU64,
}

impl Counters {
    fn count(&self, operation: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        match SERVED.iter().position(|&op| op == operation) {
            Some(i) => {
                self.served[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut other = self.other.lock().unwrap_or_else(PoisonError::into_inner);
                match other.get_mut(operation) {
                    Some(n) => *n += 1,
                    None => {
                        other.insert(operation.to_string(), 1);
                    }
                }
            }
        }
    }

    /// Requests received for `operation`.
    pub(crate) fn calls(&self, operation: &str) -> u64 {
        match SERVED.iter().position(|&op| op == operation) {
            Some(i) => self.served[i].load(Ordering::Relaxed),
            None => self
                .other
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(operation)
                .copied()
                .unwrap_or(0),
        }
    }

    /// Requests received in all.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests answered `ThrottlingException`.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

/// State shared by the server tasks and every [`crate::Simulator`] handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Commands and invocations.
    pub(crate) store: RwLock<Store>,
    /// Faults waiting for the next requests.
    pub(crate) faults: Mutex<FaultQueue>,
    /// Added latency in nanoseconds.
    pub(crate) latency_nanos: AtomicU64,
    /// The request-rate limit, if any.
    pub(crate) rate_limit: Mutex<Option<TokenBucket>>,
    /// Requests received, by operation, and throttled.
    pub(crate) counters: Counters,
    /// Which access key signed the requests, by operation.
    pub(crate) signers: crate::sts::Signers,
}

impl Shared {
    /// Whether the rate limit (if any) lets a request through at `now`.
    fn admit(&self, now: Instant) -> bool {
        self.rate_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .is_none_or(|bucket| bucket.try_take(now))
    }

    fn next_fault(&self) -> Option<Hit> {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_hit()
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }
}

/// The service error that makes hyper close a connection without answering.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for DropConnection {}

/// Serves `listener` until `stop` turns true (or its sender is gone), then lets in-flight
/// requests finish for up to two seconds.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    // Each connection watches its own receiver; `stop` is borrowed by the select below.
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, shared.clone(), for_connections.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    // Whatever is still open after the timeout is aborted when the set drops.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it at once.
    let _ = stop.wait_for(|&stopped| stopped).await;
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Latency matters more than throughput for small JSON replies.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| respond(shared.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopped(&mut stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn respond(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let operation = target
        .strip_prefix(TARGET_PREFIX)
        .unwrap_or(target)
        .to_string();
    shared.counters.count(&operation);
    shared.signers.record(req.headers(), &operation);
    // Over the rate limit: throttled at the door, without taking an injected fault.
    let admitted = shared.admit(Instant::now());
    let hit = if admitted { shared.next_fault() } else { None };
    let slow = match hit {
        Some(Hit::Slow(delay)) => delay,
        _ => Duration::ZERO,
    };
    let delay = shared.latency().saturating_add(slow);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let result = match hit {
        _ if !admitted => Err(ApiError::throttled()),
        Some(Hit::DropConnection) => return Err(DropConnection),
        Some(Hit::Throttle) => Err(ApiError::throttled()),
        Some(Hit::ServerError) => Err(ApiError::internal()),
        // A slow reply is a normal one, computed once its delay is over.
        None | Some(Hit::Slow(_))
            if req.method() != Method::POST || !target.starts_with(TARGET_PREFIX) =>
        {
            Err(ApiError::unknown_operation())
        }
        None | Some(Hit::Slow(_)) => match read_body(req).await {
            Ok(body) => api::handle(
                &shared.store,
                &operation,
                &body,
                Instant::now(),
                SystemTime::now(),
            ),
            Err(e) => Err(e),
        },
    };
    Ok(match result {
        Ok(body) => reply(StatusCode::OK, body),
        Err(e) => {
            if e.code == "ThrottlingException" {
                shared.counters.throttled.fetch_add(1, Ordering::Relaxed);
            }
            let status =
                StatusCode::from_u16(e.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            reply(status, e.body().to_string().into_bytes())
        }
    })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| ApiError::new("SerializationException", format!("Unreadable body: {e}")))
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    if let Ok(id) = HeaderValue::from_str(&uuid_v4()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}
