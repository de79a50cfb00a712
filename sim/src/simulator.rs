//! [`Simulator`]: the handle tests hold to start, script, inspect and stop the server.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::faults::Fault;
use crate::script::Command;
use crate::server::{self, Shared};

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
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts serving on `127.0.0.1` at a free port.
    pub async fn start() -> std::io::Result<Simulator> {
        Simulator::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts serving on `addr` (port 0 picks a free one). Must run inside a Tokio runtime,
    /// which then carries the server tasks.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::serve(listener, shared.clone(), stopped));
        Ok(Simulator {
            inner: Arc::new(Inner {
                shared,
                addr,
                stop,
                server: Mutex::new(Some(server)),
            }),
        })
    }

    /// The base URL to give the SDK as `endpoint_url`, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Adds a scripted command; its timelines start now. A command with the same id is
    /// replaced.
    pub fn add_command(&self, command: Command) {
        self.inner
            .shared
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .add(command, Instant::now(), SystemTime::now());
    }

    /// Requests received for an operation (e.g. `"GetCommandInvocation"`), including those
    /// answered by an injected fault.
    pub fn calls(&self, operation: &str) -> u64 {
        self.inner
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all, whatever the operation.
    pub fn total_calls(&self) -> u64 {
        self.inner.shared.total.load(Ordering::Relaxed)
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
        self.inner.stop.send_replace(true);
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}
