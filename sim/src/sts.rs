//! AWS identities for tests of cross-account access: [`StsSimulator`], a minimal STS that
//! answers `AssumeRole` (and refuses the roles a test has not allowed, or fails as an injected
//! [`Fault`] says), and the record of which access key signed each request the SSM simulator
//! received ([`crate::Simulator::signers`]). An SSM simulator told about an STS
//! ([`crate::Simulator::trust_sts`]) refuses requests signed with one of its keys once that key
//! has expired, as AWS does.
//!
//! moto's STS grants every role it is asked for and always issues credentials valid for an
//! hour, so with it a test can neither see a refused role nor make credentials expire during a
//! scenario; this STS can do both.
//!
//! ```no_run
//! use std::time::Duration;
//! use ssm_sim::StsSimulator;
//!
//! # async fn demo() -> std::io::Result<()> {
//! let sts = StsSimulator::start().await?;
//! sts.allow_role("arn:aws:iam::111122223333:role/ssm-reader", Some("team-a-secret"));
//! sts.set_lifetime(Duration::from_secs(15));
//! println!("AWS_ENDPOINT_URL_STS={}", sts.endpoint());
//! // ... run the code under test ...
//! for (role_arn, session_name, external_id, access_key_id) in sts.assumed() {
//!     println!("{session_name} assumed {role_arn} ({external_id:?}) as {access_key_id}");
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::{Method, Request, StatusCode};

use crate::clock::iso_instant;
use crate::error::ApiError;
use crate::faults::{Fault, FaultQueue, Hit};
use crate::ids::uuid_v4;
use crate::serving::{read_body, reply, DropConnection, Reply, Server, LOOPBACK};

/// The XML namespace of STS's answers.
const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// Credentials' lifetime unless [`StsSimulator::set_lifetime`] or `DurationSeconds` says.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// `DurationSeconds` STS accepts (the upper end depends on the role's maximum session).
const DURATION_SECONDS: std::ops::RangeInclusive<u64> = 900..=43_200;
/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;

/// One granted `AssumeRole`: (role ARN, role session name, external id, access key id issued).
pub type Assumed = (String, String, Option<String>, String);
/// One refused `AssumeRole`: (role ARN, role session name, external id).
pub type Refused = (String, String, Option<String>);

/// A running minimal AWS STS on loopback: `AssumeRole` over the Query protocol (`POST /`,
/// `application/x-www-form-urlencoded`), answered in STS's XML.
///
/// Only allowed roles are granted ([`StsSimulator::allow_role`]); any other, or a wrong or
/// missing external id, answers HTTP 403 `AccessDenied`. Every grant issues a new access key
/// id, `ASIA<role tag><counter>` (the tag is the role name's letters and digits, upper case,
/// at most 8), so tests can tell the grants apart. Signatures are not checked. Injected faults
/// ([`StsSimulator::inject`]) make it fail the way an overloaded or unreachable STS does.
///
/// Cheap to clone (an `Arc` inside). Serving stops when the last handle is dropped or when
/// [`StsSimulator::shutdown`] is called on any handle.
#[derive(Clone)]
pub struct StsSimulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    /// Stops when dropped, with the last handle.
    server: Server,
}

impl fmt::Debug for StsSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner
            .server
            .debug_struct(f, "StsSimulator")
            .finish_non_exhaustive()
    }
}

impl StsSimulator {
    /// Starts serving on `127.0.0.1` at a free port.
    pub async fn start() -> std::io::Result<StsSimulator> {
        StsSimulator::start_on(LOOPBACK).await
    }

    /// Starts serving on `addr` (port 0 picks a free one). Must run inside a Tokio runtime,
    /// which then carries the server tasks.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<StsSimulator> {
        let state = Arc::new(State::default());
        let serving = state.clone();
        let server = Server::start(addr, move |req, _| respond(serving.clone(), req)).await?;
        Ok(StsSimulator {
            inner: Arc::new(Inner { state, server }),
        })
    }

    /// The base URL to give the SDK, e.g. as `AWS_ENDPOINT_URL_STS`.
    pub fn endpoint(&self) -> String {
        self.inner.server.endpoint()
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.server.local_addr()
    }

    /// Lets `role_arn` be assumed; with `Some(external_id)`, only by callers giving exactly
    /// that `ExternalId`, with `None` by any caller (an `ExternalId` given is then ignored, as
    /// STS does for a trust policy without the condition). Allowing a role again replaces its
    /// external id.
    pub fn allow_role(&self, role_arn: impl Into<String>, external_id: Option<&str>) {
        self.inner
            .state
            .roles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(role_arn.into(), external_id.map(str::to_string));
    }

    /// Refuses `role_arn` from now on (credentials already issued stay valid).
    pub fn revoke_role(&self, role_arn: &str) {
        self.inner
            .state
            .roles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(role_arn);
    }

    /// Credentials issued from now on expire `lifetime` after they are issued, whatever
    /// `DurationSeconds` asks (default: `DurationSeconds`, else one hour). The `Expiration`
    /// is given in whole seconds, as STS does, so it may be up to a second shorter.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self
            .inner
            .state
            .lifetime
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(lifetime);
    }

    /// Queues a fault; queued faults hit the next requests in order, whatever they ask:
    /// [`Fault::ServerError`] answers HTTP 500 `InternalFailure`, [`Fault::Throttle`] HTTP 400
    /// `Throttling` "Rate exceeded", [`Fault::DropConnection`] closes the connection without an
    /// answer, [`Fault::Slow`] answers normally after its delay. A faulted request grants and
    /// refuses nothing; it counts in [`StsSimulator::calls`].
    pub fn inject(&self, fault: Fault) {
        self.inner
            .state
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.inner
            .state
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The keys this STS issued, with their expiry, for an SSM simulator to check.
    pub(crate) fn issued_keys(&self) -> Arc<IssuedKeys> {
        self.inner.state.keys.clone()
    }

    /// Every granted `AssumeRole`, oldest first: (role ARN, role session name, external id,
    /// access key id issued).
    pub fn assumed(&self) -> Vec<Assumed> {
        self.inner
            .state
            .assumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every `AssumeRole` answered `AccessDenied`, oldest first: (role ARN, role session
    /// name, external id).
    pub fn refused(&self) -> Vec<Refused> {
        self.inner
            .state
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests received in all, whatever their answer.
    pub fn calls(&self) -> u64 {
        self.inner.state.requests.load(Ordering::Relaxed)
    }

    /// Stops serving (for every handle), lets in-flight requests finish for up to two
    /// seconds, and returns once the port is released.
    pub async fn shutdown(self) {
        self.inner.server.shutdown().await;
    }
}

/// What the STS server knows: the allowed roles, the lifetime and what it granted.
#[derive(Debug, Default)]
struct State {
    /// Allowed role ARN → the external id it requires, if any.
    roles: Mutex<HashMap<String, Option<String>>>,
    /// Set by [`StsSimulator::set_lifetime`].
    lifetime: Mutex<Option<Duration>>,
    /// Credentials issued so far (the counter in access key ids).
    issued: AtomicU64,
    /// Requests received.
    requests: AtomicU64,
    assumed: Mutex<Vec<Assumed>>,
    refused: Mutex<Vec<Refused>>,
    /// Faults waiting for the next requests.
    faults: Mutex<FaultQueue>,
    /// Every key issued, with its expiry (shared with the SSM simulators that trust this STS).
    keys: Arc<IssuedKeys>,
}

/// The access keys an STS issued and when each expires (the `Expiration` it gave, in whole
/// seconds).
#[derive(Debug, Default)]
pub(crate) struct IssuedKeys {
    expiry: Mutex<HashMap<String, SystemTime>>,
}

impl IssuedKeys {
    fn insert(&self, access_key_id: &str, expires: SystemTime) {
        self.expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(access_key_id.to_string(), expires);
    }

    /// Whether `access_key_id` is one of these keys and has expired at `now`.
    fn expired(&self, access_key_id: &str, now: SystemTime) -> bool {
        self.expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(access_key_id)
            .is_some_and(|expires| now >= *expires)
    }
}

/// An error STS answers with: `<ErrorResponse>` with this HTTP status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StsError {
    status: u16,
    code: &'static str,
    message: String,
}

impl StsError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        StsError {
            status,
            code,
            message: message.into(),
        }
    }

    /// `ValidationError` for a member STS requires.
    fn missing(member: &str) -> Self {
        StsError::new(
            400,
            "ValidationError",
            format!(
                "1 validation error detected: Value null at '{member}' failed to satisfy \
                 constraint: Member must not be null"
            ),
        )
    }

    fn body(&self, request_id: &str) -> String {
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{}</Type><Code>{}</Code>\
             <Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            if self.status >= 500 {
                "Receiver"
            } else {
                "Sender"
            },
            self.code,
            xml_escape(&self.message),
        )
    }
}

impl State {
    /// Answers one request's parameters (query string and form body): the XML body of a
    /// success, or the error. `caller` is the access key id that signed the request.
    fn handle(
        &self,
        params: &[(String, String)],
        caller: Option<&str>,
        now: SystemTime,
        request_id: &str,
    ) -> Result<String, StsError> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        match param("Action") {
            Some("AssumeRole") => {}
            Some(other) => {
                return Err(StsError::new(
                    400,
                    "InvalidAction",
                    format!("Could not find operation {other} for version 2011-06-15"),
                ))
            }
            None => {
                return Err(StsError::new(
                    400,
                    "MissingAction",
                    "Missing Action parameter",
                ))
            }
        }
        let role_arn = param("RoleArn").ok_or_else(|| StsError::missing("roleArn"))?;
        let session =
            param("RoleSessionName").ok_or_else(|| StsError::missing("roleSessionName"))?;
        if !(2..=64).contains(&session.len())
            || !session
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        {
            return Err(StsError::new(
                400,
                "ValidationError",
                format!(
                    "1 validation error detected: Value '{session}' at 'roleSessionName' failed \
                     to satisfy constraint: Member must have length between 2 and 64 and \
                     satisfy regular expression pattern: [\\w+=,.@-]*"
                ),
            ));
        }
        let duration = match param("DurationSeconds") {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(secs) if DURATION_SECONDS.contains(&secs) => Some(Duration::from_secs(secs)),
                _ => {
                    return Err(StsError::new(
                        400,
                        "ValidationError",
                        format!(
                            "1 validation error detected: Value '{text}' at 'durationSeconds' \
                             failed to satisfy constraint: Member must have value between 900 \
                             and 43200"
                        ),
                    ))
                }
            },
        };
        let external_id = param("ExternalId").map(str::to_string);

        let allowed = match self
            .roles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(role_arn)
        {
            None => false,
            Some(None) => true,
            Some(Some(required)) => external_id.as_deref() == Some(required.as_str()),
        };
        if !allowed {
            self.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((role_arn.to_string(), session.to_string(), external_id));
            // STS says the same whether the role is unknown, untrusting or the external id
            // is wrong.
            let user = format!(
                "arn:aws:iam::000000000000:user/{}",
                caller.unwrap_or("anonymous")
            );
            return Err(StsError::new(
                403,
                "AccessDenied",
                format!(
                    "User: {user} is not authorized to perform: sts:AssumeRole on resource: \
                     {role_arn}"
                ),
            ));
        }

        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let role_name = role_arn.rsplit(['/', ':']).next().unwrap_or_default();
        let account = role_arn.split(':').nth(4).unwrap_or_default();
        let tag = role_tag(role_name);
        let access_key_id = format!("ASIA{tag}{n:06}");
        let secret = format!("stssim{n}{}", uuid_v4().replace('-', ""));
        let token = format!("FwoGZXIvYXdzEsim{n}{}", uuid_v4().replace('-', ""));
        let lifetime = self
            .lifetime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .or(duration)
            .unwrap_or(DEFAULT_LIFETIME);
        let expires = whole_seconds(now + lifetime);
        let expiration = iso_seconds(expires);
        self.keys.insert(&access_key_id, expires);
        self.assumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((
                role_arn.to_string(),
                session.to_string(),
                external_id,
                access_key_id.clone(),
            ));
        Ok(format!(
            "<AssumeRoleResponse xmlns=\"{XMLNS}\"><AssumeRoleResult>\
             <Credentials><AccessKeyId>{access_key_id}</AccessKeyId>\
             <SecretAccessKey>{secret}</SecretAccessKey>\
             <SessionToken>{token}</SessionToken>\
             <Expiration>{expiration}</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>AROA{tag}:{session}</AssumedRoleId>\
             <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn>\
             </AssumedRoleUser></AssumeRoleResult>\
             <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\
             </AssumeRoleResponse>",
            account = xml_escape(account),
            role_name = xml_escape(role_name),
        ))
    }
}

/// The role name's ASCII letters and digits, upper case, at most 8 (`ROLE` if none).
fn role_tag(role_name: &str) -> String {
    let tag: String = role_name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .take(8)
        .collect();
    if tag.is_empty() {
        "ROLE".to_string()
    } else {
        tag
    }
}

/// `t` without its fraction of a second (STS gives `Expiration` in whole seconds).
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An ISO-8601 UTC instant in whole seconds, as STS writes `Expiration`:
/// `2026-11-30T10:00:00Z`.
fn iso_seconds(t: SystemTime) -> String {
    let text = iso_instant(t);
    format!("{}Z", &text[..19])
}

/// Escapes text for an XML element's content.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `application/x-www-form-urlencoded` (or a query string) into (name, value) pairs.
fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Decodes `+` and `%XX`; a malformed escape is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 1 < bytes.len() => {
                match (hex(bytes[i + 1]), bytes.get(i + 2).copied().and_then(hex)) {
                    (Some(high), Some(low)) => {
                        out.push(high * 16 + low);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The access key id a SigV4 (or SigV4a) `Authorization` header names:
/// `AWS4-HMAC-SHA256 Credential=<AKID>/<date>/<region>/<service>/aws4_request, ...`.
pub(crate) fn access_key_id(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (_, credential) = auth.split_once("Credential=")?;
    let akid = credential.split(['/', ',', ' ']).next()?.trim();
    (!akid.is_empty()).then_some(akid)
}

/// Which access key signed the SSM simulator's requests, per operation, in first-seen order
/// (unsigned requests are not recorded), and the refusal of keys that expired: keys issued by
/// an STS the SSM simulator trusts ([`Signers::trust`]) are refused from their expiry on.
#[derive(Debug, Default)]
pub(crate) struct Signers {
    log: Mutex<SignerLog>,
    /// The keys of the STS simulators trusted.
    trusted: Mutex<Vec<Arc<IssuedKeys>>>,
    /// Requests refused because their key had expired.
    expired: AtomicU64,
}

/// What AWS says about a request signed with expired temporary credentials.
const EXPIRED_TOKEN_MESSAGE: &str = "The security token included in the request is expired";

#[derive(Debug, Default)]
struct SignerLog {
    /// Access key ids, first seen first.
    order: Vec<String>,
    /// Access key id → operation → requests.
    calls: HashMap<String, HashMap<String, u64>>,
}

impl Signers {
    /// Records a request for `operation` signed as `headers` say.
    pub(crate) fn record(&self, headers: &HeaderMap, operation: &str) {
        let Some(akid) = access_key_id(headers) else {
            return;
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let log = &mut *log;
        let by_operation = match log.calls.get_mut(akid) {
            Some(by_operation) => by_operation,
            None => {
                log.order.push(akid.to_string());
                log.calls.entry(akid.to_string()).or_default()
            }
        };
        match by_operation.get_mut(operation) {
            Some(n) => *n += 1,
            None => {
                by_operation.insert(operation.to_string(), 1);
            }
        }
    }

    /// From now on, refuses requests signed with one of `keys` once it has expired.
    pub(crate) fn trust(&self, keys: Arc<IssuedKeys>) {
        let mut trusted = self.trusted.lock().unwrap_or_else(PoisonError::into_inner);
        if !trusted.iter().any(|k| Arc::ptr_eq(k, &keys)) {
            trusted.push(keys);
        }
    }

    /// Whether a request signed as `headers` say may be served at `now`: not when its key was
    /// issued by a trusted STS and has expired. Then answers as AWS does, HTTP 400
    /// `ExpiredTokenException`, and counts it.
    pub(crate) fn check(&self, headers: &HeaderMap, now: SystemTime) -> Result<(), ApiError> {
        let Some(akid) = access_key_id(headers) else {
            return Ok(());
        };
        let expired = self
            .trusted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|keys| keys.expired(akid, now));
        if expired {
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                "ExpiredTokenException",
                EXPIRED_TOKEN_MESSAGE,
            ));
        }
        Ok(())
    }

    /// Requests refused because their key had expired.
    pub(crate) fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// The distinct access key ids seen, first seen first.
    pub(crate) fn signers(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .order
            .clone()
    }

    /// Requests signed by `akid`, for `operation` or (`None`) any.
    pub(crate) fn calls(&self, akid: &str, operation: Option<&str>) -> usize {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(by_operation) = log.calls.get(akid) else {
            return 0;
        };
        let n: u64 = match operation {
            Some(operation) => by_operation.get(operation).copied().unwrap_or(0),
            None => by_operation.values().sum(),
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

/// Answers one STS request, after the next injected fault if any; `Err` drops the connection
/// without an answer.
async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<Reply, DropConnection> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = uuid_v4();
    let hit = state
        .faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .next_hit();
    let result = match hit {
        Some(Hit::DropConnection) => return Err(DropConnection),
        Some(Hit::ServerError) => Err(StsError::new(
            500,
            "InternalFailure",
            "An internal error occurred (injected by ssm-sim)",
        )),
        Some(Hit::Throttle) => Err(StsError::new(400, "Throttling", "Rate exceeded")),
        Some(Hit::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            answer(&state, req, &request_id).await
        }
        None => answer(&state, req, &request_id).await,
    };
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.body(&request_id),
        ),
    };
    Ok(reply(status, "text/xml", &request_id, body))
}

/// The answer to one request's parameters (query string and form body).
async fn answer(
    state: &State,
    req: Request<Incoming>,
    request_id: &str,
) -> Result<String, StsError> {
    let caller = access_key_id(req.headers()).map(str::to_string);
    let mut params = parse_form(req.uri().query().unwrap_or_default());
    let post = req.method() == Method::POST;
    match read_body(req, BODY_LIMIT).await {
        Err(message) => Err(StsError::new(400, "MalformedInput", message)),
        Ok(body) => {
            if post {
                params.extend(parse_form(&String::from_utf8_lossy(&body)));
            }
            state.handle(&params, caller.as_deref(), SystemTime::now(), request_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use std::time::UNIX_EPOCH;

    const ROLE: &str = "arn:aws:iam::111122223333:role/ssm-reader";

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn assume(state: &State, extra: &[(&str, &str)]) -> Result<String, StsError> {
        let mut p = params(&[
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", ROLE),
            ("RoleSessionName", "ssm-operator-team-a"),
        ]);
        p.extend(params(extra));
        state.handle(&p, Some("AKIDCALLER"), UNIX_EPOCH, "req-1")
    }

    #[test]
    fn forms_are_decoded() {
        assert_eq!(
            parse_form("Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&A=b+c&&E"),
            params(&[
                ("Action", "AssumeRole"),
                ("RoleArn", "arn:aws:iam::1:role/x"),
                ("A", "b c"),
                ("E", ""),
            ])
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn the_signing_access_key_is_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(access_key_id(&headers), None);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=ASIAREADER000001/20261130/eu-west-1/ssm/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc",
            ),
        );
        assert_eq!(access_key_id(&headers), Some("ASIAREADER000001"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(access_key_id(&headers), None);
    }

    #[test]
    fn signers_are_counted_per_operation_in_first_seen_order() {
        let signers = Signers::default();
        let signed = |akid: &str| {
            let mut headers = HeaderMap::new();
            let value = format!("AWS4-HMAC-SHA256 Credential={akid}/20261130/eu-west-1/ssm/aws4_request, SignedHeaders=host, Signature=0");
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            headers
        };
        signers.record(&signed("B"), "GetCommandInvocation");
        signers.record(&signed("A"), "ListCommandInvocations");
        signers.record(&signed("B"), "ListCommandInvocations");
        signers.record(&signed("B"), "GetCommandInvocation");
        signers.record(&HeaderMap::new(), "GetCommandInvocation");
        assert_eq!(signers.signers(), ["B", "A"]);
        assert_eq!(signers.calls("B", None), 3);
        assert_eq!(signers.calls("B", Some("GetCommandInvocation")), 2);
        assert_eq!(signers.calls("A", Some("GetCommandInvocation")), 0);
        assert_eq!(signers.calls("C", None), 0);
    }

    #[test]
    fn an_allowed_role_gets_new_keys_each_time() {
        let state = State::default();
        state.allow_role_for_test(ROLE, None);
        let first = assume(&state, &[]).unwrap();
        assert!(first.starts_with(&format!("<AssumeRoleResponse xmlns=\"{XMLNS}\">")));
        assert!(
            first.contains("<AccessKeyId>ASIASSMREADE000001</AccessKeyId>"),
            "{first}"
        );
        assert!(
            first.contains("<Expiration>1970-01-01T01:00:00Z</Expiration>"),
            "{first}"
        );
        assert!(first.contains(
            "<Arn>arn:aws:sts::111122223333:assumed-role/ssm-reader/ssm-operator-team-a</Arn>"
        ));
        assert!(first.contains("<RequestId>req-1</RequestId>"));
        let second = assume(&state, &[("ExternalId", "ignored")]).unwrap();
        assert!(second.contains("<AccessKeyId>ASIASSMREADE000002</AccessKeyId>"));
        assert_eq!(state.assumed.lock().unwrap().len(), 2);
        assert_eq!(
            state.assumed.lock().unwrap()[1],
            (
                ROLE.to_string(),
                "ssm-operator-team-a".to_string(),
                Some("ignored".to_string()),
                "ASIASSMREADE000002".to_string()
            )
        );
    }

    #[test]
    fn the_lifetime_is_the_set_one_else_duration_seconds_else_an_hour() {
        let state = State::default();
        state.allow_role_for_test(ROLE, None);
        let body = assume(&state, &[("DurationSeconds", "900")]).unwrap();
        assert!(
            body.contains("<Expiration>1970-01-01T00:15:00Z</Expiration>"),
            "{body}"
        );
        *state.lifetime.lock().unwrap() = Some(Duration::from_millis(15_900));
        let body = assume(&state, &[("DurationSeconds", "900")]).unwrap();
        assert!(
            body.contains("<Expiration>1970-01-01T00:00:15Z</Expiration>"),
            "{body}"
        );
        let err = assume(&state, &[("DurationSeconds", "60")]).unwrap_err();
        assert_eq!((err.status, err.code), (400, "ValidationError"));
    }

    #[test]
    fn other_roles_and_wrong_external_ids_are_denied() {
        let state = State::default();
        let err = assume(&state, &[]).unwrap_err();
        assert_eq!((err.status, err.code), (403, "AccessDenied"));
        assert!(
            err.message.contains("not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::111122223333:role/ssm-reader"),
            "{}",
            err.message
        );
        assert!(err.message.contains("user/AKIDCALLER"), "{}", err.message);
        state.allow_role_for_test(ROLE, Some("secret"));
        assert_eq!(assume(&state, &[]).unwrap_err().code, "AccessDenied");
        assert_eq!(
            assume(&state, &[("ExternalId", "other")]).unwrap_err().code,
            "AccessDenied"
        );
        assert!(assume(&state, &[("ExternalId", "secret")]).is_ok());
        assert_eq!(state.refused.lock().unwrap().len(), 3);
        assert_eq!(
            state.refused.lock().unwrap()[2],
            (
                ROLE.to_string(),
                "ssm-operator-team-a".to_string(),
                Some("other".to_string())
            )
        );
        let body = err.body("req-2");
        assert!(body.starts_with("<ErrorResponse"), "{body}");
        assert!(body.contains("<Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: "));
        assert!(body.ends_with("<RequestId>req-2</RequestId></ErrorResponse>"));
    }

    #[test]
    fn a_trusted_sts_key_is_refused_from_its_expiry_on() {
        let state = State::default();
        state.allow_role_for_test(ROLE, None);
        // Issued at 10.9 s for 15 s: STS says it expires at 25 s (whole seconds), so it does.
        *state.lifetime.lock().unwrap() = Some(Duration::from_secs(15));
        let issued_at = UNIX_EPOCH + Duration::from_millis(10_900);
        let p = params(&[
            ("Action", "AssumeRole"),
            ("RoleArn", ROLE),
            ("RoleSessionName", "ssm-operator-team-a"),
        ]);
        let body = state.handle(&p, None, issued_at, "r").unwrap();
        assert!(body.contains("<Expiration>1970-01-01T00:00:25Z</Expiration>"));
        let signed = |akid: &str| {
            let mut headers = HeaderMap::new();
            let value = format!(
                "AWS4-HMAC-SHA256 Credential={akid}/19700101/eu-west-1/ssm/aws4_request, \
                 SignedHeaders=host, Signature=0"
            );
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            headers
        };
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let key = "ASIASSMREADE000001";

        // Not trusted: never checked.
        let signers = Signers::default();
        assert!(signers.check(&signed(key), at(99_000)).is_ok());

        signers.trust(state.keys.clone());
        signers.trust(state.keys.clone());
        assert_eq!(signers.trusted.lock().unwrap().len(), 1, "trusted once");
        assert!(signers.check(&signed(key), at(24_999)).is_ok());
        let err = signers.check(&signed(key), at(25_000)).unwrap_err();
        assert_eq!(
            (err.http_status, err.code.as_str(), err.message.as_str()),
            (
                400,
                "ExpiredTokenException",
                "The security token included in the request is expired"
            )
        );
        assert!(signers.check(&signed(key), at(40_000)).is_err());
        // Keys this STS did not issue, and unsigned requests, pass.
        assert!(signers.check(&signed("test"), at(40_000)).is_ok());
        assert!(signers.check(&HeaderMap::new(), at(40_000)).is_ok());
        assert_eq!(signers.expired(), 2);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let state = State::default();
        let handle = |pairs: &[(&str, &str)]| {
            state
                .handle(&params(pairs), None, UNIX_EPOCH, "r")
                .unwrap_err()
                .code
        };
        assert_eq!(handle(&[]), "MissingAction");
        assert_eq!(handle(&[("Action", "GetCallerIdentity")]), "InvalidAction");
        assert_eq!(handle(&[("Action", "AssumeRole")]), "ValidationError");
        assert_eq!(
            handle(&[("Action", "AssumeRole"), ("RoleArn", ROLE)]),
            "ValidationError"
        );
        assert_eq!(
            handle(&[
                ("Action", "AssumeRole"),
                ("RoleArn", ROLE),
                ("RoleSessionName", "has space")
            ]),
            "ValidationError"
        );
    }

    #[test]
    fn text_is_escaped_and_tags_are_short() {
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(role_tag("ssm-reader"), "SSMREADE");
        assert_eq!(role_tag("--"), "ROLE");
        assert_eq!(
            iso_seconds(UNIX_EPOCH + Duration::from_millis(1_795_578_600_123)),
            "2026-11-25T03:50:00Z"
        );
    }

    /// An `AssumeRoleProvider` asking `sts` for `ROLE` with static source keys and no retries.
    async fn provider(sts: &StsSimulator) -> aws_config::sts::AssumeRoleProvider {
        use aws_sdk_ssm::config::retry::RetryConfig;
        use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIDSOURCE", "s", None, None, "test"))
            .endpoint_url(sts.endpoint())
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        aws_config::sts::AssumeRoleProvider::builder(ROLE)
            .session_name("ssm-operator-team-a")
            .configure(&base)
            .build()
            .await
    }

    #[tokio::test]
    async fn injected_faults_fail_assume_role_as_an_unwell_sts_would() {
        use aws_sdk_ssm::config::ProvideCredentials;
        use aws_sdk_ssm::error::DisplayErrorContext;
        let sts = StsSimulator::start().await.unwrap();
        sts.allow_role(ROLE, None);
        sts.inject(Fault::ServerError { count: 1 });
        sts.inject(Fault::Throttle { count: 1 });
        sts.inject(Fault::DropConnection { count: 1 });
        sts.inject(Fault::Throttle { count: 0 });
        let roles = provider(&sts).await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let err = roles.provide_credentials().await.unwrap_err();
            seen.push(DisplayErrorContext(&err).to_string());
        }
        assert!(seen[0].contains("InternalFailure"), "{}", seen[0]);
        assert!(seen[1].contains("Throttling"), "{}", seen[1]);
        assert!(seen[1].contains("Rate exceeded"), "{}", seen[1]);
        assert!(seen[2].contains("dispatch failure"), "{}", seen[2]);
        assert!(sts.assumed().is_empty() && sts.refused().is_empty());
        // The faults are spent: granted again.
        assert!(roles.provide_credentials().await.is_ok());
        sts.inject(Fault::ServerError { count: 5 });
        sts.clear_faults();
        assert!(roles.provide_credentials().await.is_ok());
        assert_eq!(sts.assumed().len(), 2);
        assert_eq!(sts.calls(), 5);
    }

    #[tokio::test]
    async fn an_ssm_simulator_trusting_the_sts_refuses_its_expired_keys() {
        use aws_sdk_ssm::config::{BehaviorVersion, Credentials, ProvideCredentials, Region};
        use aws_sdk_ssm::error::ProvideErrorMetadata;
        let sts = StsSimulator::start().await.unwrap();
        let sim = crate::Simulator::start().await.unwrap();
        sim.trust_sts(&sts);
        sts.allow_role(ROLE, None);
        sts.set_lifetime(Duration::from_secs(2));
        let creds = provider(&sts).await.provide_credentials().await.unwrap();
        let expiry = creds.expiry().unwrap();
        // The same keys without an expiry, so that the SDK signs with them whatever the time.
        let keys = Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            creds.session_token().map(str::to_string),
            None,
            "test",
        );
        let config = aws_sdk_ssm::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(keys)
            .endpoint_url(sim.endpoint())
            .build();
        let ssm = aws_sdk_ssm::Client::from_conf(config);
        ssm.list_commands().send().await.expect("before its expiry");
        // Waiting for the wall clock to pass the expiry is what this test is about.
        let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(left + Duration::from_millis(50)).await;
        let err = ssm.list_commands().send().await.unwrap_err();
        let err = err.into_service_error();
        assert_eq!(err.code(), Some("ExpiredTokenException"));
        assert_eq!(
            err.message(),
            Some("The security token included in the request is expired")
        );
        assert_eq!(sim.expired_token_refusals(), 1);
        assert_eq!(sim.calls_signed_by(creds.access_key_id()), 2);
        assert_eq!(sim.calls("ListCommands"), 2);
    }

    impl State {
        fn allow_role_for_test(&self, arn: &str, external_id: Option<&str>) {
            self.roles
                .lock()
                .unwrap()
                .insert(arn.to_string(), external_id.map(str::to_string));
        }
    }
}
