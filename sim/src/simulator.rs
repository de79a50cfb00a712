//! [`Simulator`]: the handle tests hold to start, script, inspect and stop the server.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::faults::Fault;
use crate::ratelimit::TokenBucket;
use crate::script::Command;
use crate::server::{self, Shared};
use crate::serving::{Server, LOOPBACK};

/// A running SSM Run Command simulator on loopback.
///
/// Cheap to clone (an `Arc` inside). Serving stops when the last handle is dropped or when
/// [`Simulator::shutdown`] is called on any handle.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Stops when dropped, with the last handle.
    server: Server,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner
            .server
            .debug_struct(f, "Simulator")
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts serving on `127.0.0.1` at a free port.
    pub async fn start() -> std::io::Result<Simulator> {
        Simulator::start_on(LOOPBACK).await
    }

    /// Starts serving on `addr` (port 0 picks a free one). Must run inside a Tokio runtime,
    /// which then carries the server tasks.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Simulator> {
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let server =
            Server::start(addr, move |req, _| server::respond(serving.clone(), req)).await?;
        Ok(Simulator {
            inner: Arc::new(Inner { shared, server }),
        })
    }

    /// The state shared with the server tasks.
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The base URL to give the SDK as `endpoint_url`, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        self.inner.server.endpoint()
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.server.local_addr()
    }

    /// Puts EventBridge's events for the commands added or sent (SendCommand) from now on
    /// (see [`crate::sqs`]) on `sqs`'s queue, each at the instant its status changes,
    /// instead of on any queue given before. CancelCommand sends no events.
    pub fn publish_events_to(&self, sqs: &crate::SqsSimulator) {
        self.inner.shared.events.connect(sqs);
    }

    /// Adds a scripted command; its timelines start now. A command with the same id is
    /// replaced.
    pub fn add_command(&self, command: Command) {
        self.add_commands([command]);
    }

    /// Adds several commands at once, all with their timelines starting at the same instant,
    /// which is returned (for measuring against the simulated times in the same clock).
    /// Commands with an id already present replace those.
    pub fn add_commands(&self, commands: impl IntoIterator<Item = Command>) -> Instant {
        let mut store = self
            .inner
            .shared
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let (now, wall) = (Instant::now(), SystemTime::now());
        for command in commands {
            let id = command.command_id().to_string();
            store.add(command, now, wall);
            self.inner.shared.events.command_added(&store, &id);
        }
        now
    }

    /// Requests received for an operation (e.g. `"GetCommandInvocation"`), including those
    /// answered by an injected fault or throttled by the rate limit.
    pub fn calls(&self, operation: &str) -> u64 {
        self.inner.shared.counters.calls(operation)
    }

    /// Requests received in all, whatever the operation.
    pub fn total_calls(&self) -> u64 {
        self.inner.shared.counters.total()
    }

    /// Requests answered `ThrottlingException`: over the rate limit
    /// ([`Simulator::set_rate_limit`]) or hit by an injected [`Fault::Throttle`].
    pub fn throttled(&self) -> u64 {
        self.inner.shared.counters.throttled()
    }

    /// The distinct access key ids that signed requests (the `Credential=` of SigV4's
    /// `Authorization` header), first seen first. Unsigned requests are not recorded.
    pub fn signers(&self) -> Vec<String> {
        self.inner.shared.signers.signers()
    }

    /// Requests signed with access key id `akid`, whatever the operation (faulted and
    /// throttled ones included, as in [`Simulator::calls`]).
    pub fn calls_signed_by(&self, akid: &str) -> usize {
        self.inner.shared.signers.calls(akid, None)
    }

    /// Requests for `operation` signed with access key id `akid`.
    pub fn operation_calls_signed_by(&self, operation: &str, akid: &str) -> usize {
        self.inner.shared.signers.calls(akid, Some(operation))
    }

    /// Checks the keys `sts` issues, as AWS checks temporary credentials: from now on a
    /// request signed with one of them at or after its `Expiration` answers HTTP 400
    /// `ExpiredTokenException` "The security token included in the request is expired",
    /// before the rate limit and any injected fault. It still counts in
    /// [`Simulator::calls`] and [`Simulator::calls_signed_by`], and in
    /// [`Simulator::expired_token_refusals`]. Other keys are never checked.
    pub fn trust_sts(&self, sts: &crate::StsSimulator) {
        self.inner.shared.signers.trust(sts.issued_keys());
    }

    /// Requests refused because they were signed with an expired key of a trusted STS
    /// ([`Simulator::trust_sts`]).
    pub fn expired_token_refusals(&self) -> u64 {
        self.inner.shared.signers.expired()
    }

    /// Limits the requests served to `rate` per second over all operations (`None`: no
    /// limit, the default): a token bucket holding `rate` tokens (at least one), full when
    /// set, refilled continuously. A request finding it empty answers HTTP 400
    /// `ThrottlingException` "Rate exceeded" (after any latency) without taking an injected
    /// fault; it still counts in [`Simulator::calls`] and in [`Simulator::throttled`].
    ///
    /// # Panics
    ///
    /// If `rate` is not a positive, finite number.
    pub fn set_rate_limit(&self, rate: Option<f64>) {
        if let Some(rate) = rate {
            assert!(
                rate.is_finite() && rate > 0.0,
                "ssm-sim: the rate limit must be a positive, finite number of requests per second, got {rate}"
            );
        }
        *self
            .inner
            .shared
            .rate_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            rate.map(|rate| TokenBucket::new(rate, Instant::now()));
    }

    /// Queues a fault; queued faults hit the next requests in order, any operation. A
    /// [`Fault::Slow`] request holds its connection for the delay (shutdown waits up to two
    /// seconds for it, like any in-flight request).
    pub fn inject(&self, fault: Fault) {
        self.inner
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.inner
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Delays every response (faults included) by `latency`; zero turns it off.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .shared
            .latency_nanos
            .store(nanos, Ordering::Relaxed);
    }

    /// Stops serving (for every handle), lets in-flight requests finish for up to two
    /// seconds, and returns once the port is released.
    pub async fn shutdown(self) {
        self.inner.server.shutdown().await;
    }
}
