//! Property tests: whatever SSM (or something posing as it) answers to `GetCommandInvocation`,
//! the operator never panics. Random and mutated HTTP bodies go through the real `aws-sdk-ssm`
//! client (via [`Ssm`]) and the pure mapping ([`mapping::apply`]); each answer must be either a
//! classified [`SsmError`] or a status the API server accepts and kstatus can read.
//!
//! The "SSM endpoint" is a minimal HTTP/1.1 server on 127.0.0.1 that answers every request with
//! the reply the current case put in its slot. The SDK runs with retries off and short timeouts,
//! so one case is one request.

use std::any::Any;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ssm::config::Credentials;
use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use ssm_operator::api::conditions::{FINISHED, READY, RECONCILING, STALLED};
use ssm_operator::api::CommandInvocationStatus;
use ssm_operator::aws::ssm::{Invocation, InvocationKey, Ssm, SsmError};
use ssm_operator::aws::ssm::{TERMINAL_STATUSES, THROTTLED_ATTEMPTS};
use ssm_operator::invocation::status::{self as mapping, Poll, Settings};
use ssm_operator::k8s::output::CUT_MARKER;
use ssm_operator::runtime::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every condition reason an [`SsmError`] may carry (the public contract's list).
const ERROR_REASONS: &[&str] = &[
    "InvocationNotFound",
    "InvalidCommandId",
    "InvalidInstanceId",
    "InvalidPluginName",
    "ValidationError",
    "AccessDenied",
    "AssumeRoleFailed",
    "Throttled",
    "SsmUnavailable",
];

/// Kubernetes' bounds for a condition (metav1.Condition validation).
const MAX_REASON_CHARS: usize = 1024;
const MAX_MESSAGE_BYTES: usize = 32768;

/// `--not-found-grace` in every case.
const GRACE: Duration = Duration::from_secs(300);

const HTTP_CODES: &[u16] = &[200, 400, 403, 404, 413, 500, 503];

// ---------------------------------------------------------------------------------------------
// The fake SSM endpoint
// ---------------------------------------------------------------------------------------------

/// What the server answers: an HTTP status code and a body.
#[derive(Clone)]
struct Reply {
    code: u16,
    body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 2000;
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(SHOWN)]);
        write!(f, "HTTP {} ({} bytes) {text:?}", self.code, self.body.len())?;
        if self.body.len() > SHOWN {
            write!(f, "...")?;
        }
        Ok(())
    }
}

/// A raw HTTP/1.1 server on 127.0.0.1 that answers each request with the reply in `slot`.
struct Server {
    addr: SocketAddr,
    slot: Arc<Mutex<Reply>>,
    /// Requests read in full so far.
    requests: Arc<AtomicUsize>,
}

impl Server {
    /// Binds and starts serving on the current tokio runtime.
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slot = Arc::new(Mutex::new(Reply {
            code: 500,
            body: Vec::new(),
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let (serve_slot, serve_requests) = (slot.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (slot, requests) = (serve_slot.clone(), serve_requests.clone());
                tokio::spawn(async move {
                    // A client that hangs up early is the client's business, not a failure here.
                    let _ = answer_one(stream, &slot, &requests).await;
                });
            }
        });
        Server {
            addr,
            slot,
            requests,
        }
    }

    fn set(&self, reply: Reply) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = reply;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// An SSM client for this server: static credentials, no retries, 2 s timeouts.
    async fn ssm(&self) -> Ssm {
        ssm_operator::install_crypto_provider();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(format!("http://{}", self.addr))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .read_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(2))
                    .build(),
            )
            .load()
            .await;
        Ssm::new(sdk, Arc::new(Metrics::new()), 10_000.0)
    }
}

/// Reads one request (headers, then `Content-Length` bytes of body) and writes the reply.
async fn answer_one(
    mut stream: TcpStream,
    slot: &Mutex<Reply>,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let reply = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let phrase = http::StatusCode::from_u16(reply.code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("Unknown");
    let mut response = format!(
        "HTTP/1.1 {} {phrase}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.code,
        reply.body.len()
    )
    .into_bytes();
    response.extend_from_slice(&reply.body);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn key() -> InvocationKey {
    InvocationKey {
        region: None,
        command_id: "11111111-2222-3333-4444-555555555555".into(),
        instance_id: "i-0123456789abcdef0".into(),
        plugin_name: None,
        role: None,
    }
}

// ---------------------------------------------------------------------------------------------
// One runtime, one server and one client for all property cases
// ---------------------------------------------------------------------------------------------

struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Server,
    ssm: Ssm,
    /// The server has one slot: cases from the different property tests take turns.
    serial: Mutex<()>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(Server::start());
        let ssm = runtime.block_on(server.ssm());
        Harness {
            runtime,
            server,
            ssm,
            serial: Mutex::new(()),
        }
    })
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic payload>".into())
}

/// Serves `reply` to one real SDK call; an operator panic is a case failure, not an abort.
fn ask(reply: &Reply) -> Result<Result<Invocation, SsmError>, TestCaseError> {
    let h = harness();
    let _turn = h.serial.lock().unwrap_or_else(PoisonError::into_inner);
    h.server.set(reply.clone());
    let before = h.server.requests();
    let answer = h
        .runtime
        .block_on(AssertUnwindSafe(h.ssm.invocation(&key())).catch_unwind())
        .map_err(|p| {
            TestCaseError::fail(format!(
                "Ssm::invocation panicked: {}",
                panic_text(p.as_ref())
            ))
        })?;
    // The SDK retries nothing; a throttled read is asked again through the budget.
    let expected = if matches!(answer, Err(SsmError::Throttled(_))) {
        THROTTLED_ATTEMPTS as usize
    } else {
        1
    };
    prop_assert_eq!(
        h.server.requests() - before,
        expected,
        "no SDK retries: one request per call, a throttled one asked again through the budget"
    );
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

/// The status the resource had before this poll.
#[derive(Clone, Copy, Debug)]
enum Previous {
    /// A new resource.
    Nothing,
    /// SSM said `InProgress` for this generation.
    Running,
    /// SSM said `Failed` for this generation.
    Failed,
    /// SSM said `InProgress` for an older generation.
    OlderGeneration,
}

/// Everything about a case besides the reply.
#[derive(Clone, Copy, Debug)]
struct Knobs {
    max_output_chars: usize,
    waited_secs: u64,
    previous: Previous,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        prop_oneof![0usize..80, 80usize..6000, Just(4000usize)],
        0u64..600,
        prop_oneof![
            Just(Previous::Nothing),
            Just(Previous::Running),
            Just(Previous::Failed),
            Just(Previous::OlderGeneration),
        ],
    )
        .prop_map(|(max_output_chars, waited_secs, previous)| Knobs {
            max_output_chars,
            waited_secs,
            previous,
        })
}

/// The operator's settings, with the given output bound.
fn settings(max_output_chars: usize) -> Settings {
    Settings {
        max_output_chars,
        not_found_grace: GRACE,
        recheck_interval: Duration::from_secs(600),
        progress_after: Duration::from_secs(10),
    }
}

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

const GENERATION: i64 = 3;

fn previous_status(previous: Previous, settings: &Settings) -> Option<CommandInvocationStatus> {
    let (status, details, code, generation) = match previous {
        Previous::Nothing => return None,
        Previous::Running => ("InProgress", "In Progress", -1, GENERATION),
        Previous::Failed => ("Failed", "Failed", 2, GENERATION),
        Previous::OlderGeneration => ("InProgress", "In Progress", -1, GENERATION - 1),
    };
    let answer = Ok(Invocation {
        status: status.into(),
        status_details: details.into(),
        response_code: code,
        document_name: "AWS-RunShellScript".into(),
        standard_output_content: "partial output\n".into(),
        ..Invocation::default()
    });
    let poll = Poll {
        answer: &answer,
        generation: Some(generation),
        now: at(1_000),
        waited: Duration::from_secs(1),
    };
    Some(mapping::apply(None, &poll, settings).status)
}

fn valid_reason(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphabetic()
        && (last.is_ascii_alphanumeric() || *last == b'_')
        && bytes
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':'))
}

/// What the contract promises about any status the operator writes.
fn check_status(
    status: &CommandInvocationStatus,
    settings: &Settings,
) -> Result<(), TestCaseError> {
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    prop_assert_eq!(types, [READY, RECONCILING, STALLED, FINISHED]);
    for c in &status.conditions {
        prop_assert!(
            c.status == "True" || c.status == "False",
            "{}: status {:?}",
            c.type_,
            c.status
        );
        prop_assert!(
            valid_reason(&c.reason),
            "{}: invalid reason {:?}",
            c.type_,
            c.reason
        );
        prop_assert!(
            c.reason.chars().count() <= MAX_REASON_CHARS,
            "{}: reason of {} chars (max {MAX_REASON_CHARS})",
            c.type_,
            c.reason.chars().count()
        );
        prop_assert!(
            c.message.len() <= MAX_MESSAGE_BYTES,
            "{}: message of {} bytes (max {MAX_MESSAGE_BYTES}), starting {:?}",
            c.type_,
            c.message.len(),
            c.message.chars().take(120).collect::<String>()
        );
    }
    let on: Vec<bool> = status
        .conditions
        .iter()
        .map(|c| c.status == "True")
        .collect();
    let (ready, reconciling, stalled, finished) = (on[0], on[1], on[2], on[3]);
    prop_assert!(
        !(reconciling && stalled),
        "Reconciling and Stalled both True"
    );
    prop_assert_eq!(
        finished,
        ready || stalled,
        "Finished must be Ready || Stalled"
    );

    let terminal = status
        .status
        .as_deref()
        .is_some_and(|s| TERMINAL_STATUSES.contains(&s));
    if !terminal {
        // -1 while SSM has not finished; absent only while SSM has told nothing at all.
        let ok = status.response_code == Some(-1)
            || (status.status.is_none() && status.response_code.is_none());
        prop_assert!(
            ok,
            "responseCode {:?} with SSM status {:?}",
            status.response_code,
            status
                .status
                .as_deref()
                .map(|s| s.chars().take(80).collect::<String>())
        );
    }

    let bound = settings.max_output_chars + CUT_MARKER.chars().count();
    for (name, content) in [
        ("standardOutputContent", &status.standard_output_content),
        ("standardErrorContent", &status.standard_error_content),
    ] {
        let chars = content.as_deref().map_or(0, |s| s.chars().count());
        prop_assert!(
            chars <= bound,
            "{name}: {chars} chars, bound {bound} (max_output_chars {})",
            settings.max_output_chars
        );
    }
    // The status must be writable as JSON (it is sent to the API server as is).
    prop_assert!(serde_json::to_vec(status).is_ok());
    Ok(())
}

/// Asks through the real client, then maps; returns the answer for strategy-specific checks.
fn property(reply: &Reply, knobs: Knobs) -> Result<Result<Invocation, SsmError>, TestCaseError> {
    let answer = ask(reply)?;
    if let Err(e) = &answer {
        prop_assert!(
            ERROR_REASONS.contains(&e.reason()),
            "unclassified error reason {:?} for {:?}",
            e.reason(),
            e
        );
    }

    let settings = settings(knobs.max_output_chars);
    let current = previous_status(knobs.previous, &settings);
    let poll = Poll {
        answer: &answer,
        generation: Some(GENERATION),
        now: at(2_000),
        waited: Duration::from_secs(knobs.waited_secs),
    };
    let mapped = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let first = mapping::apply(current.as_ref(), &poll, &settings);
        let again = mapping::apply(Some(&first.status), &poll, &settings);
        (first, again)
    }));
    let (first, again) = mapped.map_err(|p| {
        TestCaseError::fail(format!(
            "mapping::apply panicked: {}",
            panic_text(p.as_ref())
        ))
    })?;
    check_status(&first.status, &settings)?;
    if let Ok(invocation) = &answer {
        let expected = (!invocation.status.is_empty()).then(|| invocation.status.clone());
        prop_assert!(
            first.status.status == expected,
            "SSM's Status is copied verbatim"
        );
    }
    prop_assert!(
        !again.write && again.status == first.status,
        "the same answer twice writes nothing the second time"
    );
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn http_code() -> impl Strategy<Value = u16> {
    select(HTTP_CODES)
}

/// Tokens that make text look like JSON to a parser for a little while.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "2147483648",
    "\"Status\"",
    "\"Success\"",
    "\"ResponseCode\"",
    "\"__type\"",
    "\"message\"",
    "\\u0000",
    "\\ud800",
    "é",
    "😀",
    " ",
    "\n",
];

/// Anything at all as a body.
fn random_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        ".{0,512}".prop_map(String::into_bytes),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(select(JSON_TOKENS), 0..64).prop_map(|t| t.concat().into_bytes()),
        Just(Vec::new()),
        Just(b"{}".to_vec()),
        Just(b"null".to_vec()),
        Just(b"[]".to_vec()),
    ]
}

const KNOWN_STATUSES: &[&str] = &[
    "Pending",
    "InProgress",
    "Delayed",
    "Success",
    "Cancelled",
    "TimedOut",
    "Failed",
    "Cancelling",
];

const STATUS_DETAILS: &[&str] = &[
    "Pending",
    "In Progress",
    "Delayed",
    "Success",
    "Cancelled",
    "Execution Timed Out",
    "Delivery Timed Out",
    "Failed",
    "Cancelling",
    "Undeliverable",
    "Terminated",
    "",
];

/// The top-level string fields of `GetCommandInvocation`'s output.
const STRING_FIELDS: &[&str] = &[
    "CommandId",
    "InstanceId",
    "Comment",
    "DocumentName",
    "DocumentVersion",
    "PluginName",
    "ExecutionStartDateTime",
    "ExecutionElapsedTime",
    "ExecutionEndDateTime",
    "Status",
    "StatusDetails",
    "StandardOutputContent",
    "StandardOutputUrl",
    "StandardErrorContent",
    "StandardErrorUrl",
];

/// Every top-level field.
const FIELDS: &[&str] = &[
    "CommandId",
    "InstanceId",
    "Comment",
    "DocumentName",
    "DocumentVersion",
    "PluginName",
    "ResponseCode",
    "ExecutionStartDateTime",
    "ExecutionElapsedTime",
    "ExecutionEndDateTime",
    "Status",
    "StatusDetails",
    "StandardOutputContent",
    "StandardOutputUrl",
    "StandardErrorContent",
    "StandardErrorUrl",
    "CloudWatchOutputConfig",
];

/// A well-formed `GetCommandInvocation` output.
fn valid_invocation() -> impl Strategy<Value = Value> {
    (
        select(KNOWN_STATUSES),
        select(STATUS_DETAILS),
        -1i32..=255,
        "[ -~]{0,40}",
        ".{0,200}",
        ".{0,100}",
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(status, details, code, comment, stdout, stderr, cw_enabled, with_cw)| {
                let mut out = json!({
                    "CommandId": "11111111-2222-3333-4444-555555555555",
                    "InstanceId": "i-0123456789abcdef0",
                    "Comment": comment,
                    "DocumentName": "AWS-RunShellScript",
                    "DocumentVersion": "$DEFAULT",
                    "PluginName": "aws:runShellScript",
                    "ResponseCode": code,
                    "ExecutionStartDateTime": "2026-11-25T03:50:00.123Z",
                    "ExecutionElapsedTime": "PT1.5S",
                    "ExecutionEndDateTime": "2026-11-25T03:50:01.623Z",
                    "Status": status,
                    "StatusDetails": details,
                    "StandardOutputContent": stdout,
                    "StandardOutputUrl": "https://s3.eu-west-1.amazonaws.com/bucket/stdout",
                    "StandardErrorContent": stderr,
                    "StandardErrorUrl": "https://s3.eu-west-1.amazonaws.com/bucket/stderr",
                });
                if with_cw {
                    out["CloudWatchOutputConfig"] = json!({
                        "CloudWatchLogGroupName": "/aws/ssm/AWS-RunShellScript",
                        "CloudWatchOutputEnabled": cw_enabled,
                    });
                }
                out
            },
        )
}

/// A JSON value of any type, small (for "wrong type" mutations).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[A-Za-z]{0,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `ResponseCode` values the SDK's `i32` cannot hold, or only just can.
fn extreme_code() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(i64::from(i32::MAX))),
        Just(Value::from(i64::from(i32::MIN))),
        Just(Value::from(i64::from(i32::MAX) + 1)),
        Just(Value::from(i64::from(i32::MIN) - 1)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(u64::MAX)),
        Just(json!(2147483647.0)),
        Just(json!(-0.5)),
        Just(json!(1e300)),
        any::<i64>().prop_map(Value::from),
    ]
}

/// One way to damage a valid output.
#[derive(Clone, Debug)]
enum Mutation {
    /// Leave the field out.
    Drop(&'static str),
    /// Give the field a value of another JSON type.
    Retype(&'static str, Value),
    /// Make a string field `unit` repeated `times` (built when rendered, to keep Debug short).
    Huge {
        field: &'static str,
        unit: &'static str,
        times: usize,
    },
    /// A `Status` value this SDK and operator have never heard of.
    FutureStatus(String),
    /// An out-of-range or non-integer `ResponseCode`.
    Code(Value),
    /// A damaged `CloudWatchOutputConfig`.
    CloudWatch(Value),
    /// A field from a future API version.
    Unknown(String, Value),
}

const HUGE_UNITS: &[&str] = &["a", "é", "😀", "é😀x", "\"", "\\", "\u{0}", "\u{FFFD}"];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        select(FIELDS).prop_map(Mutation::Drop),
        (select(FIELDS), any_json()).prop_map(|(f, v)| Mutation::Retype(f, v)),
        (select(STRING_FIELDS), select(HUGE_UNITS), 0usize..=200_000).prop_map(
            |(field, unit, len)| Mutation::Huge {
                field,
                unit,
                times: len / unit.chars().count(),
            }
        ),
        prop_oneof!["[A-Za-z]{1,20}", ".{0,40}", Just(String::new())]
            .prop_map(Mutation::FutureStatus),
        extreme_code().prop_map(Mutation::Code),
        prop_oneof![
            any_json(),
            any_json().prop_map(|v| json!({"CloudWatchLogGroupName": v})),
            any_json().prop_map(|v| json!({"CloudWatchOutputEnabled": v})),
            any_json().prop_map(|v| json!({"CloudWatchLogGroupName": "/g", "Other": v})),
        ]
        .prop_map(Mutation::CloudWatch),
        ("[A-Za-z]{1,12}", any_json()).prop_map(|(k, v)| Mutation::Unknown(k, v)),
    ]
}

/// A valid output, damaged by some mutations, maybe cut short.
#[derive(Clone, Debug)]
struct Damaged {
    code: u16,
    base: Value,
    mutations: Vec<Mutation>,
    /// Keep only this fraction (in 1/1000) of the serialized bytes.
    truncate_permille: Option<u16>,
}

impl Damaged {
    fn reply(&self) -> Reply {
        let mut out = self.base.clone();
        let object = out.as_object_mut().unwrap();
        for m in &self.mutations {
            match m {
                Mutation::Drop(field) => {
                    object.remove(*field);
                }
                Mutation::Retype(field, value) => {
                    object.insert(field.to_string(), value.clone());
                }
                Mutation::Huge { field, unit, times } => {
                    object.insert(field.to_string(), Value::String(unit.repeat(*times)));
                }
                Mutation::FutureStatus(status) => {
                    object.insert("Status".into(), Value::String(status.clone()));
                }
                Mutation::Code(code) => {
                    object.insert("ResponseCode".into(), code.clone());
                }
                Mutation::CloudWatch(value) => {
                    object.insert("CloudWatchOutputConfig".into(), value.clone());
                }
                Mutation::Unknown(field, value) => {
                    object.insert(field.clone(), value.clone());
                }
            }
        }
        let mut body = serde_json::to_vec(&out).unwrap();
        if let Some(permille) = self.truncate_permille {
            body.truncate(body.len() * usize::from(permille) / 1000);
        }
        Reply {
            code: self.code,
            body,
        }
    }
}

fn damaged_invocation() -> impl Strategy<Value = Damaged> {
    (
        prop_oneof![8 => Just(200u16), 1 => http_code()],
        valid_invocation(),
        prop::collection::vec(mutation(), 0..5),
        prop::option::weighted(0.15, 0u16..1000),
    )
        .prop_map(|(code, base, mutations, truncate_permille)| Damaged {
            code,
            base,
            mutations,
            truncate_permille,
        })
}

/// Error codes SSM (or AWS's front door) sends, as `__type`.
const ERROR_TYPES: &[&str] = &[
    "ValidationException",
    "AccessDeniedException",
    "ThrottlingException",
    "InvocationDoesNotExist",
    "InvalidCommandId",
    "InvalidInstanceId",
    "InvalidPluginName",
    "InternalServerError",
    "com.amazonaws.ssm#InvalidCommandId",
    "com.amazonaws.ssm#InvocationDoesNotExist",
    "InvocationDoesNotExist:http://internal.amazon.com/coral/com.amazonaws.ssm/",
    "TooManyRequestsException",
    "UnrecognizedClientException",
    "ExpiredTokenException",
    "ServiceUnavailable",
    "",
];

/// An awsJson1.1 error body: `__type` (known, random, wrong type or missing) and a message.
#[derive(Clone, Debug)]
struct ErrorBody {
    code: u16,
    type_: Option<Value>,
    message_key: &'static str,
    message: Option<Value>,
    /// Repeat the message text this many times (a huge message, built when rendered).
    message_times: usize,
}

impl ErrorBody {
    fn reply(&self) -> Reply {
        let mut body = Map::new();
        if let Some(t) = &self.type_ {
            body.insert("__type".into(), t.clone());
        }
        if let Some(m) = &self.message {
            let m = match m {
                Value::String(s) if self.message_times > 1 => {
                    // At most ~200,000 characters in all.
                    let times = self.message_times.min(200_000 / s.chars().count().max(1));
                    Value::String(s.repeat(times))
                }
                other => other.clone(),
            };
            body.insert(self.message_key.into(), m);
        }
        Reply {
            code: self.code,
            body: serde_json::to_vec(&body).unwrap(),
        }
    }

    fn type_str(&self) -> Option<&str> {
        self.type_.as_ref().and_then(Value::as_str)
    }
}

fn error_body() -> impl Strategy<Value = ErrorBody> {
    (
        prop_oneof![4 => Just(400u16), 2 => Just(500u16), 1 => http_code()],
        prop_oneof![
            6 => select(ERROR_TYPES).prop_map(|t| Some(Value::String(t.into()))),
            2 => ".{0,40}".prop_map(|t| Some(Value::String(t))),
            1 => any_json().prop_map(Some),
            2 => Just(None),
        ],
        select(&["message", "Message", "errorMessage"][..]),
        prop_oneof![
            6 => ".{0,200}".prop_map(|m| Some(Value::String(m))),
            1 => Just(Some(Value::String("é😀".into()))),
            1 => any_json().prop_map(Some),
            1 => Just(None),
        ],
        prop_oneof![4 => Just(1usize), 1 => 1usize..60_000],
    )
        .prop_map(
            |(code, type_, message_key, message, message_times)| ErrorBody {
                code,
                type_,
                message_key,
                message,
                message_times,
            },
        )
}

/// Classifications that are certain today whatever the message says.
fn certain_reason(type_: &str) -> Option<&'static str> {
    let code = type_.rsplit('#').next()?.split(':').next()?;
    Some(match code {
        "InvocationDoesNotExist" => "InvocationNotFound",
        "InvalidCommandId" => "InvalidCommandId",
        "InvalidInstanceId" => "InvalidInstanceId",
        "InvalidPluginName" => "InvalidPluginName",
        "AccessDeniedException" => "AccessDenied",
        "ThrottlingException" | "TooManyRequestsException" => "Throttled",
        "InternalServerError" => "SsmUnavailable",
        _ => return None,
    })
}

/// Any of the three kinds of reply.
#[derive(Clone, Debug)]
enum AnyReply {
    Random(Reply),
    Damaged(Damaged),
    Error(ErrorBody),
}

impl AnyReply {
    fn reply(&self) -> Reply {
        match self {
            Self::Random(reply) => reply.clone(),
            Self::Damaged(damaged) => damaged.reply(),
            Self::Error(error) => error.reply(),
        }
    }
}

fn any_reply() -> impl Strategy<Value = AnyReply> {
    prop_oneof![
        (http_code(), random_body())
            .prop_map(|(code, body)| AnyReply::Random(Reply { code, body })),
        damaged_invocation().prop_map(AnyReply::Damaged),
        error_body().prop_map(AnyReply::Error),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // No regression files in the source tree; a failure prints its minimal input.
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bodies_never_panic(code in http_code(), body in random_body(), knobs in knobs()) {
        let _answer = property(&Reply { code, body }, knobs)?;
    }

    #[test]
    fn damaged_invocations_never_panic(damaged in damaged_invocation(), knobs in knobs()) {
        let _answer = property(&damaged.reply(), knobs)?;
    }

    #[test]
    fn condition_text_fits_kubernetes_limits(reply in any_reply(), knobs in knobs()) {
        let _answer = property(&reply.reply(), knobs)?;
    }

    #[test]
    fn error_bodies_are_classified(error in error_body(), knobs in knobs()) {
        let answer = property(&error.reply(), knobs)?;
        let message_is_text = matches!(error.message, None | Some(Value::String(_)));
        let expected = error.type_str().and_then(certain_reason);
        if let (Some(expected), true) = (expected, message_is_text && error.code >= 400) {
            let got = answer.as_ref().err().map(SsmError::reason);
            prop_assert_eq!(got, Some(expected), "__type {:?}", error.type_str());
        }
        // With 200 an error body is a (strange) output: parsed as one, or refused.
        if error.code != 200 {
            prop_assert!(answer.is_err(), "HTTP {} must not be a success", error.code);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact classifications that hold today
// ---------------------------------------------------------------------------------------------

async fn ask_once(code: u16, body: Value) -> Result<Invocation, SsmError> {
    let server = Server::start().await;
    let ssm = server.ssm().await;
    server.set(Reply {
        code,
        body: serde_json::to_vec(&body).unwrap(),
    });
    let answer = ssm.invocation(&key()).await;
    let expected = if matches!(answer, Err(SsmError::Throttled(_))) {
        THROTTLED_ATTEMPTS as usize
    } else {
        1
    };
    assert_eq!(
        server.requests(),
        expected,
        "no SDK retries; a throttled read is asked again through the budget"
    );
    answer
}

#[tokio::test]
async fn invocation_does_not_exist_is_invocation_not_found() {
    let answer = ask_once(
        400,
        json!({"__type": "InvocationDoesNotExist", "message": "no such invocation"}),
    )
    .await;
    let err = answer.unwrap_err();
    assert_eq!(err.reason(), "InvocationNotFound", "{err:?}");
    assert_eq!(err.message(), "no such invocation");
}

#[tokio::test]
async fn internal_server_error_is_ssm_unavailable() {
    let answer = ask_once(
        500,
        json!({"__type": "InternalServerError", "message": "boom"}),
    )
    .await;
    assert_eq!(answer.unwrap_err().reason(), "SsmUnavailable");
}

#[tokio::test]
async fn throttling_exception_is_throttled() {
    let answer = ask_once(
        400,
        json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
    )
    .await;
    assert_eq!(answer.unwrap_err().reason(), "Throttled");
}

#[tokio::test]
async fn success_is_ready() {
    let answer = ask_once(
        200,
        json!({
            "CommandId": "11111111-2222-3333-4444-555555555555",
            "InstanceId": "i-0123456789abcdef0",
            "DocumentName": "AWS-RunShellScript",
            "PluginName": "aws:runShellScript",
            "Status": "Success",
            "StatusDetails": "Success",
            "ResponseCode": 0,
            "StandardOutputContent": "hello\n",
        }),
    )
    .await;
    let invocation = answer
        .as_ref()
        .expect("a 200 with a valid body is an answer");
    assert_eq!(invocation.status, "Success");
    let settings = settings(4000);
    let poll = Poll {
        answer: &answer,
        generation: Some(1),
        now: at(10),
        waited: Duration::from_secs(10),
    };
    let out = mapping::apply(None, &poll, &settings);
    let ready = out.status.conditions.iter().find(|c| c.type_ == READY);
    let ready = ready.expect("a Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Success")
    );
    assert_eq!(out.status.response_code, Some(0));
    assert_eq!(
        out.status.standard_output_content.as_deref(),
        Some("hello\n")
    );
    check_status(&out.status, &settings).unwrap();
}
