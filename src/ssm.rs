//! The only code that talks to AWS SSM: one client per region, built once and reused, the
//! `ListCommandInvocations` (one page) and `GetCommandInvocation` calls, the process-wide
//! [`Budget`] every call waits for, and the classification of errors.
//!
//! Callers never see SDK types: a page is a list of [`Listed`] nodes, an answer an
//! [`Invocation`] or an [`SsmError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput;
use aws_sdk_ssm::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ssm::types::{CommandInvocation as SdkInvocation, CommandPlugin};
use aws_sdk_ssm::Client;

mod commands;
pub use commands::{CommandSummary, Scope};

use crate::budget::Budget;
use crate::metrics::Metrics;
use crate::sts::Role;

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
    /// The namespace's role could not be assumed (STS refused, or its credentials failed).
    #[error("could not assume the namespace's role: {0}")]
    AssumeRoleFailed(String),
    /// `ThrottlingException` and friends, after the SDK's own retries.
    #[error("throttled by SSM: {0}")]
    Throttled(String),
    /// 5xx, timeouts, connection and credential errors: transient.
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
            Self::Unavailable(_) => "SsmUnavailable",
        }
    }

    /// How this error can go away.
    pub fn recovery(&self) -> Recovery {
        match self {
            Self::InvalidCommandId(_)
            | Self::InvalidInstanceId(_)
            | Self::InvalidPluginName(_)
            | Self::Validation(_) => Recovery::SpecChange,
            Self::InvocationDoesNotExist(_) | Self::AccessDenied(_) | Self::AssumeRoleFailed(_) => {
                Recovery::OutsideFix
            }
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
            | Self::Unavailable(m) => m,
        }
    }
}

/// A client per region (`None`: the default) and identity (`None`: the operator's own).
type ClientKey = (Option<String>, Option<Role>);

/// SSM access for the whole operator: shared SDK configuration and a client per region.
pub struct Ssm {
    base: SdkConfig,
    clients: Mutex<HashMap<ClientKey, Client>>,
    metrics: Arc<Metrics>,
    budget: Budget,
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
            clients: Mutex::new(HashMap::new()),
            metrics,
            budget: Budget::new(max_rate),
        }
    }

    /// Waits for the budget, then counts the call's outcome (and a throttle) when it is done.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, SsmError>>,
    ) -> Result<T, SsmError> {
        self.budget.acquire().await;
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.reason(),
        };
        self.finished(
            operation,
            outcome,
            matches!(result, Err(SsmError::Throttled(_))),
        );
        result
    }

    /// Counts a finished call by outcome; a throttled one also cuts the budget's rate.
    fn finished(&self, operation: &'static str, outcome: &str, throttled: bool) {
        if throttled {
            self.budget.throttled();
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
            .set_next_token(next_token)
            .send();
        self.call("ListCommandInvocations", async {
            let out = request.await.map_err(|e| classify(e, with_role))?;
            Ok(Page {
                invocations: out.command_invocations().iter().map(Listed::from).collect(),
                next_token: out.next_token().map(str::to_string),
            })
        })
        .await
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
            .get(&key)
        {
            return client.clone();
        }
        let mut config = aws_sdk_ssm::config::Builder::from(&self.base);
        if let Some(region) = region {
            config = config.region(Region::new(region.clone()));
        }
        if let Some(role) = role {
            config = config.credentials_provider(role.credentials(&self.base).await);
        }
        let client = Client::from_conf(config.build());
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(client)
            .clone()
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
            .set_plugin_name(key.plugin_name.clone())
            .send();
        self.call("GetCommandInvocation", async {
            request
                .await
                .map(Invocation::from)
                .map_err(|e| classify(e, with_role))
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
        }
    }
}

/// Error codes AWS uses for throttling (only `ThrottlingException` is seen from SSM).
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// Whether a non-service SDK error comes from loading credentials (the credentials provider's
/// own error texts all name "credential").
fn is_credentials_failure<E, R>(err: &SdkError<E, R>, text: &str) -> bool {
    matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_)
    ) && text.to_ascii_lowercase().contains("credential")
}

/// STS's own words from a credentials failure: `Code: Message` from the XML error it sent,
/// else the start of the error text (the SDK's dump holds raw headers and bodies).
fn sts_summary(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].trim().to_string())
    };
    match (
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => text.chars().take(300).collect(),
    }
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
        let text = DisplayErrorContext(&err).to_string();
        // A role that cannot be assumed reaches here as a dispatch failure of the credentials
        // provider, holding STS's answer: an outside fix (IAM, trust policy) cures it.
        if with_role && is_credentials_failure(&err, &text) {
            return SsmError::AssumeRoleFailed(sts_summary(&text));
        }
        // Timeouts, dispatch (connection) failures, unreadable responses, missing
        // region or credentials: all worth retrying later.
        return SsmError::Unavailable(text);
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
        assert_eq!(ssm.clients.lock().unwrap().len(), 2, "reused, not rebuilt");
        assert_eq!(ssm.default_region(), Some("eu-west-1"));
    }

    #[test]
    fn a_refused_role_is_summed_up_in_sts_words() {
        let dump = r#"dispatch failure: other: an error occurred while loading credentials: ProviderError { raw: Response { status: 403, headers: {"x": "y"}, body: b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/test is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::2:role/r</Message></Error></ErrorResponse>" } }"#;
        assert_eq!(
            sts_summary(dump),
            "AccessDenied: User: arn:aws:iam::1:user/test is not authorized to perform: \
             sts:AssumeRole on resource: arn:aws:iam::2:role/r"
        );
        assert_eq!(sts_summary(&"x".repeat(1000)).len(), 300);
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
