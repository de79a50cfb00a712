//! SSM's HTTP front: counts calls, records who signed them and refuses expired STS keys,
//! applies the rate limit, injected faults (including slow replies), SendCommand's own faults
//! and latency, and hands each request to [`crate::api`]. [`respond`] is the handler
//! [`crate::serving::Server`] serves connections with.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use crate::api;
use crate::error::ApiError;
use crate::faults::{FaultQueue, Hit};
use crate::ids::uuid_v4;
use crate::model::Store;
use crate::protocol::{CONTENT_TYPE as AMZ_JSON, TARGET_PREFIX};
use crate::ratelimit::TokenBucket;
use crate::sending::SendFault;
use crate::serving::{json_operation, read_body, reply, DropConnection, Reply};

/// Largest request body accepted.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

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
    /// Faults waiting for the next SendCommand requests.
    pub(crate) send_faults: Mutex<VecDeque<SendFault>>,
    /// Added latency in nanoseconds.
    pub(crate) latency_nanos: AtomicU64,
    /// The request-rate limit, if any.
    pub(crate) rate_limit: Mutex<Option<TokenBucket>>,
    /// Requests received, by operation, and throttled.
    pub(crate) counters: Counters,
    /// Which access key signed the requests, by operation.
    pub(crate) signers: crate::sts::Signers,
    /// Where the events of added and sent commands go ([`crate::Simulator::publish_events_to`]).
    pub(crate) events: crate::sqs::EventHook,
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

/// Answers one SSM request; `Err` drops the connection without an answer.
pub(crate) async fn respond(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Reply, DropConnection> {
    let (operation, served) = json_operation(&req, TARGET_PREFIX);
    shared.counters.count(&operation);
    shared.signers.record(req.headers(), &operation);
    // AWS authenticates a request before anything else: an expired key is refused first.
    if let Err(e) = shared.signers.check(req.headers(), SystemTime::now()) {
        let status = StatusCode::from_u16(e.http_status).unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(json_reply(status, e.body().to_string().into_bytes()));
    }
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
        None | Some(Hit::Slow(_)) if !served => Err(ApiError::unknown_operation()),
        None | Some(Hit::Slow(_)) => match read_body(req, BODY_LIMIT).await {
            Ok(body) if operation == "SendCommand" => send_command(&shared, &body).await,
            Ok(body) => api::handle(
                &shared.store,
                &operation,
                &body,
                Instant::now(),
                SystemTime::now(),
            ),
            Err(message) => Err(ApiError::new("SerializationException", message)),
        },
    };
    Ok(match result {
        Ok(body) => json_reply(StatusCode::OK, body),
        Err(e) => {
            if e.code == "ThrottlingException" {
                shared.counters.throttled.fetch_add(1, Ordering::Relaxed);
            }
            let status =
                StatusCode::from_u16(e.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_reply(status, e.body().to_string().into_bytes())
        }
    })
}

/// SendCommand, after the next queued [`SendFault`] (if any): `Refuse` and `Throttle` answer
/// without creating anything; `AcceptThenFail` and `AcceptThenHang` run the operation, then
/// replace a successful reply by HTTP 500 or delay it (an invalid request answers its error,
/// and the fault is spent all the same).
async fn send_command(shared: &Shared, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let fault = shared
        .send_faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front();
    let send = || {
        api::handle(
            &shared.store,
            "SendCommand",
            body,
            Instant::now(),
            SystemTime::now(),
        )
    };
    // A command SendCommand created publishes its events like an added one.
    let send = || {
        let reply = send()?;
        let created: Option<String> = serde_json::from_slice::<serde_json::Value>(&reply)
            .ok()
            .and_then(|v| v["Command"]["CommandId"].as_str().map(str::to_string));
        if let Some(id) = created {
            let store = shared.store.read().unwrap_or_else(PoisonError::into_inner);
            shared.events.command_added(&store, &id);
        }
        Ok(reply)
    };
    match fault {
        None => send(),
        Some(SendFault::Refuse { code, message }) => Err(ApiError::new(code, message)),
        Some(SendFault::Throttle) => Err(ApiError::throttled()),
        Some(SendFault::AcceptThenFail) => send().and(Err(ApiError::internal())),
        Some(SendFault::AcceptThenHang { delay }) => {
            let reply = send()?;
            tokio::time::sleep(delay).await;
            Ok(reply)
        }
    }
}

fn json_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    reply(status, AMZ_JSON, &uuid_v4(), body)
}
