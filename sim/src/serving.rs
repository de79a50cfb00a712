//! The serving the SSM, STS and SQS simulators share: [`Server`] accepts connections on a
//! listener, runs one hyper HTTP/1.1 service per connection around a handler, and on stop
//! lets in-flight requests finish for up to two seconds; plus the small pieces of AWS
//! requests and replies they share ([`json_operation`], [`read_body`], [`reply`]) and the
//! handler error that closes a connection unanswered ([`DropConnection`]).

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What a handler answers.
pub(crate) type Reply = Response<Full<Bytes>>;

/// `127.0.0.1` at a free port: where the simulators' `start()` serves.
pub(crate) const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// How long shutdown waits for in-flight requests before cutting connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A server's stop signal as its tasks and requests see it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once the server is told to stop (or its [`Server`] is gone).
    pub(crate) async fn requested(&mut self) {
        // The guard `wait_for` returns is not `Send`: drop it at once.
        let _ = self.0.wait_for(|&stopped| stopped).await;
    }
}

/// What a [`Server`] hands each request to, with the stop signal (which a request that
/// waits, such as a long poll, should heed): any `Fn(Request<Incoming>, Stop)` returning a
/// future of a [`Reply`]. An `Err` makes hyper close the connection without an answer.
pub(crate) trait Handler: Send + Sync + 'static {
    /// What makes the connection close unanswered.
    type Error: Into<Box<dyn Error + Send + Sync>> + 'static;
    /// The answer to come.
    type Future: Future<Output = Result<Reply, Self::Error>> + Send + 'static;

    /// Answers `req`.
    fn call(&self, req: Request<Incoming>, stop: Stop) -> Self::Future;
}

impl<H, F, E> Handler for H
where
    H: Fn(Request<Incoming>, Stop) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Reply, E>> + Send + 'static,
    E: Into<Box<dyn Error + Send + Sync>> + 'static,
{
    type Error = E;
    type Future = F;

    fn call(&self, req: Request<Incoming>, stop: Stop) -> F {
        self(req, stop)
    }
}

/// The service error that makes hyper close a connection without answering.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl Error for DropConnection {}

/// A running server: the address it serves, its stop signal and the tasks that end on it
/// (the accept loop, and any [`Server::spawn`] added). Dropping it tells them to stop.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free one) and serves `handler` there, as
    /// [`Server::serve`] does.
    pub(crate) async fn start(addr: SocketAddr, handler: impl Handler) -> io::Result<Server> {
        Server::serve(TcpListener::bind(addr).await?, handler)
    }

    /// Serves `listener` until stopped, every request going to `handler`. Must run inside a
    /// Tokio runtime, which then carries the server tasks.
    pub(crate) fn serve(listener: TcpListener, handler: impl Handler) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let accepting = tokio::spawn(accept(listener, Arc::new(handler), Stop(stopped)));
        Ok(Server {
            addr,
            stop,
            tasks: Mutex::new(vec![accepting]),
        })
    }

    /// Runs `task` beside the server until the stop signal it is given fires; shutdown waits
    /// for it too.
    pub(crate) fn spawn<F>(&self, task: impl FnOnce(Stop) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(Stop(self.stop.subscribe())));
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }

    /// The address served.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the address served, e.g. `http://127.0.0.1:40123`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `name { endpoint: "http://…", .. }`, a simulator's `Debug`, begun: more fields may
    /// follow before `finish_non_exhaustive`.
    pub(crate) fn debug_struct<'a, 'b: 'a>(
        &self,
        f: &'a mut fmt::Formatter<'b>,
        name: &str,
    ) -> fmt::DebugStruct<'a, 'b> {
        let mut debug = f.debug_struct(name);
        debug.field("endpoint", &self.endpoint());
        debug
    }

    /// Stops serving, lets in-flight requests finish for up to two seconds, and returns once
    /// the port is released and every task has ended.
    pub(crate) async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The accept loop: serves `listener` until `stop` fires, then lets in-flight requests
/// finish for up to [`DRAIN_TIMEOUT`].
async fn accept<H: Handler>(listener: TcpListener, handler: Arc<H>, mut stop: Stop) {
    let mut connections = JoinSet::new();
    // Each connection watches its own receiver; `stop` is borrowed by the select below.
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            _ = stop.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(
                        stream,
                        handler.clone(),
                        for_connections.clone(),
                    ));
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

/// One connection: its requests go to `handler` until it closes or `stop` fires, when it is
/// shut down gracefully (the request in flight, if any, is answered first).
async fn connection<H: Handler>(stream: TcpStream, handler: Arc<H>, mut stop: Stop) {
    // Latency matters more than throughput for small replies.
    let _ = stream.set_nodelay(true);
    let for_requests = stop.clone();
    let service = service_fn(move |req| handler.call(req, for_requests.clone()));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.requested() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A reply as AWS services send it: `status`, `Content-Type: content_type`, `body`, and
/// `request_id` in `x-amzn-requestid`.
pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    request_id: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

/// The body of `req`, up to `limit` bytes; `Err` says why it could not be read
/// (`Unreadable body: …`).
pub(crate) async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, String> {
    Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| format!("Unreadable body: {e}"))
}

/// The operation an AWS JSON request names in `X-Amz-Target` (`<prefix><Operation>`), and
/// whether the request is one the protocol serves: a `POST` whose target has `prefix`. A
/// target without the prefix names the operation whole (no target: `""`), so it still counts.
pub(crate) fn json_operation<B>(req: &Request<B>, prefix: &str) -> (String, bool) {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let served = req.method() == Method::POST && target.starts_with(prefix);
    let operation = target.strip_prefix(prefix).unwrap_or(target).to_string();
    (operation, served)
}
