//! The only code that talks to AWS SSM: one client per region, built once and reused, the
//! `ListCommandInvocations` (one page of a command, or one node's listing) and
//! `GetCommandInvocation` calls, the process-wide
//! [`Budget`] every call waits for, and the classification of errors.
//!
//! Callers never see SDK types: a page is a list of [`Listed`] nodes, an answer an
//! [`Invocation`] or an [`SsmError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::error::{
    ConnectorError, DisplayErrorContext, ErrorMetadata, ProvideErrorMetadata, SdkError,
};
use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput;
use aws_sdk_ssm::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ssm::types::{CommandInvocation as SdkInvocation, CommandPlugin};
use aws_sdk_ssm::Client;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority, RetryReason,
};
use aws_smithy_runtime_api::client::retries::ErrorKind;

mod commands;
pub use commands::{CommandSummary, Scope};

use crate::aws::budget::{Budget, Lane};
use crate::aws::sts::Role;
use crate::runtime::metrics::Metrics;

/// SSM statuses after which SSM changes nothing more.
pub const TERMINAL_STATUSES: &[&str] = &["Success", "Failed", "TimedOut", "Cancelled"];

/// Whether SSM changes nothing more after `status`.
pub fn is_terminal(status: &str) -> bool {
    TERMINAL_STATUSES.contains(&status)
}

/// Page size of `ListCommandInvocations` (SSM's maximum).
pub const PAGE_SIZE: i32 = 50;

/// One SSM call, retries included, may take this many attempt timeouts.
const OPERATION_ATTEMPTS: u32 = 3;

/// Names one invocation (one step of one command on one node) in one region.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InvocationKey {
    /// The region to ask; `None` means the operator's own region.
    pub region: Option<String>,
    /// SSM command id.
    pub command_id: String,
    /// Managed node id.
    pub instance_id: String,
    /// Step (plugin) name, when the resource names one.
    pub plugin_name: Option<String>,
    /// The role to ask with (`--namespace-roles`); `None`: the operator's own identity.
    pub role: Option<Role>,
}

/// What SSM reported for one invocation, in SSM's terms (strings verbatim; empty means unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `Status`, including values newer than this SDK (kept as the raw string).
    pub status: String,
    /// `StatusDetails`.
    pub status_details: String,
    /// `ResponseCode` (the SDK reads an absent code as 0).
    pub response_code: i32,
    /// `Comment`.
    pub comment: String,
    /// `DocumentName`.
    pub document_name: String,
    /// `DocumentVersion`.
    pub document_version: String,
    /// `PluginName`.
    pub plugin_name: String,
    /// `ExecutionStartDateTime`.
    pub execution_start_date_time: String,
    /// `ExecutionElapsedTime`.
    pub execution_elapsed_time: String,
    /// `ExecutionEndDateTime`.
    pub execution_end_date_time: String,
    /// `StandardOutputContent`.
    pub standard_output_content: String,
    /// `StandardOutputUrl`.
    pub standard_output_url: String,
    /// `StandardErrorContent`.
    pub standard_error_content: String,
    /// `StandardErrorUrl`.
    pub standard_error_url: String,
    /// `CloudWatchOutputConfig.CloudWatchLogGroupName`, when SSM sent the config.
    pub cloud_watch_log_group_name: Option<String>,
    /// `CloudWatchOutputConfig.CloudWatchOutputEnabled`, when SSM sent the config.
    pub cloud_watch_output_enabled: Option<bool>,
    /// Every step, in document order, when this answers for a multi-step invocation as a
    /// whole (read from `ListCommandInvocations`: `GetCommandInvocation` answers one step
    /// only); `None` when it answers for one step.
    pub steps: Option<Vec<StepOutcome>>,
}

/// One step of a multi-step invocation, as `ListCommandInvocations` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// The step's `Name`.
    pub name: String,
    /// Its `Status`, verbatim.
    pub status: String,
    /// Its `ResponseCode` (the SDK reads an absent code as 0).
    pub response_code: i32,
}

/// Why SSM gave no invocation. The variant decides what the operator does next.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum SsmError {
    /// `InvocationDoesNotExist`: not visible yet (eventual consistency), wrong ids, a wrong
    /// plugin name on some emulators, or past SSM's history window.
    #[error("SSM has no such invocation: {0}")]
    InvocationDoesNotExist(String),
    /// `InvalidCommandId`: permanent for this spec.
    #[error("SSM refused the command id: {0}")]
    InvalidCommandId(String),
    /// `InvalidInstanceId`: permanent for this spec.
    #[error("SSM refused the instance id: {0}")]
    InvalidInstanceId(String),
    /// `InvalidPluginName`: permanent for this spec.
    #[error("SSM refused the plugin name: {0}")]
    InvalidPluginName(String),
    /// `ValidationException` and other client errors SSM will never accept for this request.
    #[error("SSM refused the request as malformed: {0}")]
    Validation(String),
    /// `AccessDeniedException` (or an unrecognised/invalid AWS identity): IAM may be fixed
    /// outside the cluster, so it is re-checked rarely.
    #[error("access denied by AWS: {0}")]
    AccessDenied(String),
    /// STS refused the namespace's role and will refuse it again (trust policy, external id,
    /// a malformed ARN): an outside fix cures it. STS being unwell or unreachable is
    /// `Unavailable` instead.
    #[error("could not assume the namespace's role: {0}")]
    AssumeRoleFailed(String),
    /// `ThrottlingException` and friends (the SDK does not retry them: the budget slows down).
    #[error("throttled by SSM: {0}")]
    Throttled(String),
    /// The region's SSM endpoint did not resolve (DNS), [`UNRESOLVED_TRIES`] calls in a row: a
    /// region that does not exist (a typo) or is not reachable from here. Re-checked rarely;
    /// fewer failures in a row are `Unavailable`.
    #[error("SSM unavailable: {0}")]
    RegionUnreachable(String),
    /// 5xx, timeouts, connection and credential errors (STS's too): transient.
    #[error("SSM unavailable: {0}")]
    Unavailable(String),
}

/// How an error can go away, which decides how often the operator asks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Only a spec change can help: never ask again for this generation.
    SpecChange,
    /// A fix outside the cluster (IAM, SSM catching up) can help: ask again rarely.
    OutsideFix,
    /// Asking again soon can help: keep polling with backoff.
    Transient,
}

impl SsmError {
    /// The condition reason the public contract names for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvocationDoesNotExist(_) => "InvocationNotFound",
            Self::InvalidCommandId(_) => "InvalidCommandId",
            Self::InvalidInstanceId(_) => "InvalidInstanceId",
            Self::InvalidPluginName(_) => "InvalidPluginName",
            Self::Validation(_) => "ValidationError",
            Self::AccessDenied(_) => "AccessDenied",
            Self::AssumeRoleFailed(_) => "AssumeRoleFailed",
            Self::Throttled(_) => "Throttled",
            Self::Unavailable(_) | Self::RegionUnreachable(_) => "SsmUnavailable",
        }
    }

    /// How this error can go away.
    pub fn recovery(&self) -> Recovery {
        match self {
            Self::InvalidCommandId(_)
            | Self::InvalidInstanceId(_)
            | Self::InvalidPluginName(_)
            | Self::Validation(_) => Recovery::SpecChange,
            Self::InvocationDoesNotExist(_)
            | Self::AccessDenied(_)
            | Self::AssumeRoleFailed(_)
            | Self::RegionUnreachable(_) => Recovery::OutsideFix,
            Self::Throttled(_) | Self::Unavailable(_) => Recovery::Transient,
        }
    }

    /// SSM's (or the transport's) message, without our prefix.
    pub fn message(&self) -> &str {
        match self {
            Self::InvocationDoesNotExist(m)
            | Self::InvalidCommandId(m)
            | Self::InvalidInstanceId(m)
            | Self::InvalidPluginName(m)
            | Self::Validation(m)
            | Self::AccessDenied(m)
            | Self::AssumeRoleFailed(m)
            | Self::Throttled(m)
            | Self::Unavailable(m)
            | Self::RegionUnreachable(m) => m,
        }
    }
}

/// A read SSM throttles is tried this many times in all, each through the budget (the SDK
/// retries no throttle): a walk's page throttled once is not the end of the walk, whose
/// command would then wait a whole poll interval (backed off) for its next round.
pub const THROTTLED_ATTEMPTS: u32 = 3;

/// A region whose SSM endpoint did not resolve this many calls in a row (each with the SDK's
/// retries, the tracker's backoff between them) is taken for one that does not exist:
/// [`SsmError::RegionUnreachable`], re-checked rarely, until a call reaches it again.
pub const UNRESOLVED_TRIES: u32 = 3;

/// Pure: what a call to `region` whose endpoint did not resolve (`detail`) means after
/// `failures` such calls in a row.
pub fn unresolved(region: &str, failures: u32, detail: &str) -> SsmError {
    if failures >= UNRESOLVED_TRIES {
        SsmError::RegionUnreachable(format!(
            "the SSM endpoint of region {region} did not resolve {failures} times in a row: is \
             the region right? Asked again only rarely ({detail})"
        ))
    } else {
        SsmError::Unavailable(format!(
            "the SSM endpoint of region {region} did not resolve ({detail})"
        ))
    }
}

/// A client per region (`None`: the default) and identity (`None`: the operator's own).
type ClientKey = (Option<String>, Option<Role>);

/// A client unused this long (its region or role no longer named by any resource) is dropped,
/// with the role's cached credentials; it is built again if ever needed.
pub const CLIENT_IDLE: Duration = Duration::from_secs(600);

/// The clients per (region, role), each with when it was last used.
#[derive(Default)]
struct Clients {
    by_key: HashMap<ClientKey, (Client, Instant)>,
    /// When idle clients were last looked for.
    pruned: Option<Instant>,
}

impl Clients {
    /// The client for `key`, marked used at `now`; idle ones are dropped (looked for at most
    /// once a minute).
    fn get(&mut self, key: &ClientKey, now: Instant) -> Option<Client> {
        if self
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(60))
        {
            self.pruned = Some(now);
            self.by_key
                .retain(|_, (_, used)| now.saturating_duration_since(*used) < CLIENT_IDLE);
        }
        let (client, used) = self.by_key.get_mut(key)?;
        *used = now;
        Some(client.clone())
    }

    /// Keeps `client` for `key` (unless one was built meanwhile, which is returned instead).
    fn insert(&mut self, key: ClientKey, client: Client, now: Instant) -> Client {
        self.by_key.entry(key).or_insert((client, now)).0.clone()
    }
}

/// SSM access for the whole operator: shared SDK configuration and a client per region.
pub struct Ssm {
    base: SdkConfig,
    clients: Mutex<Clients>,
    metrics: Arc<Metrics>,
    budget: Budget,
    /// Regions whose endpoint did not resolve, with how many calls in a row (a call that
    /// reaches the endpoint takes its region out).
    unresolved: Mutex<HashMap<Option<String>, u32>>,
}

/// One step (plugin) of a node's invocation as `ListCommandInvocations` reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListedPlugin {
    /// `Name`.
    pub name: String,
    /// `Status`, verbatim.
    pub status: String,
    /// `StatusDetails`.
    pub status_details: String,
    /// `ResponseCode`.
    pub response_code: i32,
    /// `ResponseStartDateTime`, ISO-8601 (empty until it started).
    pub start: String,
    /// `ResponseFinishDateTime`, ISO-8601 (empty until it ended).
    pub finish: String,
    /// Seconds between start and finish, when both are known.
    pub elapsed_seconds: Option<f64>,
    /// `Output`: the agent's stdout, `\n----------ERROR-------\n` and stderr, cut at 2,500.
    pub output: String,
    /// `StandardOutputUrl`.
    pub standard_output_url: String,
    /// `StandardErrorUrl`.
    pub standard_error_url: String,
}

/// One node's invocation of a command as `ListCommandInvocations` (with details) reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listed {
    /// `InstanceId`.
    pub instance_id: String,
    /// The invocation-level fields (status, document, comment, CloudWatch), in [`Invocation`]
    /// form; its step-level fields stay empty.
    pub invocation: Invocation,
    /// `CommandPlugins`.
    pub plugins: Vec<ListedPlugin>,
}

/// One page of `ListCommandInvocations`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The nodes on this page.
    pub invocations: Vec<Listed>,
    /// Where the next page starts, if there is one.
    pub next_token: Option<String>,
}

impl Ssm {
    /// Loads the standard AWS configuration chain (env, profiles, web identity, Pod Identity,
    /// `AWS_ENDPOINT_URL[_SSM]`, `AWS_RETRY_MODE`) with bounded timeouts.
    /// `attempt_timeout` bounds one HTTP attempt (`--ssm-attempt-timeout`); a whole call,
    /// retries included, gets three times that.
    pub async fn from_env(metrics: Arc<Metrics>, attempt_timeout: Duration, max_rate: f64) -> Self {
        // Retries: the SDK's standard mode (3 attempts, exponential backoff), overridable with
        // AWS_RETRY_MODE / AWS_MAX_ATTEMPTS. Adaptive mode is not forced: in aws-smithy-runtime
        // 1.16 its bucket caps at ~1 token for low-rate clients while a retry costs 5, so after
        // one throttle every retry waited out the whole operation timeout (seen in the e2e
        // throttling scenario). The controller's own backoff spaces polls out instead.
        let base = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .operation_timeout(attempt_timeout.saturating_mul(OPERATION_ATTEMPTS))
                    .build(),
            )
            .load()
            .await;
        Self::new(base, metrics, max_rate)
    }

    /// Uses an already loaded SDK configuration; at most `max_rate` calls per second.
    pub fn new(base: SdkConfig, metrics: Arc<Metrics>, max_rate: f64) -> Self {
        Self {
            base,
            clients: Mutex::new(Clients::default()),
            metrics,
            budget: Budget::new(max_rate),
            unresolved: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for the budget, then makes the call and counts its outcome (and a throttle).
    /// The SDK's request future (~20 KB) is made and boxed only once the budget lets the
    /// call go, so the calls queued for the budget stay small.
    async fn call<T, F>(
        &self,
        operation: &'static str,
        region: &Option<String>,
        make: impl Fn() -> F,
    ) -> Result<T, SsmError>
    where
        F: std::future::Future<Output = Result<T, SsmError>>,
    {
        let mut lane = Lane::Read;
        let mut attempt = 1;
        loop {
            let sent = self.budget.acquire(lane).await;
            let result = match Box::pin(make()).await {
                Err(SsmError::RegionUnreachable(detail)) => Err(self.not_resolved(region, &detail)),
                result => {
                    self.resolved(region);
                    result
                }
            };
            let outcome = match &result {
                Ok(_) => "success",
                Err(e) => e.reason(),
            };
            let throttled = matches!(result, Err(SsmError::Throttled(_)));
            self.finished(operation, outcome, throttled.then_some(sent));
            if !throttled || attempt >= THROTTLED_ATTEMPTS {
                return result;
            }
            // Asked again through the budget (now slower), ahead of first tries.
            lane = Lane::Retry;
            attempt += 1;
        }
    }

    /// One more call to `region` whose endpoint did not resolve: the error it means now.
    fn not_resolved(&self, region: &Option<String>, detail: &str) -> SsmError {
        let failures = {
            let mut unresolved = self
                .unresolved
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let failures = unresolved.entry(region.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            *failures
        };
        let name = region
            .as_deref()
            .or(self.default_region())
            .unwrap_or("(none)");
        unresolved(name, failures, detail)
    }

    /// A call reached `region`'s endpoint (whatever it answered).
    fn resolved(&self, region: &Option<String>) {
        let mut unresolved = self
            .unresolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !unresolved.is_empty() {
            unresolved.remove(region);
        }
    }

    /// Counts a finished call by outcome; a throttled one (let go at the instant given) also
    /// cuts the budget's rate, unless an earlier throttle cut it since the call left.
    fn finished(&self, operation: &'static str, outcome: &str, throttled: Option<Instant>) {
        if let Some(sent) = throttled {
            self.budget.throttled(sent);
        }
        self.metrics.ssm_call(operation, outcome);
        self.metrics.set_ssm_rate(self.budget.rate());
    }

    /// One page of every node's invocation of `command_id` (`ListCommandInvocations` with
    /// `Details`), starting at `next_token`.
    pub async fn list_page(
        &self,
        region: &Option<String>,
        role: &Option<Role>,
        command_id: &str,
        next_token: Option<String>,
    ) -> Result<Page, SsmError> {
        let with_role = role.is_some();
        let request = self
            .client(region, role)
            .await
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .max_results(PAGE_SIZE)
            .set_next_token(next_token);
        self.page(request, region, with_role).await
    }

    /// Makes a `ListCommandInvocations` request (through the budget) and keeps its page.
    async fn page(
        &self,
        request: aws_sdk_ssm::operation::list_command_invocations::builders::ListCommandInvocationsFluentBuilder,
        region: &Option<String>,
        with_role: bool,
    ) -> Result<Page, SsmError> {
        self.call("ListCommandInvocations", region, || {
            let request = request.clone();
            async move {
                let out = request.send().await.map_err(|e| classify(e, with_role))?;
                Ok(Page {
                    invocations: out.command_invocations().iter().map(Listed::from).collect(),
                    next_token: out.next_token().map(str::to_string),
                })
            }
        })
        .await
    }

    /// One node's invocation of `command_id` (`ListCommandInvocations` with `InstanceId` and
    /// `Details`): the only way to read a multi-step invocation as a whole, since
    /// `GetCommandInvocation` answers one named step. An empty page: not listed (yet).
    pub async fn list_node(
        &self,
        region: &Option<String>,
        role: &Option<Role>,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Page, SsmError> {
        let with_role = role.is_some();
        let request = self
            .client(region, role)
            .await
            .list_command_invocations()
            .command_id(command_id)
            .instance_id(instance_id)
            .details(true);
        self.page(request, region, with_role).await
    }

    /// The SDK configuration every client starts from (credentials, region, endpoints).
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.base
    }

    /// The region used for resources that name none, if configured.
    pub fn default_region(&self) -> Option<&str> {
        self.base.region().map(Region::as_ref)
    }

    /// The client for `region` (`None`: the default region), built on first use.
    /// The client for `region` (`None`: the default region) and `role` (`None`: the
    /// operator's own identity), built on first use and reused (with the role's credentials
    /// cached and refreshed by the SDK).
    async fn client(&self, region: &Option<String>, role: &Option<Role>) -> Client {
        let key = (region.clone(), role.clone());
        if let Some(client) = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key, Instant::now())
        {
            return client;
        }
        let mut config = aws_sdk_ssm::config::Builder::from(&self.base);
        if let Some(region) = region {
            config = config.region(Region::new(region.clone()));
        }
        if let Some(role) = role {
            config = config.credentials_provider(role.credentials(&self.base).await);
        }
        config = config.retry_classifier(ThrottlesNotRetried);
        let client = Client::from_conf(config.build());
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, client, Instant::now())
    }

    /// Asks SSM for one invocation (`GetCommandInvocation`).
    pub async fn invocation(&self, key: &InvocationKey) -> Result<Invocation, SsmError> {
        let with_role = key.role.is_some();
        let request = self
            .client(&key.region, &key.role)
            .await
            .get_command_invocation()
            .command_id(&key.command_id)
            .instance_id(&key.instance_id)
            .set_plugin_name(key.plugin_name.clone());
        self.call("GetCommandInvocation", &key.region, || {
            let request = request.clone();
            async move {
                request
                    .send()
                    .await
                    .map(Invocation::from)
                    .map_err(|e| classify(e, with_role))
            }
        })
        .await
    }
}

/// An SDK timestamp as SSM's GetCommandInvocation writes it (ISO-8601, UTC, milliseconds:
/// `2026-11-30T09:50:44.230Z`); empty if absent.
fn iso(time: Option<&DateTime>) -> String {
    let Some(time) = time else {
        return String::new();
    };
    match k8s_openapi::jiff::Timestamp::new(time.secs(), time.subsec_nanos() as i32) {
        Ok(at) => at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => time.fmt(DateTimeFormat::DateTime).unwrap_or_default(),
    }
}

impl From<&CommandPlugin> for ListedPlugin {
    fn from(plugin: &CommandPlugin) -> Self {
        let text = |s: Option<&str>| s.unwrap_or_default().to_string();
        let start = plugin.response_start_date_time();
        let finish = plugin.response_finish_date_time();
        let elapsed_seconds = match (start, finish) {
            (Some(start), Some(finish)) => {
                Some((finish.as_secs_f64() - start.as_secs_f64()).max(0.0))
            }
            _ => None,
        };
        Self {
            name: text(plugin.name()),
            status: text(plugin.status().map(|s| s.as_str())),
            status_details: text(plugin.status_details()),
            response_code: plugin.response_code(),
            start: iso(start),
            finish: iso(finish),
            elapsed_seconds,
            output: text(plugin.output()),
            standard_output_url: text(plugin.standard_output_url()),
            standard_error_url: text(plugin.standard_error_url()),
        }
    }
}

impl From<&SdkInvocation> for Listed {
    fn from(listed: &SdkInvocation) -> Self {
        let text = |s: Option<&str>| s.unwrap_or_default().to_string();
        let cloud_watch = listed.cloud_watch_output_config();
        Self {
            instance_id: text(listed.instance_id()),
            invocation: Invocation {
                status: text(listed.status().map(|s| s.as_str())),
                status_details: text(listed.status_details()),
                comment: text(listed.comment()),
                document_name: text(listed.document_name()),
                document_version: text(listed.document_version()),
                cloud_watch_log_group_name: cloud_watch
                    .and_then(|c| c.cloud_watch_log_group_name())
                    .map(str::to_string),
                cloud_watch_output_enabled: cloud_watch.map(|c| c.cloud_watch_output_enabled()),
                ..Invocation::default()
            },
            plugins: listed
                .command_plugins()
                .iter()
                .map(ListedPlugin::from)
                .collect(),
        }
    }
}

impl From<GetCommandInvocationOutput> for Invocation {
    fn from(out: GetCommandInvocationOutput) -> Self {
        let text = |s: Option<&str>| s.unwrap_or_default().to_string();
        let cloud_watch = out.cloud_watch_output_config();
        Self {
            status: text(out.status().map(|s| s.as_str())),
            status_details: text(out.status_details()),
            response_code: out.response_code(),
            comment: text(out.comment()),
            document_name: text(out.document_name()),
            document_version: text(out.document_version()),
            plugin_name: text(out.plugin_name()),
            execution_start_date_time: text(out.execution_start_date_time()),
            execution_elapsed_time: text(out.execution_elapsed_time()),
            execution_end_date_time: text(out.execution_end_date_time()),
            standard_output_content: text(out.standard_output_content()),
            standard_output_url: text(out.standard_output_url()),
            standard_error_content: text(out.standard_error_content()),
            standard_error_url: text(out.standard_error_url()),
            cloud_watch_log_group_name: cloud_watch
                .and_then(|c| c.cloud_watch_log_group_name())
                .map(str::to_string),
            cloud_watch_output_enabled: cloud_watch.map(|c| c.cloud_watch_output_enabled()),
            steps: None,
        }
    }
}

/// Keeps the SDK from retrying a throttled call: the budget, which every SSM call goes
/// through, is what answers throttling. An SDK retry of a throttle is a call the budget never
/// let go (it cannot slow it), and comes back seconds later, so the budget's "one cut per round
/// trip" rule took it for a throttle of an old call and cut nothing: the rate stayed high while
/// SSM kept throttling (431 throttled answers against 205 on the throttled bench). Timeouts,
/// dropped connections and 5xx are still retried by the SDK.
#[derive(Debug)]
struct ThrottlesNotRetried;

impl ClassifyRetry for ThrottlesNotRetried {
    fn classify_retry(&self, _ctx: &InterceptorContext) -> RetryAction {
        RetryAction::NoActionIndicated
    }

    fn classify_retry_v2(&self, _ctx: &InterceptorContext, previous: &RetryAction) -> RetryAction {
        match previous {
            RetryAction::RetryIndicated(RetryReason::RetryableError {
                kind: ErrorKind::ThrottlingError,
                ..
            }) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "throttles are the budget's"
    }

    /// After every classifier of the SDK, so it sees their verdict.
    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// Error codes AWS uses for throttling (only `ThrottlingException` is seen from SSM).
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// STS error codes that refuse the role and that STS will give again for the same request:
/// the role's trust policy or the external id (`AccessDenied`), the operator's own key unknown
/// to STS, a malformed role ARN or request, STS not activated in the region. Only these make a
/// namespace's resources `AssumeRoleFailed` (Stalled, re-checked rarely); every other failure
/// to get the role's credentials is transient.
///
/// Transient on purpose: 5xx (`InternalFailure`, `ServiceUnavailable`), throttling (as
/// `SsmUnavailable`, not `Throttled`, so that STS's rate never slows the SSM budget every
/// namespace shares), timeouts, connection errors, and `ExpiredToken`/`ExpiredTokenException`:
/// that is the operator's *own* session expiring, which its credentials chain (IRSA, Pod
/// Identity, IMDS) renews; it is no fault of the namespace's role, and the same expired
/// identity shows as `SsmUnavailable` for namespaces without a role too.
const STS_REFUSAL_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "NotAuthorized",
    "ValidationError",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
];

/// STS's modelled `AssumeRole` errors: the SDK shows them only as text, `<shape>: <message>`,
/// without their `ErrorMetadata` in the source chain. (shape name, wire code).
const STS_MODELLED_ERRORS: &[(&str, &str)] = &[
    ("ExpiredTokenException", "ExpiredTokenException"),
    (
        "MalformedPolicyDocumentException",
        "MalformedPolicyDocument",
    ),
    ("PackedPolicyTooLargeException", "PackedPolicyTooLarge"),
    ("RegionDisabledException", "RegionDisabledException"),
];

/// Longest STS detail kept in a message (the chain of a transport error can be long).
const STS_DETAIL_CHARS: usize = 500;

/// Pure: what an SSM call's failure to load a namespace role's credentials means, from the
/// error's source chain; `None` when the call did not fail loading credentials.
///
/// How aws-config surfaces it: `AssumeRoleProvider` turns every failed `AssumeRole` into a
/// `CredentialsError` (`ProviderError`; `InvalidConfiguration` for a disabled region or a
/// malformed policy) whose source is the STS client's `SdkError`, after that client's own
/// retries; the identity cache may instead time the load out. The SSM client reports either as
/// a dispatch failure whose connector error, of kind `other`, holds it. Below it:
/// - STS answered: its `ErrorMetadata` (code, message), or a modelled error's text. Refusal
///   codes ([`STS_REFUSAL_CODES`]) are `AssumeRoleFailed`; any other answer is transient.
/// - Another connector error: STS was not reached (connection refused or reset, timeout) or
///   the operator's own source credentials failed to load (their own chain): transient.
/// - Anything else (a timeout of the load, an unreadable answer): transient.
fn role_credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<SsmError> {
    let mut chain = std::iter::successors(Some(err), |e| e.source())
        .skip_while(|e| e.downcast_ref::<ConnectorError>().is_none());
    let outer = chain.next()?.downcast_ref::<ConnectorError>()?;
    if !outer.is_other() {
        // SSM itself was not reached (io, timeout): credentials are not the question.
        return None;
    }
    let loading = chain.next()?;
    for link in std::iter::successors(loading.source(), |e| e.source()) {
        if link.downcast_ref::<ConnectorError>().is_some() {
            break;
        }
        if let Some(meta) = link.downcast_ref::<ErrorMetadata>() {
            if let Some(code) = meta.code() {
                return Some(sts_answer(code, meta.message().unwrap_or_default()));
            }
        }
        let text = link.to_string();
        if let Some((shape, code)) = STS_MODELLED_ERRORS
            .iter()
            .find(|(shape, _)| text.starts_with(shape))
        {
            let message = text[shape.len()..].trim_start_matches(':').trim();
            return Some(sts_answer(code, message));
        }
    }
    // No answer from STS. Only the wording depends on the text: the credentials provider's
    // errors all name "credential", the identity cache's load timeout "identity".
    let loading_text = loading.to_string();
    if !loading_text.contains("credential") && !loading_text.contains("identity") {
        // Something else before sending (say, signing): the caller's generic wording.
        return None;
    }
    let detail = std::iter::successors(Some(loading), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    Some(sts_unavailable(&detail))
}

/// What STS's answer `code: message` to `AssumeRole` means (see [`STS_REFUSAL_CODES`]).
fn sts_answer(code: &str, message: &str) -> SsmError {
    let said = format!("{code}: {message}");
    if STS_REFUSAL_CODES.contains(&code) {
        SsmError::AssumeRoleFailed(sts_detail(&said))
    } else {
        sts_unavailable(&said)
    }
}

/// The namespace's role credentials did not come from STS, for a reason a retry may cure.
fn sts_unavailable(detail: &str) -> SsmError {
    SsmError::Unavailable(format!(
        "could not get the namespace's role credentials from STS: {}",
        sts_detail(detail)
    ))
}

/// `detail` cut to [`STS_DETAIL_CHARS`] characters.
fn sts_detail(detail: &str) -> String {
    detail.chars().take(STS_DETAIL_CHARS).collect()
}

/// Whether the request never left because the endpoint's host name did not resolve (hyper's
/// connector says `dns error` under an io connector error); a refused or dropped connection,
/// a timeout, is not that.
fn endpoint_unresolved(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut chain = std::iter::successors(Some(err), |e| e.source())
        .skip_while(|e| e.downcast_ref::<ConnectorError>().is_none());
    let Some(connector) = chain
        .next()
        .and_then(|e| e.downcast_ref::<ConnectorError>())
    else {
        return false;
    };
    connector.is_io() && chain.any(|e| e.to_string().starts_with("dns error"))
}

/// Error codes that say the caller's AWS identity may not do this (IAM can be fixed outside).
const ACCESS_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "NotAuthorized",
];

/// Error codes of requests SSM will never accept as sent: asking again cannot help.
const MALFORMED_CODES: &[&str] = &[
    "ValidationException",
    "SerializationException",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
    "UnknownOperationException",
];

/// Maps an SDK error of any SSM operation to what the operator does about it. SSM's error
/// codes decide (the same code means the same thing for every operation). `with_role`: the
/// client uses a namespace's role, so a credentials failure means the role was not assumed.
fn classify<E>(err: SdkError<E>, with_role: bool) -> SsmError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let SdkError::ServiceError(service) = &err else {
        // A namespace's role whose credentials did not load reaches here as a dispatch failure
        // holding STS's answer: a refusal STS will repeat is cured only outside (IAM, trust
        // policy); an unwell or unreachable STS is transient.
        if with_role {
            if let Some(error) = role_credentials_failure(&err) {
                return error;
            }
        }
        // The endpoint's name did not resolve: worth retrying a few times, then the region
        // itself is in doubt (the caller counts, see `Ssm::not_resolved`).
        if endpoint_unresolved(&err) {
            return SsmError::RegionUnreachable(DisplayErrorContext(&err).to_string());
        }
        // Timeouts, dispatch (connection) failures, unreadable responses, missing
        // region or credentials: all worth retrying later.
        return SsmError::Unavailable(DisplayErrorContext(&err).to_string());
    };
    let service_err = service.err();
    let message = service_err
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| service_err.to_string());
    match service_err.code() {
        Some("InvocationDoesNotExist") => SsmError::InvocationDoesNotExist(message),
        Some("InvalidCommandId") => SsmError::InvalidCommandId(message),
        Some("InvalidInstanceId") => SsmError::InvalidInstanceId(message),
        Some("InvalidPluginName") => SsmError::InvalidPluginName(message),
        Some("InternalServerError") => SsmError::Unavailable(message),
        Some(code) if THROTTLING_CODES.contains(&code) => SsmError::Throttled(message),
        Some(code) if ACCESS_CODES.contains(&code) => {
            SsmError::AccessDenied(format!("{code}: {message}"))
        }
        Some(code) if MALFORMED_CODES.contains(&code) => {
            SsmError::Validation(format!("{code}: {message}"))
        }
        Some(code) => SsmError::Unavailable(format!("{code}: {message}")),
        None => SsmError::Unavailable(format!(
            "HTTP {}: {message}",
            service.raw().status().as_u16()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ssm::config::http::HttpResponse;
    use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationError;

    #[test]
    fn each_error_has_a_contract_reason_and_a_recovery_class() {
        let all = [
            SsmError::InvocationDoesNotExist(String::new()),
            SsmError::InvalidCommandId(String::new()),
            SsmError::InvalidInstanceId(String::new()),
            SsmError::InvalidPluginName(String::new()),
            SsmError::Validation(String::new()),
            SsmError::AccessDenied(String::new()),
            SsmError::AssumeRoleFailed(String::new()),
            SsmError::Throttled(String::new()),
            SsmError::Unavailable(String::new()),
            SsmError::RegionUnreachable(String::new()),
        ];
        let table: Vec<_> = all.iter().map(|e| (e.reason(), e.recovery())).collect();
        assert_eq!(
            table,
            [
                ("InvocationNotFound", Recovery::OutsideFix),
                ("InvalidCommandId", Recovery::SpecChange),
                ("InvalidInstanceId", Recovery::SpecChange),
                ("InvalidPluginName", Recovery::SpecChange),
                ("ValidationError", Recovery::SpecChange),
                ("AccessDenied", Recovery::OutsideFix),
                ("AssumeRoleFailed", Recovery::OutsideFix),
                ("Throttled", Recovery::Transient),
                ("SsmUnavailable", Recovery::Transient),
                ("SsmUnavailable", Recovery::OutsideFix),
            ]
        );
    }

    #[test]
    fn an_absent_cloudwatch_config_stays_absent() {
        let out = GetCommandInvocationOutput::builder()
            .status(aws_sdk_ssm::types::CommandInvocationStatus::InProgress)
            .build();
        let inv = Invocation::from(out);
        assert_eq!(inv.status, "InProgress");
        assert_eq!(inv.cloud_watch_log_group_name, None);
        assert_eq!(inv.cloud_watch_output_enabled, None);
        assert_eq!(inv.response_code, 0, "the SDK reads an absent code as 0");
    }

    #[test]
    fn clients_no_longer_used_are_dropped() {
        let base = SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .behavior_version(BehaviorVersion::latest())
            .build();
        let client = Client::from_conf(aws_sdk_ssm::config::Builder::from(&base).build());
        let t0 = Instant::now();
        let mut clients = Clients::default();
        let (gone, kept) = ((Some("us-east-1".to_string()), None), (None, None));
        clients.insert(gone.clone(), client.clone(), t0);
        clients.insert(kept.clone(), client, t0);
        let later = t0 + CLIENT_IDLE / 2;
        assert!(clients.get(&kept, later).is_some(), "used again");
        let after = t0 + CLIENT_IDLE + Duration::from_secs(61);
        assert!(
            clients.get(&kept, after).is_some(),
            "used within the idle time"
        );
        assert!(
            clients.get(&gone, after).is_none(),
            "a region nothing named for the idle time is dropped"
        );
        assert_eq!(clients.by_key.len(), 1);
    }

    #[test]
    fn clients_are_built_once_per_region_with_that_region() {
        let base = SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .behavior_version(BehaviorVersion::latest())
            .build();
        let ssm = Ssm::new(base, Arc::new(Metrics::new()), 50.0);
        let region_of = |c: Client| c.config().region().map(|r| r.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let client = |region: &Option<String>| runtime.block_on(ssm.client(region, &None));
        assert_eq!(region_of(client(&None)), Some("eu-west-1".into()));
        let us = Some("us-east-1".to_string());
        assert_eq!(region_of(client(&us)), Some("us-east-1".into()));
        assert_eq!(region_of(client(&us)), Some("us-east-1".into()));
        assert_eq!(
            ssm.clients.lock().unwrap().by_key.len(),
            2,
            "reused, not rebuilt"
        );
        assert_eq!(ssm.default_region(), Some("eu-west-1"));
    }

    /// Stands in for aws-credential-types' `CredentialsError::ProviderError` (not a direct
    /// dependency): the same text, the STS error as its source.
    #[derive(Debug)]
    pub(super) struct LoadingFailed(
        pub(super) Option<Box<dyn std::error::Error + Send + Sync>>,
        pub(super) &'static str,
    );

    impl std::fmt::Display for LoadingFailed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl std::error::Error for LoadingFailed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.0.as_deref().map(|e| e as _)
        }
    }

    /// STS's modelled errors, shown as `<shape>: <message>` with no metadata in the chain.
    #[derive(Debug)]
    pub(super) struct Modelled(pub(super) &'static str);

    impl std::fmt::Display for Modelled {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Modelled {}

    pub(super) type SsmCallError = SdkError<GetCommandInvocationError>;

    /// An SSM call whose credentials provider failed with `source` (as the SDK reports it).
    pub(super) fn loading_failed(
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> SsmCallError {
        let loading = LoadingFailed(
            Some(Box::new(source)),
            "an error occurred while loading credentials",
        );
        SdkError::dispatch_failure(ConnectorError::other(Box::new(loading), None))
    }

    /// The STS client's error for an answer with this HTTP status, code and message (built
    /// the way the SDK builds an unmodelled error: its `ErrorMetadata` as the source).
    pub(super) fn sts_said(status: u16, code: &str, message: &str) -> SsmCallError {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = HttpResponse::new(
            status.try_into().expect("status"),
            "<ErrorResponse/>".into(),
        );
        loading_failed(SdkError::service_error(
            GetCommandInvocationError::generic(meta),
            raw,
        ))
    }

    pub(super) fn io(kind: std::io::ErrorKind) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(std::io::Error::from(kind))
    }

    /// STS failures that say nothing about the role: STS unwell, throttling, unreachable or
    /// slow, or the operator's own session expired (its chain renews it). Each with what it
    /// is and words its message must contain. A read shows them as `SsmUnavailable` and
    /// retries; a send they stopped was not made.
    pub(super) fn transient_sts_failures() -> Vec<(&'static str, SsmCallError, &'static str)> {
        use std::io::ErrorKind;
        vec![
            (
                "STS 500",
                sts_said(500, "InternalFailure", "An internal error occurred"),
                "from STS: InternalFailure: An internal error occurred",
            ),
            (
                "STS 503",
                sts_said(503, "ServiceUnavailable", "Service is unavailable"),
                "ServiceUnavailable",
            ),
            (
                "STS throttling",
                sts_said(400, "Throttling", "Rate exceeded"),
                "Throttling: Rate exceeded",
            ),
            (
                "the operator's own session expired",
                loading_failed(SdkError::service_error(
                    Modelled("ExpiredTokenException: The security token included in the request is expired"),
                    HttpResponse::new(400u16.try_into().expect("status"), "".into()),
                )),
                "ExpiredTokenException: The security token included in the request is expired",
            ),
            (
                "an unknown code",
                sts_said(400, "SomethingNew", "?"),
                "SomethingNew",
            ),
            (
                "connection refused",
                loading_failed(SdkError::<GetCommandInvocationError, HttpResponse>::dispatch_failure(
                    ConnectorError::io(io(ErrorKind::ConnectionRefused)),
                )),
                "from STS: an error occurred while loading credentials: dispatch failure: io error: connection refused",
            ),
            (
                "STS timed out",
                loading_failed(SdkError::<GetCommandInvocationError, HttpResponse>::dispatch_failure(
                    ConnectorError::timeout(io(ErrorKind::TimedOut)),
                )),
                "dispatch failure: timeout",
            ),
            (
                "the operation timed out",
                loading_failed(SdkError::<GetCommandInvocationError, HttpResponse>::timeout_error(
                    io(ErrorKind::TimedOut),
                )),
                "request has timed out",
            ),
            (
                "the identity cache timed the load out",
                SdkError::dispatch_failure(ConnectorError::other(
                    Box::new(LoadingFailed(None, "identity resolver timed out after 5s")),
                    None,
                )),
                "from STS: identity resolver timed out after 5s",
            ),
        ]
    }

    #[test]
    fn only_refusals_sts_repeats_stall_a_role_and_the_rest_is_transient() {
        let denied = "User: arn:aws:iam::111122223333:role/ssm-operator is not authorized to \
                      perform: sts:AssumeRole on resource: arn:aws:iam::444455556666:role/r";
        let mut cases: Vec<(&str, SsmCallError, &str, &str)> = vec![
            // Refusals STS will repeat: Stalled, re-checked rarely.
            (
                "trust policy or external id",
                sts_said(403, "AccessDenied", denied),
                "AssumeRoleFailed",
                "AccessDenied: User: arn:aws:iam::111122223333:role/ssm-operator is not",
            ),
            (
                "malformed role ARN",
                sts_said(
                    400,
                    "ValidationError",
                    "roleArn failed to satisfy constraint",
                ),
                "AssumeRoleFailed",
                "ValidationError: roleArn failed",
            ),
            (
                "the operator's key unknown to STS",
                sts_said(
                    403,
                    "InvalidClientTokenId",
                    "The security token is invalid.",
                ),
                "AssumeRoleFailed",
                "InvalidClientTokenId",
            ),
            (
                "STS not activated in the region (modelled)",
                loading_failed(SdkError::service_error(
                    Modelled("RegionDisabledException: STS is not activated in eu-south-2"),
                    HttpResponse::new(403u16.try_into().expect("status"), "".into()),
                )),
                "AssumeRoleFailed",
                "RegionDisabledException: STS is not activated in eu-south-2",
            ),
            (
                "the operator's own credentials failed below STS (refused there)",
                loading_failed(
                    SdkError::<GetCommandInvocationError, HttpResponse>::dispatch_failure(
                        ConnectorError::other(
                            Box::new(LoadingFailed(
                                Some(Box::new(sts_said(
                                    403,
                                    "AccessDenied",
                                    "web identity refused",
                                ))),
                                "the credential provider was not enabled",
                            )),
                            None,
                        ),
                    ),
                ),
                "SsmUnavailable",
                "the credential provider was not enabled",
            ),
        ];
        // STS unwell or unreachable: Reconciling, retried with backoff.
        cases.extend(
            transient_sts_failures()
                .into_iter()
                .map(|(what, err, words)| (what, err, "SsmUnavailable", words)),
        );
        for (what, err, reason, words) in cases {
            let found = role_credentials_failure(&err)
                .unwrap_or_else(|| panic!("{what}: not seen as a credentials failure"));
            assert_eq!(found.reason(), reason, "{what}: {found:?}");
            assert!(found.message().contains(words), "{what}: {found:?}");
            let classified = classify(err, true);
            assert_eq!(classified, found, "{what}: classify agrees");
            let recovery = if reason == "AssumeRoleFailed" {
                Recovery::OutsideFix
            } else {
                Recovery::Transient
            };
            assert_eq!(classified.recovery(), recovery, "{what}");
        }
    }

    #[test]
    fn failures_that_are_not_about_credentials_keep_their_class() {
        // SSM itself unreachable, with or without a role: transient, not a role question.
        let refused = || {
            SsmCallError::dispatch_failure(ConnectorError::io(io(
                std::io::ErrorKind::ConnectionRefused,
            )))
        };
        assert_eq!(role_credentials_failure(&refused()), None);
        assert_eq!(classify(refused(), true).reason(), "SsmUnavailable");
        // Something else that fails before sending.
        let signing = SsmCallError::dispatch_failure(ConnectorError::other(
            Box::new(LoadingFailed(None, "failed to sign the request")),
            None,
        ));
        assert_eq!(role_credentials_failure(&signing), None);
        assert_eq!(classify(signing, true).reason(), "SsmUnavailable");
        // Without a role, the operator's own credentials failing is transient, as before.
        assert_eq!(
            classify(sts_said(403, "AccessDenied", "no"), false).reason(),
            "SsmUnavailable"
        );
        let long = sts_said(500, "InternalFailure", &"x".repeat(5000));
        assert!(classify(long, true).message().len() < 600);
    }

    /// The operator's SSM access with its own static key and `sts` as every endpoint: a
    /// namespace role's credentials fail (or not) exactly as the real provider makes them.
    pub(super) async fn ssm_via(sts: &ssm_sim::StsSimulator) -> Ssm {
        use aws_sdk_ssm::config::retry::RetryConfig;
        use aws_sdk_ssm::config::Credentials;
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIDOPERATOR", "s", None, None, "test"))
            .endpoint_url(sts.endpoint())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_millis(500))
                    .build(),
            )
            // As in production (the SDK's 5 s identity load timeout under a 10 s attempt): a
            // slow STS times out as a credentials load, never racing the SSM attempt timeout.
            .identity_cache(
                aws_config::identity::IdentityCache::lazy()
                    .load_timeout(Duration::from_millis(200))
                    .build(),
            )
            .load()
            .await;
        Ssm::new(base, Arc::new(Metrics::new()), 1000.0)
    }

    #[tokio::test]
    async fn the_sdk_retries_a_server_error_but_leaves_a_throttle_to_the_budget() {
        use aws_sdk_ssm::config::retry::RetryConfig;
        use aws_sdk_ssm::config::Credentials;
        use ssm_sim::{Fault, Simulator};
        let sim = Simulator::start().await.expect("simulator");
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKID", "s", None, None, "test"))
            .endpoint_url(sim.endpoint())
            // As in production: the SDK's standard mode, 3 attempts; a short first backoff.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(10)),
            )
            .load()
            .await;
        let ssm = Ssm::new(base, Arc::new(Metrics::new()), 1000.0);
        let key = InvocationKey {
            role: None,
            ..key_for("unused")
        };
        sim.inject(Fault::Throttle { count: 3 });
        let throttled = ssm.invocation(&key).await;
        assert!(
            matches!(throttled, Err(SsmError::Throttled(_))),
            "{throttled:?}"
        );
        assert_eq!(sim.calls("GetCommandInvocation"), 3, "three tries");
        // Each try went through the budget, each left after the previous cut: three halvings
        // (the SDK's own retries would have been one, the budget seeing one throttle).
        let rate = ssm.budget.rate();
        assert!((125.0..150.0).contains(&rate), "{rate}");
        sim.inject(Fault::ServerError { count: 1 });
        let answered = ssm.invocation(&key).await;
        // The command is unknown to the simulator: SSM's answer, after the retried 500.
        assert!(
            matches!(answered, Err(SsmError::InvocationDoesNotExist(_))),
            "{answered:?}"
        );
        assert_eq!(sim.calls("GetCommandInvocation"), 5, "the 500 was retried");
    }

    #[test]
    fn a_region_that_never_resolves_is_unavailable_a_few_times_then_stalls() {
        let tries: Vec<_> = (1..=4)
            .map(|n| unresolved("xx-nowhere-9", n, "dns error"))
            .map(|e| (e.reason(), e.recovery()))
            .collect();
        assert_eq!(
            tries,
            [
                ("SsmUnavailable", Recovery::Transient),
                ("SsmUnavailable", Recovery::Transient),
                ("SsmUnavailable", Recovery::OutsideFix),
                ("SsmUnavailable", Recovery::OutsideFix),
            ]
        );
        let message = unresolved("xx-nowhere-9", 3, "dns error").to_string();
        assert!(
            message.contains("region xx-nowhere-9 did not resolve"),
            "{message}"
        );
    }

    /// SSM access whose every endpoint is a name that never resolves (`.invalid`, RFC 6761):
    /// what a spec's unknown region meets.
    pub(super) async fn ssm_nowhere() -> Ssm {
        use aws_sdk_ssm::config::retry::RetryConfig;
        use aws_sdk_ssm::config::Credentials;
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKID", "s", None, None, "test"))
            .endpoint_url("http://ssm.xx-nowhere-9.invalid")
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        Ssm::new(base, Arc::new(Metrics::new()), 1000.0)
    }

    #[tokio::test]
    async fn calls_to_a_region_that_never_resolves_stall_after_three() {
        let ssm = ssm_nowhere().await;
        let key = InvocationKey {
            region: Some("xx-nowhere-9".into()),
            role: None,
            ..key_for("unused")
        };
        let mut seen = Vec::new();
        for _ in 0..3 {
            let error = ssm.invocation(&key).await.expect_err("nowhere");
            seen.push((error.reason(), error.recovery()));
            if seen.len() == 3 {
                let message = error.to_string();
                assert!(message.contains("xx-nowhere-9"), "{message}");
                assert!(message.contains("dns error"), "{message}");
            }
        }
        assert_eq!(
            seen,
            [
                ("SsmUnavailable", Recovery::Transient),
                ("SsmUnavailable", Recovery::Transient),
                ("SsmUnavailable", Recovery::OutsideFix),
            ]
        );
        // Another region's count is its own.
        let other = InvocationKey {
            region: Some("eu-west-1".into()),
            ..key.clone()
        };
        let error = ssm.invocation(&other).await.expect_err("nowhere");
        assert_eq!(error.recovery(), Recovery::Transient);
    }

    fn key_for(role: &str) -> InvocationKey {
        InvocationKey {
            region: None,
            command_id: "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11".into(),
            instance_id: "i-0123456789abcdef0".into(),
            plugin_name: None,
            role: Some(Role {
                namespace: "team-a".into(),
                arn: role.into(),
                external_id: None,
            }),
        }
    }

    #[tokio::test]
    async fn the_real_assume_role_provider_errors_are_classified() {
        use ssm_sim::{Fault, StsSimulator};
        let sts = StsSimulator::start().await.expect("STS simulator");
        let ssm = ssm_via(&sts).await;
        let refused = "arn:aws:iam::444455556666:role/untrusted";
        let error = ssm.invocation(&key_for(refused)).await.unwrap_err();
        assert_eq!(error.reason(), "AssumeRoleFailed", "{error:?}");
        assert!(
            error.message().starts_with(
                "AccessDenied: User: arn:aws:iam::000000000000:user/AKIDOPERATOR is not \
                 authorized to perform: sts:AssumeRole on resource: arn:aws:iam::444455556666"
            ),
            "{error:?}"
        );

        // Each fault hits one AssumeRole (no retries here), each on a fresh role's client.
        let faults = [
            (
                Fault::ServerError { count: 1 },
                "from STS: InternalFailure: An internal error occurred (injected by ssm-sim)",
            ),
            (Fault::Throttle { count: 1 }, "Throttling: Rate exceeded"),
            (Fault::DropConnection { count: 1 }, "dispatch failure"),
            (
                Fault::Slow {
                    count: 1,
                    delay: Duration::from_secs(2),
                },
                "timed out",
            ),
        ];
        for (n, (fault, words)) in faults.into_iter().enumerate() {
            let role = format!("arn:aws:iam::111122223333:role/r{n}");
            sts.allow_role(&role, None);
            sts.inject(fault);
            let error = ssm.invocation(&key_for(&role)).await.unwrap_err();
            assert_eq!(error.reason(), "SsmUnavailable", "{fault:?}: {error:?}");
            assert_eq!(error.recovery(), Recovery::Transient, "{fault:?}");
            assert!(error.message().contains(words), "{fault:?}: {error:?}");
        }

        // STS gone altogether.
        let role = "arn:aws:iam::111122223333:role/gone";
        sts.allow_role(role, None);
        let gone = ssm_via(&sts).await;
        sts.shutdown().await;
        let error = gone.invocation(&key_for(role)).await.unwrap_err();
        assert_eq!(error.reason(), "SsmUnavailable", "{error:?}");
        assert!(
            error.message().contains("role credentials from STS"),
            "{error:?}"
        );
    }

    #[test]
    fn list_times_are_written_the_way_ssm_writes_them() {
        let at = DateTime::from_secs_and_nanos(1_796_032_244, 230_999_000);
        assert_eq!(iso(Some(&at)), "2026-11-30T09:50:44.230Z");
        assert_eq!(iso(None), "");
    }

    #[test]
    fn an_unknown_future_status_is_kept_verbatim() {
        let out = GetCommandInvocationOutput::builder()
            .status(aws_sdk_ssm::types::CommandInvocationStatus::from("Paused"))
            .build();
        assert_eq!(Invocation::from(out).status, "Paused");
    }
}
