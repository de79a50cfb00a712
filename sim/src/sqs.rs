//! An SQS queue for tests of push ([`SqsSimulator`]), and the EventBridge events the SSM
//! simulator puts on it ([`crate::Simulator::publish_events_to`]).
//!
//! The server speaks SQS's AWS JSON 1.0 protocol (`POST /`, `X-Amz-Target: AmazonSQS.<Op>`,
//! `Content-Type: application/x-amz-json-1.0`), so the real `aws-sdk-sqs` client works
//! against it through `endpoint_url`. Signatures are not checked. It serves one queue:
//! CreateQueue (of that name), GetQueueUrl, GetQueueAttributes, SendMessage, ReceiveMessage
//! (a real long poll: it answers as soon as a message is visible), DeleteMessage,
//! DeleteMessageBatch and PurgeQueue. A received message is invisible for the visibility
//! timeout (30 s unless the queue or the request says otherwise) unless it is deleted first.
//!
//! Events: the SSM simulator's timelines are scripted, so when a command is added the
//! simulator works out, with its own status aggregation, when each invocation's status (the
//! one GetCommandInvocation reports from then on) and the command's status change, and hands
//! that schedule to the queue: at each of those instants an
//! `EC2 Command Invocation Status-change Notification` (or `EC2 Command Status-change
//! Notification`) lands on the queue, shaped exactly as EventBridge delivers it. Faults on
//! demand (deterministic for a seed) drop, duplicate, reorder and delay those events.
//!
//! ```no_run
//! use std::time::Duration;
//! use ssm_sim::{Command, Invocation, Plugin, Simulator, SqsSimulator};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let ssm = Simulator::start().await?;
//! let sqs = SqsSimulator::start().await?;
//! ssm.publish_events_to(&sqs);
//! sqs.drop_ratio(0.2);
//! ssm.add_command(
//!     Command::new("11111111-2222-4333-8444-555555555555").invocation(
//!         Invocation::new("i-0123456789abcdef0")
//!             .plugin(Plugin::succeeding("aws:runShellScript", Duration::from_secs(2))),
//!     ),
//! );
//! println!("AWS_ENDPOINT_URL_SQS={} --sqs-queue-url {}", sqs.endpoint(), sqs.queue_url());
//! # Ok(()) }
//! ```

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::clock::iso_instant;
use crate::ids::uuid_v4;
use crate::model::{CommandState, Store};
use crate::script::Status;
use crate::serving::{json_operation, read_body, reply, Reply, Server, Stop, LOOPBACK};

/// The account in queue URLs, ARNs and events.
pub const SQS_ACCOUNT: &str = "123456789012";
/// The region in the queue ARN and in events.
pub const SQS_REGION: &str = "eu-west-1";
/// The name of the one queue served.
pub const SQS_QUEUE_NAME: &str = "ssm-operator-events";

/// The `X-Amz-Target` prefix of every SQS operation.
const TARGET_PREFIX: &str = "AmazonSQS.";
/// The content type of SQS's JSON requests and replies.
const AMZ_JSON: &str = "application/x-amz-json-1.0";
/// The namespace of SQS error types (`__type`).
const ERROR_NAMESPACE: &str = "com.amazonaws.sqs#";
/// A queue's visibility timeout unless CreateQueue or a receive says otherwise.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
/// The longest long poll SQS allows, in seconds.
const MAX_WAIT_SECONDS: i64 = 20;
/// The largest visibility timeout SQS allows, in seconds (12 hours).
const MAX_VISIBILITY_SECONDS: i64 = 43_200;
/// The longest message delay SQS allows, in seconds.
const MAX_DELAY_SECONDS: i64 = 900;
/// The largest message body SQS accepts (1 MiB).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// SQS's message retention default (4 days), reported only.
const RETENTION_SECONDS: u64 = 345_600;
/// Largest request body accepted.
const BODY_LIMIT: usize = 2 * MAX_MESSAGE_BYTES;
/// What an SSM command event's `expire-after` adds to `requested-date-time` (SendCommand's
/// default delivery timeout).
const EXPIRE_AFTER: Duration = Duration::from_secs(3600);
/// The seed of the fault dice until [`SqsSimulator::set_seed`] says otherwise.
const DEFAULT_SEED: u64 = 0x55_4d_53_51_53;
/// Marks receipt handles this queue issued: `AQEB` + 16 hex (message) + 8 hex (receive) + 32
/// hex of noise.
const RECEIPT_PREFIX: &str = "AQEB";
/// `SenderId` of messages: EventBridge's for events, a fixed IAM user id for SendMessage.
const EVENTS_SENDER: &str = "AIDAIEVENTBRIDGESSMSIM";
const CLIENT_SENDER: &str = "AIDAISQSSIMULATORTEST";

/// Detail-type of an invocation (one node) status change.
const INVOCATION_CHANGE: &str = "EC2 Command Invocation Status-change Notification";
/// Detail-type of a command status change.
const COMMAND_CHANGE: &str = "EC2 Command Status-change Notification";

/// A running SQS simulator with one queue, on loopback.
///
/// Cheap to clone (an `Arc` inside). Serving stops when the last handle is dropped or when
/// [`SqsSimulator::shutdown`] is called on any handle; a long poll in progress then answers
/// at once with no messages.
#[derive(Clone)]
pub struct SqsSimulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    /// Serves the queue and releases events; stops when dropped, with the last handle.
    server: Server,
}

impl fmt::Debug for SqsSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner
            .server
            .debug_struct(f, "SqsSimulator")
            .field("queue_url", &self.queue_url())
            .finish_non_exhaustive()
    }
}

impl SqsSimulator {
    /// Starts serving on `127.0.0.1` at a free port.
    pub async fn start() -> std::io::Result<SqsSimulator> {
        SqsSimulator::start_on(LOOPBACK).await
    }

    /// Starts serving on `addr` (port 0 picks a free one). Must run inside a Tokio runtime,
    /// which then carries the server tasks.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<SqsSimulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(format!(
            "http://{addr}/{SQS_ACCOUNT}/{SQS_QUEUE_NAME}"
        )));
        let serving = state.clone();
        let server = Server::serve(listener, move |req, stop| {
            respond(serving.clone(), req, stop)
        })?;
        let releasing = state.clone();
        server.spawn(move |stop| release_events(releasing, stop));
        Ok(SqsSimulator {
            inner: Arc::new(Inner { state, server }),
        })
    }

    /// The base URL to give the SDK, e.g. as `AWS_ENDPOINT_URL_SQS`.
    pub fn endpoint(&self) -> String {
        self.inner.server.endpoint()
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.server.local_addr()
    }

    /// The queue's URL, `http://127.0.0.1:<port>/123456789012/ssm-operator-events`.
    pub fn queue_url(&self) -> String {
        self.inner.state.url.clone()
    }

    /// The queue's ARN, `arn:aws:sqs:eu-west-1:123456789012:ssm-operator-events`.
    pub fn queue_arn(&self) -> String {
        format!("arn:aws:sqs:{SQS_REGION}:{SQS_ACCOUNT}:{SQS_QUEUE_NAME}")
    }

    /// The queue's visibility timeout from now on (default 30 s; whole seconds on the wire,
    /// any duration here).
    pub fn set_visibility_timeout(&self, timeout: Duration) {
        self.inner.state.queue().visibility_timeout = timeout;
    }

    /// Puts a message with this body on the queue now, as SendMessage would (no event
    /// fault applies), and returns its message id: for malformed or poison bodies.
    pub fn send_raw(&self, body: impl Into<String>) -> String {
        let state = &self.inner.state;
        let id = state
            .queue()
            .push(body.into(), CLIENT_SENDER, Duration::ZERO);
        state.sent.fetch_add(1, Ordering::Relaxed);
        state.arrived.notify_waiters();
        id
    }

    /// Requests received for an operation (e.g. `"ReceiveMessage"`), whatever their answer.
    pub fn calls(&self, operation: &str) -> u64 {
        self.inner
            .state
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_calls(&self) -> u64 {
        self.inner.state.total_calls.load(Ordering::Relaxed)
    }

    /// Messages put on the queue: SendMessage, [`SqsSimulator::send_raw`] and events (each
    /// duplicate counts).
    pub fn sent(&self) -> u64 {
        self.inner.state.sent.load(Ordering::Relaxed)
    }

    /// Messages handed out by ReceiveMessage (a message received twice counts twice).
    pub fn received(&self) -> u64 {
        self.inner.state.received.load(Ordering::Relaxed)
    }

    /// Messages deleted (DeleteMessage, DeleteMessageBatch entries; not PurgeQueue).
    pub fn deleted(&self) -> u64 {
        self.inner.state.deleted.load(Ordering::Relaxed)
    }

    /// Messages a receive would get now.
    pub fn visible(&self) -> usize {
        self.count_messages(|m, now| m.visible_at <= now)
    }

    /// Messages received and neither deleted nor visible again yet.
    pub fn in_flight(&self) -> usize {
        self.count_messages(|m, now| m.visible_at > now && m.receive_count > 0)
    }

    /// Messages sent with a delay that has not passed yet (never received).
    pub fn delayed(&self) -> usize {
        self.count_messages(|m, now| m.visible_at > now && m.receive_count == 0)
    }

    /// Messages on the queue for which `test(message, now)` holds.
    fn count_messages(&self, test: impl Fn(&Message, Instant) -> bool) -> usize {
        let now = Instant::now();
        let queue = self.inner.state.queue();
        queue.messages.iter().filter(|m| test(m, now)).count()
    }

    /// Events scheduled (or held back by [`SqsSimulator::delay_events`] /
    /// [`SqsSimulator::reorder`]) that have not reached the queue yet.
    pub fn pending_events(&self) -> usize {
        self.inner.state.events().heap.len()
    }

    /// Events whose time came (each counted once, before faults).
    pub fn events_published(&self) -> u64 {
        self.inner.state.events().published
    }

    /// Events dropped by [`SqsSimulator::drop_ratio`].
    pub fn events_dropped(&self) -> u64 {
        self.inner.state.events().dropped
    }

    /// The bodies of the events dropped so far, oldest first: to tell which updates only
    /// polling could bring.
    pub fn dropped_events(&self) -> Vec<String> {
        self.inner.state.events().dropped_bodies.clone()
    }

    /// Extra copies put on the queue by [`SqsSimulator::duplicate_ratio`].
    pub fn events_duplicated(&self) -> u64 {
        self.inner.state.events().duplicated
    }

    /// Events held back by [`SqsSimulator::reorder`] (not by a plain
    /// [`SqsSimulator::delay_events`]).
    pub fn events_reordered(&self) -> u64 {
        self.inner.state.events().reordered
    }

    /// Restarts the fault dice from `seed`: the same seed and the same events give the same
    /// drops, duplicates and delays.
    pub fn set_seed(&self, seed: u64) {
        self.inner.state.events().faults.rng = Rng(seed);
    }

    /// Drops this fraction (0.0 to 1.0) of events from now on.
    ///
    /// # Panics
    ///
    /// If `ratio` is not within 0.0..=1.0.
    pub fn drop_ratio(&self, ratio: f64) {
        self.inner.state.events().faults.drop = checked_ratio(ratio);
    }

    /// Delivers this fraction (0.0 to 1.0) of events twice (same event id), as EventBridge's
    /// at-least-once delivery may.
    ///
    /// # Panics
    ///
    /// If `ratio` is not within 0.0..=1.0.
    pub fn duplicate_ratio(&self, ratio: f64) {
        self.inner.state.events().faults.duplicate = checked_ratio(ratio);
    }

    /// Holds back this fraction (0.0 to 1.0) of events by a random time up to `up_to`, so
    /// later events overtake them.
    ///
    /// # Panics
    ///
    /// If `ratio` is not within 0.0..=1.0.
    pub fn reorder(&self, ratio: f64, up_to: Duration) {
        let mut events = self.inner.state.events();
        events.faults.reorder = checked_ratio(ratio);
        events.faults.reorder_up_to = up_to;
    }

    /// Delivers every event `delay` late (zero, the default, turns it off).
    pub fn delay_events(&self, delay: Duration) {
        self.inner.state.events().faults.delay = delay;
    }

    /// Stops serving (for every handle), ends long polls at once, lets other in-flight
    /// requests finish for up to two seconds, and returns once the port is released.
    pub async fn shutdown(self) {
        self.inner.server.shutdown().await;
    }
}

fn checked_ratio(ratio: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&ratio),
        "ssm-sim: a ratio of events must be within 0.0..=1.0, got {ratio}"
    );
    ratio
}

/// Where the SSM simulator sends the events of the commands it is given or sent
/// ([`crate::Simulator::publish_events_to`]): nowhere until connected.
#[derive(Default)]
pub(crate) struct EventHook {
    sink: Mutex<Option<Arc<State>>>,
}

impl std::fmt::Debug for EventHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected = self
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        f.debug_struct("EventHook")
            .field("connected", &connected)
            .finish()
    }
}

impl EventHook {
    /// Sends the events of commands added from now on to `sqs` (instead of any earlier one).
    pub(crate) fn connect(&self, sqs: &SqsSimulator) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(sqs.inner.state.clone());
    }

    /// Schedules the events of the command just added as `command_id`, if connected.
    pub(crate) fn command_added(&self, store: &Store, command_id: &str) {
        let sink = self
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let (Some(sink), Some(command)) = (sink, store.command(command_id)) {
            sink.schedule(command_id, command.added, schedule(command));
        }
    }
}

/// The events a command's script makes EventBridge send, as (offset since the command was
/// added, body), in time order: for each invocation, one at t = 0 and one whenever the status
/// GetCommandInvocation reports changes; for the command, the same over its aggregate status.
/// At equal times invocation events come first, in script order.
///
/// Statuses come from the simulator's own model ([`crate::model`]), evaluated at every step
/// of every plugin, so they are exactly what the API answers from that instant on. (A later
/// CancelCommand is not foreseen here.)
pub(crate) fn schedule(command: &CommandState) -> Vec<(Duration, String)> {
    let requested = command.added_wall;
    let spec = &command.spec;
    let mut events = Vec::new();
    let mut all_times = vec![Duration::ZERO];
    let mut resources = Vec::with_capacity(command.invocations.len());
    for inv in &command.invocations {
        let instance_id = &inv.spec.instance_id;
        resources.push(instance_arn(instance_id));
        let mut times = vec![Duration::ZERO];
        times.extend(
            inv.spec
                .plugins
                .iter()
                .flat_map(|p| p.steps.iter().map(|s| s.after)),
        );
        for (t, status) in changes(&mut times, |t| inv.view(t).status) {
            let detail = InvocationDetail {
                command_id: &spec.command_id,
                document_name: &spec.document_name,
                instance_id,
                requested_date_time: iso_instant(requested),
                status: status.as_str(),
            };
            events.push((
                t,
                event_json(
                    INVOCATION_CHANGE,
                    command.wall(t),
                    vec![instance_arn(instance_id)],
                    detail,
                ),
            ));
        }
        all_times.extend(times);
    }
    for (t, status) in changes(&mut all_times, |t| {
        command.summary(command.added + t).status
    }) {
        let detail = CommandDetail {
            command_id: &spec.command_id,
            document_name: &spec.document_name,
            expire_after: iso_instant(requested + EXPIRE_AFTER),
            parameters: &spec.parameters,
            requested_date_time: iso_instant(requested),
            status: status.as_str(),
        };
        events.push((
            t,
            event_json(COMMAND_CHANGE, command.wall(t), resources.clone(), detail),
        ));
    }
    // Stable: invocation events stay ahead of a command event at the same time.
    events.sort_by_key(|(t, _)| *t);
    events
}

/// Sorts `times` (dropping repeats) and returns those at which `status_at` differs from the
/// time before, the first included, each with its status from then on.
fn changes(
    times: &mut Vec<Duration>,
    status_at: impl Fn(Duration) -> Status,
) -> Vec<(Duration, Status)> {
    times.sort_unstable();
    times.dedup();
    let mut out: Vec<(Duration, Status)> = Vec::new();
    for &t in times.iter() {
        let status = status_at(t);
        if out.last().is_none_or(|&(_, last)| last != status) {
            out.push((t, status));
        }
    }
    out
}

/// An EventBridge event, its members in the order EventBridge writes them.
#[derive(Serialize)]
struct Event<D> {
    version: &'static str,
    id: String,
    #[serde(rename = "detail-type")]
    detail_type: &'static str,
    source: &'static str,
    account: &'static str,
    time: String,
    region: &'static str,
    resources: Vec<String>,
    detail: D,
}

/// `detail` of `EC2 Command Invocation Status-change Notification`.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct InvocationDetail<'a> {
    command_id: &'a str,
    document_name: &'a str,
    instance_id: &'a str,
    requested_date_time: String,
    status: &'static str,
}

/// `detail` of `EC2 Command Status-change Notification`.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct CommandDetail<'a> {
    command_id: &'a str,
    document_name: &'a str,
    expire_after: String,
    parameters: &'a BTreeMap<String, Vec<String>>,
    requested_date_time: String,
    status: &'static str,
}

fn event_json(
    detail_type: &'static str,
    at: SystemTime,
    resources: Vec<String>,
    detail: impl Serialize,
) -> String {
    let event = Event {
        version: "0",
        id: uuid_v4(),
        detail_type,
        source: "aws.ssm",
        account: SQS_ACCOUNT,
        time: iso_seconds(at),
        region: SQS_REGION,
        resources,
        detail,
    };
    serde_json::to_string(&event).unwrap_or_default()
}

/// The ARN EventBridge names a node by: an EC2 instance, or a managed (hybrid) node `mi-…`.
fn instance_arn(instance_id: &str) -> String {
    if instance_id.starts_with("mi-") {
        format!("arn:aws:ssm:{SQS_REGION}:{SQS_ACCOUNT}:managed-instance/{instance_id}")
    } else {
        format!("arn:aws:ec2:{SQS_REGION}:{SQS_ACCOUNT}:instance/{instance_id}")
    }
}

/// An event's `time`: whole seconds, e.g. `2026-11-25T03:50:00Z`.
fn iso_seconds(t: SystemTime) -> String {
    let full = iso_instant(t);
    format!("{}Z", &full[..full.len().min(19)])
}

fn epoch_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The queue server's state: the messages, the scheduled events and the counters.
struct State {
    url: String,
    created: SystemTime,
    queue: Mutex<Queue>,
    /// Woken whenever a message is put on the queue.
    arrived: Notify,
    events: Mutex<Events>,
    /// Woken whenever events are scheduled.
    events_changed: Notify,
    calls: Mutex<HashMap<String, u64>>,
    total_calls: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    deleted: AtomicU64,
}

impl State {
    fn new(url: String) -> Self {
        State {
            url,
            created: SystemTime::now(),
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                visibility_timeout: DEFAULT_VISIBILITY,
                next_seq: 0,
            }),
            arrived: Notify::new(),
            events: Mutex::new(Events {
                heap: BinaryHeap::new(),
                next_seq: 0,
                generations: HashMap::new(),
                faults: EventFaults {
                    drop: 0.0,
                    duplicate: 0.0,
                    reorder: 0.0,
                    reorder_up_to: Duration::ZERO,
                    delay: Duration::ZERO,
                    rng: Rng(DEFAULT_SEED),
                },
                published: 0,
                dropped: 0,
                dropped_bodies: Vec::new(),
                duplicated: 0,
                reordered: 0,
            }),
            events_changed: Notify::new(),
            calls: Mutex::new(HashMap::new()),
            total_calls: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn events(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules a command's events (offsets from `added`); those of an earlier command with
    /// the same id that have not been sent yet are forgotten, as the command was replaced.
    fn schedule(&self, command_id: &str, added: Instant, events: Vec<(Duration, String)>) {
        let mut state = self.events();
        let generation = state
            .generations
            .entry(command_id.to_string())
            .and_modify(|g| *g += 1)
            .or_insert(0);
        let generation = *generation;
        let command_id: Arc<str> = Arc::from(command_id);
        for (offset, body) in events {
            let seq = state.next_seq;
            state.next_seq += 1;
            state.heap.push(Pending {
                at: added + offset,
                seq,
                command_id: command_id.clone(),
                generation,
                body,
                decided: false,
                copies: 1,
            });
        }
        drop(state);
        self.events_changed.notify_one();
    }

    /// Puts every event due at `now` on the queue (after its faults) and returns when the
    /// next one is due.
    fn release_due(&self, now: Instant) -> Option<Instant> {
        let mut events = self.events();
        let mut delivered = false;
        while events.heap.peek().is_some_and(|p| p.at <= now) {
            let Some(mut pending) = events.heap.pop() else {
                break;
            };
            if events.generations.get(&*pending.command_id) != Some(&pending.generation) {
                continue;
            }
            if !pending.decided {
                events.published += 1;
                let faults = &mut events.faults;
                // Always four draws per event, so one fault's ratio does not shift another's.
                let (drop, duplicate, reorder, amount) = (
                    faults.rng.unit(),
                    faults.rng.unit(),
                    faults.rng.unit(),
                    faults.rng.unit(),
                );
                if drop < faults.drop {
                    events.dropped += 1;
                    events.dropped_bodies.push(pending.body);
                    continue;
                }
                let mut hold = faults.delay;
                let reordered = reorder < faults.reorder && !faults.reorder_up_to.is_zero();
                if reordered {
                    hold += faults.reorder_up_to.mul_f64(amount);
                }
                if duplicate < faults.duplicate {
                    pending.copies = 2;
                    events.duplicated += 1;
                }
                if reordered {
                    events.reordered += 1;
                }
                pending.decided = true;
                if !hold.is_zero() {
                    pending.at = now + hold;
                    events.heap.push(pending);
                    continue;
                }
            }
            let mut queue = self.queue();
            for _ in 0..pending.copies {
                queue.push(pending.body.clone(), EVENTS_SENDER, Duration::ZERO);
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            delivered = true;
        }
        let next = events.heap.peek().map(|p| p.at);
        drop(events);
        if delivered {
            self.arrived.notify_waiters();
        }
        next
    }

    fn count(&self, operation: &str) {
        self.total_calls.fetch_add(1, Ordering::Relaxed);
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        match calls.get_mut(operation) {
            Some(n) => *n += 1,
            None => {
                calls.insert(operation.to_string(), 1);
            }
        }
    }
}

/// Scheduled events, and what faults do to them.
struct Events {
    heap: BinaryHeap<Pending>,
    next_seq: u64,
    /// Command id → the generation whose events still count (a re-added command replaces).
    generations: HashMap<String, u64>,
    faults: EventFaults,
    published: u64,
    dropped: u64,
    dropped_bodies: Vec<String>,
    duplicated: u64,
    reordered: u64,
}

struct EventFaults {
    drop: f64,
    duplicate: f64,
    reorder: f64,
    reorder_up_to: Duration,
    delay: Duration,
    rng: Rng,
}

/// An event waiting for its time.
struct Pending {
    at: Instant,
    seq: u64,
    command_id: Arc<str>,
    generation: u64,
    body: String,
    /// Faults were applied (it is being held back).
    decided: bool,
    /// How many copies to deliver.
    copies: u8,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed: the heap's top is the earliest (then the first scheduled).
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// SplitMix64: small, fast and the same everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The messages of the one queue, oldest first.
struct Queue {
    messages: VecDeque<Message>,
    visibility_timeout: Duration,
    next_seq: u64,
}

struct Message {
    seq: u64,
    id: String,
    body: String,
    md5: String,
    sender: &'static str,
    sent: SystemTime,
    /// Receivable from then on (sent, delay over, or visibility timeout expired).
    visible_at: Instant,
    /// The latest receipt handle; only it deletes the message.
    receipt: Option<String>,
    receive_count: u32,
    first_received: Option<SystemTime>,
}

impl Queue {
    fn push(&mut self, body: String, sender: &'static str, delay: Duration) -> String {
        let id = uuid_v4();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.messages.push_back(Message {
            seq,
            id: id.clone(),
            md5: md5_hex(body.as_bytes()),
            body,
            sender,
            sent: SystemTime::now(),
            visible_at: Instant::now() + delay,
            receipt: None,
            receive_count: 0,
            first_received: None,
        });
        id
    }

    /// Takes up to `max` visible messages, making them invisible for `visibility`; returns
    /// them and, if none, when the next one becomes visible.
    fn receive(
        &mut self,
        max: usize,
        visibility: Duration,
        now: Instant,
    ) -> (Vec<Received>, Option<Instant>) {
        let wall = SystemTime::now();
        let mut out = Vec::new();
        let mut next = None::<Instant>;
        for message in self.messages.iter_mut() {
            if message.visible_at > now {
                next = Some(next.map_or(message.visible_at, |n| n.min(message.visible_at)));
                continue;
            }
            if out.len() == max {
                break;
            }
            message.receive_count += 1;
            message.first_received.get_or_insert(wall);
            message.visible_at = now + visibility;
            let receipt = format!(
                "{RECEIPT_PREFIX}{:016x}{:08x}{}",
                message.seq,
                message.receive_count,
                uuid_v4().replace('-', "")
            );
            message.receipt = Some(receipt.clone());
            out.push(Received {
                id: message.id.clone(),
                receipt,
                md5: message.md5.clone(),
                body: message.body.clone(),
                sender: message.sender,
                sent: message.sent,
                receive_count: message.receive_count,
                first_received: message.first_received.unwrap_or(wall),
            });
        }
        (out, next)
    }

    /// Deletes the message `receipt` was issued for, if it is that message's latest receipt
    /// (an older one succeeds without deleting, as SQS does). `Err` if this queue never
    /// issued such a handle.
    fn delete(&mut self, receipt: &str) -> Result<bool, ()> {
        let seq = parse_receipt(receipt).ok_or(())?;
        let Ok(position) = self.messages.binary_search_by_key(&seq, |m| m.seq) else {
            return Ok(false);
        };
        if self.messages[position].receipt.as_deref() != Some(receipt) {
            return Ok(false);
        }
        self.messages.remove(position);
        Ok(true)
    }
}

/// The message sequence number in a receipt handle this queue issued.
fn parse_receipt(receipt: &str) -> Option<u64> {
    let rest = receipt.strip_prefix(RECEIPT_PREFIX)?;
    if rest.len() != 16 + 8 + 32 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&rest[..16], 16).ok()
}

/// One message as a receive hands it out.
struct Received {
    id: String,
    receipt: String,
    md5: String,
    body: String,
    sender: &'static str,
    sent: SystemTime,
    receive_count: u32,
    first_received: SystemTime,
}

/// Releases scheduled events when their time comes, until stopped.
async fn release_events(state: Arc<State>, mut stop: Stop) {
    loop {
        let changed = state.events_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = state.release_due(Instant::now());
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = sleep => {}
            _ = stop.requested() => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP front and the operations.

/// An error SQS answers with: HTTP 400, `{"__type": "com.amazonaws.sqs#<Code>", "message"}`
/// and, for errors the Query protocol named differently, `x-amzn-query-error`.
#[derive(Debug)]
struct SqsError {
    code: &'static str,
    query_code: Option<&'static str>,
    message: String,
}

impl SqsError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        SqsError {
            code,
            query_code: None,
            message: message.into(),
        }
    }

    fn queue_does_not_exist() -> Self {
        SqsError {
            code: "QueueDoesNotExist",
            query_code: Some("AWS.SimpleQueueService.NonExistentQueue"),
            message: "The specified queue does not exist.".into(),
        }
    }

    fn missing(member: &str) -> Self {
        SqsError {
            code: "MissingParameter",
            query_code: Some("MissingParameter"),
            message: format!("The request must contain the parameter {member}."),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        SqsError {
            code: "InvalidParameterValue",
            query_code: Some("InvalidParameterValue"),
            message: message.into(),
        }
    }

    fn type_name(&self) -> String {
        if self.code.contains('#') {
            self.code.to_string()
        } else {
            format!("{ERROR_NAMESPACE}{}", self.code)
        }
    }
}

/// Answers one SQS request; a long poll ends at once with no messages when `stop` fires.
async fn respond(
    state: Arc<State>,
    req: Request<Incoming>,
    stop: Stop,
) -> Result<Reply, Infallible> {
    let (operation, served) = json_operation(&req, TARGET_PREFIX);
    state.count(&operation);
    let result = if !served {
        Err(SqsError::new(
            "com.amazon.coral.service#UnknownOperationException",
            "",
        ))
    } else {
        match read_body(req, BODY_LIMIT).await {
            Err(message) => Err(SqsError::new(
                "com.amazon.coral.service#SerializationException",
                message,
            )),
            Ok(body) => handle(&state, &operation, &body, stop).await,
        }
    };
    let (status, body, query_error) = match result {
        Ok(body) => (StatusCode::OK, body.to_string(), None),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"__type": e.type_name(), "message": e.message}).to_string(),
            e.query_code.map(|q| format!("{q};Sender")),
        ),
    };
    let mut response = reply(status, AMZ_JSON, &uuid_v4(), body);
    if let Some(value) = query_error.and_then(|q| HeaderValue::from_str(&q).ok()) {
        response.headers_mut().insert("x-amzn-query-error", value);
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct QueueRequest {
    queue_url: Option<String>,
    queue_name: Option<String>,
    attributes: Option<HashMap<String, String>>,
    attribute_names: Option<Vec<String>>,
    message_system_attribute_names: Option<Vec<String>>,
    max_number_of_messages: Option<i64>,
    wait_time_seconds: Option<i64>,
    visibility_timeout: Option<i64>,
    receipt_handle: Option<String>,
    entries: Option<Vec<BatchEntry>>,
    message_body: Option<String>,
    delay_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct BatchEntry {
    id: Option<String>,
    receipt_handle: Option<String>,
}

async fn handle(
    state: &State,
    operation: &str,
    body: &[u8],
    stop: Stop,
) -> Result<Value, SqsError> {
    let req: QueueRequest = serde_json::from_slice(body).map_err(|e| {
        SqsError::new(
            "com.amazon.coral.service#SerializationException",
            format!("Malformed request body: {e}"),
        )
    })?;
    match operation {
        "CreateQueue" => create_queue(state, &req),
        "GetQueueUrl" => match req.queue_name.as_deref() {
            None => Err(SqsError::missing("QueueName")),
            Some(SQS_QUEUE_NAME) => Ok(json!({ "QueueUrl": state.url })),
            Some(_) => Err(SqsError::queue_does_not_exist()),
        },
        "GetQueueAttributes" => {
            check_url(&req)?;
            Ok(json!({ "Attributes": queue_attributes(state, req.attribute_names.as_deref()) }))
        }
        "SendMessage" => send_message(state, &req),
        "ReceiveMessage" => receive_message(state, &req, stop).await,
        "DeleteMessage" => {
            check_url(&req)?;
            let receipt = req
                .receipt_handle
                .as_deref()
                .ok_or_else(|| SqsError::missing("ReceiptHandle"))?;
            let deleted = state.queue().delete(receipt).map_err(|()| SqsError {
                code: "ReceiptHandleIsInvalid",
                query_code: Some("ReceiptHandleIsInvalid"),
                message: format!(
                    "The input receipt handle \"{receipt}\" is not a valid receipt handle."
                ),
            })?;
            if deleted {
                state.deleted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(json!({}))
        }
        "DeleteMessageBatch" => delete_message_batch(state, &req),
        "PurgeQueue" => {
            check_url(&req)?;
            state.queue().messages.clear();
            Ok(json!({}))
        }
        _ => Err(SqsError::new(
            "com.amazon.coral.service#UnknownOperationException",
            "",
        )),
    }
}

/// The queue named by `QueueUrl` must be this one (any host: only the path is compared).
fn check_url(req: &QueueRequest) -> Result<(), SqsError> {
    let url = req
        .queue_url
        .as_deref()
        .ok_or_else(|| SqsError::missing("QueueUrl"))?;
    let path = format!("/{SQS_ACCOUNT}/{SQS_QUEUE_NAME}");
    if url.trim_end_matches('/').ends_with(&path) {
        Ok(())
    } else {
        Err(SqsError::queue_does_not_exist())
    }
}

fn create_queue(state: &State, req: &QueueRequest) -> Result<Value, SqsError> {
    let name = req
        .queue_name
        .as_deref()
        .ok_or_else(|| SqsError::missing("QueueName"))?;
    if name != SQS_QUEUE_NAME {
        return Err(SqsError::invalid(format!(
            "ssm-sim serves one queue, named {SQS_QUEUE_NAME}; cannot create {name}"
        )));
    }
    if let Some(text) = req
        .attributes
        .as_ref()
        .and_then(|a| a.get("VisibilityTimeout"))
    {
        let seconds = text
            .parse::<i64>()
            .ok()
            .filter(|s| (0..=MAX_VISIBILITY_SECONDS).contains(s))
            .ok_or_else(|| SqsError {
                code: "InvalidAttributeValue",
                query_code: Some("InvalidAttributeValue"),
                message: format!("Invalid value for the parameter VisibilityTimeout: {text}"),
            })?;
        state.queue().visibility_timeout = Duration::from_secs(seconds.unsigned_abs());
    }
    Ok(json!({ "QueueUrl": state.url }))
}

fn queue_attributes(state: &State, names: Option<&[String]>) -> BTreeMap<&'static str, String> {
    let now = Instant::now();
    let queue = state.queue();
    let count = |f: &dyn Fn(&Message) -> bool| queue.messages.iter().filter(|m| f(m)).count();
    let all: [(&'static str, String); 10] = [
        (
            "ApproximateNumberOfMessages",
            count(&|m| m.visible_at <= now).to_string(),
        ),
        (
            "ApproximateNumberOfMessagesNotVisible",
            count(&|m| m.visible_at > now && m.receive_count > 0).to_string(),
        ),
        (
            "ApproximateNumberOfMessagesDelayed",
            count(&|m| m.visible_at > now && m.receive_count == 0).to_string(),
        ),
        (
            "CreatedTimestamp",
            (epoch_millis(state.created) / 1000).to_string(),
        ),
        ("DelaySeconds", "0".to_string()),
        ("MaximumMessageSize", MAX_MESSAGE_BYTES.to_string()),
        ("MessageRetentionPeriod", RETENTION_SECONDS.to_string()),
        (
            "QueueArn",
            format!("arn:aws:sqs:{SQS_REGION}:{SQS_ACCOUNT}:{SQS_QUEUE_NAME}"),
        ),
        ("ReceiveMessageWaitTimeSeconds", "0".to_string()),
        (
            "VisibilityTimeout",
            queue.visibility_timeout.as_secs().to_string(),
        ),
    ];
    let wanted =
        |name: &str| names.is_some_and(|names| names.iter().any(|n| n == "All" || n == name));
    all.into_iter().filter(|(name, _)| wanted(name)).collect()
}

fn send_message(state: &State, req: &QueueRequest) -> Result<Value, SqsError> {
    check_url(req)?;
    let body = req
        .message_body
        .clone()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| SqsError::missing("MessageBody"))?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(SqsError::invalid(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {MAX_MESSAGE_BYTES} bytes."
        )));
    }
    let delay = in_range(req.delay_seconds, "DelaySeconds", 0, 0..=MAX_DELAY_SECONDS)?;
    let md5 = md5_hex(body.as_bytes());
    let id = state.queue().push(
        body,
        CLIENT_SENDER,
        Duration::from_secs(delay.unsigned_abs()),
    );
    state.sent.fetch_add(1, Ordering::Relaxed);
    state.arrived.notify_waiters();
    Ok(json!({ "MD5OfMessageBody": md5, "MessageId": id }))
}

/// `value` if given and within `allowed`, else `default` if not given.
fn in_range(
    value: Option<i64>,
    name: &str,
    default: i64,
    allowed: std::ops::RangeInclusive<i64>,
) -> Result<i64, SqsError> {
    match value {
        None => Ok(default),
        Some(v) if allowed.contains(&v) => Ok(v),
        Some(v) => Err(SqsError::invalid(format!(
            "Value {v} for parameter {name} is invalid. Reason: must be between {} and {}, if provided.",
            allowed.start(),
            allowed.end()
        ))),
    }
}

async fn receive_message(
    state: &State,
    req: &QueueRequest,
    mut stop: Stop,
) -> Result<Value, SqsError> {
    check_url(req)?;
    let max = in_range(req.max_number_of_messages, "MaxNumberOfMessages", 1, 1..=10)?;
    let wait = in_range(
        req.wait_time_seconds,
        "WaitTimeSeconds",
        0,
        0..=MAX_WAIT_SECONDS,
    )?;
    let visibility = match req.visibility_timeout {
        None => state.queue().visibility_timeout,
        Some(v) => {
            let seconds = in_range(Some(v), "VisibilityTimeout", 0, 0..=MAX_VISIBILITY_SECONDS)?;
            Duration::from_secs(seconds.unsigned_abs())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(wait.unsigned_abs());
    let max = usize::try_from(max).unwrap_or(1);
    let messages = loop {
        let arrived = state.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let now = Instant::now();
        let (messages, next) = state.queue().receive(max, visibility, now);
        if !messages.is_empty() || now >= deadline {
            break messages;
        }
        let wake = next.map_or(deadline, |n| n.min(deadline));
        tokio::select! {
            _ = arrived => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.requested() => break Vec::new(),
        }
    };
    if messages.is_empty() {
        return Ok(json!({}));
    }
    state
        .received
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    let asked: Vec<&String> = req
        .attribute_names
        .iter()
        .chain(req.message_system_attribute_names.iter())
        .flatten()
        .collect();
    let wanted = |name: &str| asked.iter().any(|n| *n == "All" || *n == name);
    let out: Vec<Value> = messages
        .into_iter()
        .map(|m| {
            let mut attributes = serde_json::Map::new();
            let mut put = |name: &str, value: String| {
                if wanted(name) {
                    attributes.insert(name.to_string(), Value::String(value));
                }
            };
            put("SenderId", m.sender.to_string());
            put("SentTimestamp", epoch_millis(m.sent).to_string());
            put("ApproximateReceiveCount", m.receive_count.to_string());
            put(
                "ApproximateFirstReceiveTimestamp",
                epoch_millis(m.first_received).to_string(),
            );
            let mut message = json!({
                "MessageId": m.id,
                "ReceiptHandle": m.receipt,
                "MD5OfBody": m.md5,
                "Body": m.body,
            });
            if !attributes.is_empty() {
                message["Attributes"] = Value::Object(attributes);
            }
            message
        })
        .collect();
    Ok(json!({ "Messages": out }))
}

fn delete_message_batch(state: &State, req: &QueueRequest) -> Result<Value, SqsError> {
    check_url(req)?;
    let entries = req.entries.as_deref().unwrap_or_default();
    if entries.is_empty() {
        return Err(SqsError {
            code: "EmptyBatchRequest",
            query_code: Some("AWS.SimpleQueueService.EmptyBatchRequest"),
            message: "There should be at least one DeleteMessageBatchRequestEntry in the request."
                .into(),
        });
    }
    if entries.len() > 10 {
        return Err(SqsError {
            code: "TooManyEntriesInBatchRequest",
            query_code: Some("AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
            message: format!(
                "Maximum number of entries per request are 10. You have sent {}.",
                entries.len()
            ),
        });
    }
    let mut ids: Vec<&str> = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = entry.id.as_deref().ok_or_else(|| SqsError::missing("Id"))?;
        if ids.contains(&id) {
            return Err(SqsError {
                code: "BatchEntryIdsNotDistinct",
                query_code: Some("AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
                message: format!("Id {id} repeated."),
            });
        }
        ids.push(id);
    }
    let mut successful = Vec::new();
    let mut failed = Vec::new();
    let mut queue = state.queue();
    for (entry, id) in entries.iter().zip(ids) {
        let receipt = entry.receipt_handle.as_deref().unwrap_or_default();
        match queue.delete(receipt) {
            Ok(deleted) => {
                if deleted {
                    state.deleted.fetch_add(1, Ordering::Relaxed);
                }
                successful.push(json!({ "Id": id }));
            }
            Err(()) => failed.push(json!({
                "Id": id,
                "SenderFault": true,
                "Code": "ReceiptHandleIsInvalid",
                "Message": format!("The input receipt handle \"{receipt}\" is not a valid receipt handle."),
            })),
        }
    }
    Ok(json!({ "Successful": successful, "Failed": failed }))
}

/// MD5 (RFC 1321) as lower-case hex: SQS's `MD5OfBody`.
fn md5_hex(data: &[u8]) -> String {
    const SHIFTS: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    const K: [u32; 64] = [
        0xd76a_a478,
        0xe8c7_b756,
        0x2420_70db,
        0xc1bd_ceee,
        0xf57c_0faf,
        0x4787_c62a,
        0xa830_4613,
        0xfd46_9501,
        0x6980_98d8,
        0x8b44_f7af,
        0xffff_5bb1,
        0x895c_d7be,
        0x6b90_1122,
        0xfd98_7193,
        0xa679_438e,
        0x49b4_0821,
        0xf61e_2562,
        0xc040_b340,
        0x265e_5a51,
        0xe9b6_c7aa,
        0xd62f_105d,
        0x0244_1453,
        0xd8a1_e681,
        0xe7d3_fbc8,
        0x21e1_cde6,
        0xc337_07d6,
        0xf4d5_0d87,
        0x455a_14ed,
        0xa9e3_e905,
        0xfcef_a3f8,
        0x676f_02d9,
        0x8d2a_4c8a,
        0xfffa_3942,
        0x8771_f681,
        0x6d9d_6122,
        0xfde5_380c,
        0xa4be_ea44,
        0x4bde_cfa9,
        0xf6bb_4b60,
        0xbebf_bc70,
        0x289b_7ec6,
        0xeaa1_27fa,
        0xd4ef_3085,
        0x0488_1d05,
        0xd9d4_d039,
        0xe6db_99e5,
        0x1fa2_7cf8,
        0xc4ac_5665,
        0xf429_2244,
        0x432a_ff97,
        0xab94_23a7,
        0xfc93_a039,
        0x655b_59c3,
        0x8f0c_cc92,
        0xffef_f47d,
        0x8584_5dd1,
        0x6fa8_7e4f,
        0xfe2c_e6e0,
        0xa301_4314,
        0x4e08_11a1,
        0xf753_7e82,
        0xbd3a_f235,
        0x2ad7_d2bb,
        0xeb86_d391,
    ];
    let mut message = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for block in message.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (word, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(K[i])
                .wrapping_add(m[g])
                .rotate_left(SHIFTS[i]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        for (acc, v) in h.iter_mut().zip([a, b, c, d]) {
            *acc = acc.wrapping_add(v);
        }
    }
    h.iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{Command, Invocation, Plugin, Status};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(b"The quick brown fox jumps over the lazy dog"),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
        assert_eq!(
            md5_hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
        // What moto answered for the body "hi".
        assert_eq!(md5_hex(b"hi"), "49f68a5c8493ec2c0bf489821c21fc3b");
    }

    #[test]
    fn receipts_name_their_message() {
        let mut queue = Queue {
            messages: VecDeque::new(),
            visibility_timeout: DEFAULT_VISIBILITY,
            next_seq: 7,
        };
        queue.push("a".into(), CLIENT_SENDER, Duration::ZERO);
        let now = Instant::now();
        let (got, _) = queue.receive(10, ms(0), now);
        let first = got[0].receipt.clone();
        assert_eq!(parse_receipt(&first), Some(7));
        // Received again (visibility 0): the old receipt no longer deletes it.
        let (got, _) = queue.receive(10, ms(1000), now);
        assert_eq!(queue.delete(&first), Ok(false));
        assert_eq!(queue.delete("garbage"), Err(()));
        assert_eq!(queue.delete(&got[0].receipt), Ok(true));
        assert!(queue.messages.is_empty());
        assert_eq!(queue.delete(&got[0].receipt), Ok(false));
    }

    #[test]
    fn the_rng_is_the_same_for_a_seed() {
        let draws = |seed| {
            let mut rng = Rng(seed);
            (0..5).map(|_| rng.unit()).collect::<Vec<_>>()
        };
        assert_eq!(draws(1), draws(1));
        assert_ne!(draws(1), draws(2));
        assert!(draws(3).iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn the_schedule_follows_the_aggregate_statuses() {
        let mut store = Store::default();
        let now = Instant::now();
        store.add(
            Command::new("c-1")
                .invocation(
                    Invocation::new("i-1")
                        .plugin(Plugin::succeeding_at("a", ms(100), ms(300)))
                        .plugin(
                            Plugin::new("b")
                                .step(ms(200), Status::InProgress)
                                .step(ms(500), Status::Failed),
                        ),
                )
                .invocation(Invocation::new("mi-2").plugin(Plugin::succeeding_at(
                    "a",
                    ms(100),
                    ms(300),
                ))),
            now,
            SystemTime::now(),
        );
        let events: Vec<(Duration, Value)> = schedule(store.command("c-1").unwrap())
            .into_iter()
            .map(|(t, body)| (t, serde_json::from_str(&body).unwrap()))
            .collect();
        let summary: Vec<(u64, &str, Option<&str>, &str)> = events
            .iter()
            .map(|(t, e)| {
                (
                    t.as_millis() as u64,
                    e["detail-type"].as_str().unwrap(),
                    e["detail"]["instance-id"].as_str(),
                    e["detail"]["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, INVOCATION_CHANGE, Some("i-1"), "Pending"),
                (0, INVOCATION_CHANGE, Some("mi-2"), "Pending"),
                (0, COMMAND_CHANGE, None, "Pending"),
                (100, INVOCATION_CHANGE, Some("i-1"), "InProgress"),
                (100, INVOCATION_CHANGE, Some("mi-2"), "InProgress"),
                (100, COMMAND_CHANGE, None, "InProgress"),
                // i-1 stays InProgress at 200 and 300 (b still runs): no event.
                (300, INVOCATION_CHANGE, Some("mi-2"), "Success"),
                (500, INVOCATION_CHANGE, Some("i-1"), "Failed"),
                (500, COMMAND_CHANGE, None, "Failed"),
            ]
        );
        let (_, first) = &events[0];
        assert_eq!(first["version"], "0");
        assert_eq!(first["source"], "aws.ssm");
        assert_eq!(first["account"], SQS_ACCOUNT);
        assert_eq!(first["region"], SQS_REGION);
        assert_eq!(
            first["resources"],
            json!(["arn:aws:ec2:eu-west-1:123456789012:instance/i-1"])
        );
        assert_eq!(first["detail"]["document-name"], "AWS-RunShellScript");
        let time = first["time"].as_str().unwrap();
        assert_eq!((time.len(), &time[19..]), (20, "Z"), "{time}");
        let command = &events[2].1;
        assert_eq!(
            command["resources"],
            json!([
                "arn:aws:ec2:eu-west-1:123456789012:instance/i-1",
                "arn:aws:ssm:eu-west-1:123456789012:managed-instance/mi-2"
            ])
        );
        assert!(command["detail"]["expire-after"].is_string());
        assert_eq!(command["detail"]["parameters"], json!({}));
        // Members in EventBridge's order.
        let body = schedule(store.command("c-1").unwrap()).remove(0).1;
        let order: Vec<usize> = [
            "\"version\"",
            "\"id\"",
            "\"detail-type\"",
            "\"source\"",
            "\"account\"",
            "\"time\"",
            "\"region\"",
            "\"resources\"",
            "\"detail\"",
        ]
        .iter()
        .map(|k| body.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{body}");
    }
}
