//! SSM's command-level operations, for the `Command` kind: `SendCommand` (with the SDK's retries
//! off: a retried send whose reply was lost creates a second command), `ListCommands` (the
//! search for a marker, and one command's counts), `CancelCommand`, and the node ids of a
//! command (`ListCommandInvocations` without details).

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::{
    CloudWatchOutputConfig as SdkCloudWatch, Command as SdkCommand, CommandFilter,
    CommandFilterKey, Target as SdkTarget,
};
use k8s_openapi::jiff::Timestamp;

use super::{classify, iso, Ssm, SsmError, THROTTLING_CODES};
use crate::api::CommandSpec;
use crate::aws::budget::Lane;
use crate::aws::sts::Role;
use crate::command::send::{carries, Found, SearchResult, SendResult};

/// Page size of `ListCommands` (SSM's maximum).
const COMMANDS_PAGE: i32 = 50;

/// Where a command lives and who asks: the region (`None`: the operator's) and the role
/// (`None`: the operator's own identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The region.
    pub region: Option<String>,
    /// The role.
    pub role: Option<Role>,
}

/// SSM's `Command`: the counts and state of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSummary {
    /// `CommandId`.
    pub command_id: String,
    /// `Status`, verbatim.
    pub status: String,
    /// `StatusDetails`.
    pub status_details: String,
    /// `RequestedDateTime`, ISO-8601 (empty if absent).
    pub requested: String,
    /// `TargetCount`.
    pub target_count: i32,
    /// `CompletedCount`.
    pub completed_count: i32,
    /// `ErrorCount`.
    pub error_count: i32,
    /// `DeliveryTimedOutCount`.
    pub delivery_timed_out_count: i32,
}

impl From<&SdkCommand> for CommandSummary {
    fn from(c: &SdkCommand) -> Self {
        let text = |s: Option<&str>| s.unwrap_or_default().to_string();
        Self {
            command_id: text(c.command_id()),
            status: text(c.status().map(|s| s.as_str())),
            status_details: text(c.status_details()),
            requested: iso(c.requested_date_time()),
            target_count: c.target_count(),
            completed_count: c.completed_count(),
            error_count: c.error_count(),
            delivery_timed_out_count: c.delivery_timed_out_count(),
        }
    }
}

/// Error codes of SendCommand with which SSM created nothing but a retry could succeed.
fn not_created_by(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

impl Ssm {
    /// Sends `spec` with `comment` once: no SDK retries. The result says whether SSM created
    /// the command, refused it, did not create it for now, or may have created it. A request
    /// that could not leave by `not_after` (waiting for the SSM budget) is not sent at all.
    pub async fn send_command(
        &self,
        scope: &Scope,
        spec: &CommandSpec,
        comment: &str,
        not_after: Timestamp,
    ) -> SendResult {
        let with_role = scope.role.is_some();
        let targets = spec.targets.as_ref().map(|targets| {
            targets
                .iter()
                .map(|t| {
                    SdkTarget::builder()
                        .key(&t.key)
                        .set_values(Some(t.values.clone()))
                        .build()
                })
                .collect::<Vec<_>>()
        });
        let cloud_watch = spec.cloud_watch_output_config.as_ref().map(|c| {
            SdkCloudWatch::builder()
                .set_cloud_watch_log_group_name(c.cloud_watch_log_group_name.clone())
                .set_cloud_watch_output_enabled(c.cloud_watch_output_enabled)
                .build()
        });
        let request = self
            .client(&scope.region, &scope.role)
            .await
            .send_command()
            .document_name(&spec.document_name)
            .set_document_version(spec.document_version.clone())
            .set_parameters(
                spec.parameters
                    .as_ref()
                    .map(|p| p.clone().into_iter().collect()),
            )
            .set_instance_ids(spec.instance_ids.clone())
            .set_targets(targets)
            .comment(comment)
            .set_timeout_seconds(spec.timeout_seconds)
            .set_max_concurrency(spec.max_concurrency.clone())
            .set_max_errors(spec.max_errors.clone())
            .set_output_s3_bucket_name(spec.output_s3_bucket_name.clone())
            .set_output_s3_key_prefix(spec.output_s3_key_prefix.clone())
            .set_cloud_watch_output_config(cloud_watch)
            .customize()
            .config_override(
                aws_sdk_ssm::config::Builder::new().retry_config(RetryConfig::disabled()),
            );
        let sent = self.budget.acquire(Lane::Send).await;
        if Timestamp::now() > not_after {
            return SendResult::NotCreated {
                message: "the send waited too long for the SSM budget and was not made".into(),
            };
        }
        let (result, outcome) = match request.send().await {
            Ok(out) => match out.command().and_then(|c| c.command_id()) {
                Some(id) => (
                    SendResult::Accepted {
                        command_id: id.to_string(),
                    },
                    "success",
                ),
                None => (
                    SendResult::Unknown {
                        message: "SSM accepted the send but named no command id".into(),
                    },
                    "SendUnknown",
                ),
            },
            // The endpoint's name did not resolve: nothing left. A few times in a row, the
            // region itself is in doubt: Stalled, asked again rarely (not sent again hot).
            Err(error) if super::endpoint_unresolved(&error) => {
                let detail = DisplayErrorContext(&error).to_string();
                match self.not_resolved(&scope.region, &detail) {
                    SsmError::RegionUnreachable(message) => (
                        SendResult::Blocked {
                            reason: "SsmUnavailable",
                            message,
                        },
                        "SsmUnavailable",
                    ),
                    other => (
                        SendResult::NotCreated {
                            message: other.message().to_string(),
                        },
                        "SsmUnavailable",
                    ),
                }
            }
            Err(error) => send_failure(error, with_role),
        };
        if outcome != "SsmUnavailable" {
            self.resolved(&scope.region);
        }
        // Only SSM's own throttling slows the budget (never STS's, nor an expired session).
        self.finished(
            "SendCommand",
            outcome,
            (outcome == THROTTLED).then_some(sent),
        );
        result
    }

    /// The commands requested in `window` (after, before) whose Comment carries `marker`
    /// (`ListCommands`, every page).
    pub async fn find_commands(
        &self,
        scope: &Scope,
        marker: &str,
        window: (Timestamp, Timestamp),
    ) -> SearchResult {
        let with_role = scope.role.is_some();
        let client = self.client(&scope.region, &scope.role).await;
        let filter = |key: CommandFilterKey, at: Timestamp| {
            CommandFilter::builder()
                .key(key)
                .value(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .build()
        };
        let filters = match (
            filter(CommandFilterKey::InvokedAfter, window.0),
            filter(CommandFilterKey::InvokedBefore, window.1),
        ) {
            (Ok(after), Ok(before)) => vec![after, before],
            (Err(error), _) | (_, Err(error)) => {
                return SearchResult::Failed {
                    message: error.to_string(),
                }
            }
        };
        let mut found = Vec::new();
        let mut next_token = None;
        loop {
            let request = client
                .list_commands()
                .set_filters(Some(filters.clone()))
                .max_results(COMMANDS_PAGE)
                .set_next_token(next_token);
            let page = self
                .call("ListCommands", &scope.region, || {
                    let request = request.clone();
                    async move { request.send().await.map_err(|e| classify(e, with_role)) }
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error @ (SsmError::AccessDenied(_) | SsmError::Validation(_))) => {
                    return SearchResult::Refused {
                        message: error.to_string(),
                    }
                }
                Err(error) => {
                    return SearchResult::Failed {
                        message: error.to_string(),
                    }
                }
            };
            for command in page.commands() {
                if command.comment().is_some_and(|c| carries(c, marker)) {
                    let requested = command
                        .requested_date_time()
                        .and_then(|t| Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok())
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    found.push(Found {
                        command_id: command.command_id().unwrap_or_default().to_string(),
                        requested,
                    });
                }
            }
            next_token = page.next_token().map(str::to_string);
            if next_token.is_none() {
                return SearchResult::Listed(found);
            }
        }
    }

    /// One command's state and counts (`ListCommands` by id); `None` while SSM does not list
    /// it yet (eventual consistency) or no longer (past its history).
    pub async fn command(
        &self,
        scope: &Scope,
        command_id: &str,
    ) -> Result<Option<CommandSummary>, SsmError> {
        let with_role = scope.role.is_some();
        let request = self
            .client(&scope.region, &scope.role)
            .await
            .list_commands()
            .command_id(command_id);
        self.call("ListCommands", &scope.region, || {
            let request = request.clone();
            async move {
                let out = request.send().await.map_err(|e| classify(e, with_role))?;
                Ok(out.commands().first().map(CommandSummary::from))
            }
        })
        .await
    }

    /// The nodes SSM lists for a command so far (`ListCommandInvocations` without details,
    /// every page).
    pub async fn command_nodes(
        &self,
        scope: &Scope,
        command_id: &str,
    ) -> Result<Vec<String>, SsmError> {
        let with_role = scope.role.is_some();
        let client = self.client(&scope.region, &scope.role).await;
        let mut nodes = Vec::new();
        let mut next_token = None;
        loop {
            let request = client
                .list_command_invocations()
                .command_id(command_id)
                .max_results(super::PAGE_SIZE)
                .set_next_token(next_token);
            let page = self
                .call("ListCommandInvocations", &scope.region, || {
                    let request = request.clone();
                    async move { request.send().await.map_err(|e| classify(e, with_role)) }
                })
                .await?;
            nodes.extend(
                page.command_invocations()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string)),
            );
            next_token = page.next_token().map(str::to_string);
            if next_token.is_none() {
                return Ok(nodes);
            }
        }
    }

    /// Asks SSM to cancel the command on every node (`CancelCommand`).
    pub async fn cancel_command(&self, scope: &Scope, command_id: &str) -> Result<(), SsmError> {
        let with_role = scope.role.is_some();
        let request = self
            .client(&scope.region, &scope.role)
            .await
            .cancel_command()
            .command_id(command_id);
        self.call("CancelCommand", &scope.region, || {
            let request = request.clone();
            async move {
                request
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(e, with_role))
            }
        })
        .await
    }
}

/// The metrics outcome of a `SendCommand` SSM throttled (the one that slows the budget).
const THROTTLED: &str = "Throttled";

/// What a failed `SendCommand` says about the command's existence, with the call's metrics
/// outcome.
fn send_failure<E>(error: SdkError<E>, with_role: bool) -> (SendResult, &'static str)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = &error {
        let status = service.raw().status().as_u16();
        let code = service.err().code().unwrap_or_default().to_string();
        let message = service.err().message().unwrap_or_default().to_string();
        let text = if code.is_empty() {
            format!("HTTP {status}: {message}")
        } else {
            format!("{code}: {message}")
        };
        return if not_created_by(&code) {
            (SendResult::NotCreated { message: text }, THROTTLED)
        } else if code == "ExpiredTokenException" {
            // The operator's own session expired: SSM refused the request before creating
            // anything, and the credentials chain (IRSA, Pod Identity, IMDS) renews it.
            (SendResult::NotCreated { message: text }, "SsmUnavailable")
        } else if super::ACCESS_CODES.contains(&code.as_str()) {
            // The caller's identity may not send (IAM): fixed outside.
            (
                SendResult::Blocked {
                    reason: "AccessDenied",
                    message: text,
                },
                "AccessDenied",
            )
        } else if (400..500).contains(&status) {
            // SSM checks a request before it creates anything: a 4xx created nothing, and
            // the same request will be refused again.
            (SendResult::Refused { message: text }, "SendFailed")
        } else {
            (SendResult::Unknown { message: text }, "SendUnknown")
        };
    }
    // Credentials are loaded before the request leaves: if they did not load, nothing was
    // sent. STS refusing the namespace's role is fixed outside; anything else (STS 5xx,
    // throttling, timeouts, connection errors, the operator's own credentials) is transient.
    if let Some(failure) = super::role_credentials_failure(&error) {
        return match failure {
            failure @ SsmError::AssumeRoleFailed(_) if with_role => (
                SendResult::Blocked {
                    reason: "AssumeRoleFailed",
                    message: failure.to_string(),
                },
                "AssumeRoleFailed",
            ),
            failure if with_role => (
                SendResult::NotCreated {
                    message: failure.message().to_string(),
                },
                "SsmUnavailable",
            ),
            _ => (
                SendResult::NotCreated {
                    message: format!(
                        "could not load the operator's AWS credentials: {}",
                        DisplayErrorContext(&error)
                    )
                    .chars()
                    .take(super::STS_DETAIL_CHARS)
                    .collect(),
                },
                "SsmUnavailable",
            ),
        };
    }
    let unknown = classify(error, with_role);
    (
        SendResult::Unknown {
            message: unknown.message().to_string(),
        },
        "SendUnknown",
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_ssm::config::http::HttpResponse;
    use aws_sdk_ssm::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ssm::operation::send_command::SendCommandError;

    use super::*;
    use crate::aws::ssm::tests::{io, ssm_nowhere, ssm_via, sts_said, transient_sts_failures};

    /// SSM's own answer to `SendCommand`: HTTP `status` with `code`.
    fn ssm_said(status: u16, code: &str, message: &str) -> SdkError<SendCommandError> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(
            SendCommandError::generic(meta),
            HttpResponse::new(status.try_into().expect("status"), "{}".into()),
        )
    }

    fn role() -> Role {
        Role {
            namespace: "ops".into(),
            arn: "arn:aws:iam::111122223333:role/r".into(),
            external_id: None,
        }
    }

    #[test]
    fn a_send_whose_role_credentials_did_not_load_was_not_made() {
        for (what, error, words) in transient_sts_failures() {
            let (result, outcome) = send_failure(error, true);
            let SendResult::NotCreated { message } = &result else {
                panic!("{what}: nothing was sent, yet {result:?}");
            };
            assert!(
                message.contains("role credentials from STS"),
                "{what}: {message}"
            );
            assert!(message.contains(words), "{what}: {message}");
            assert_eq!(
                outcome, "SsmUnavailable",
                "{what}: never counted as throttled"
            );
        }

        // A refusal STS will repeat: fixed outside, as before.
        let (result, outcome) = send_failure(sts_said(403, "AccessDenied", "not trusted"), true);
        assert_eq!(
            result,
            SendResult::Blocked {
                reason: "AssumeRoleFailed",
                message: "could not assume the namespace's role: AccessDenied: not trusted".into(),
            }
        );
        assert_eq!(outcome, "AssumeRoleFailed");

        // Without a role the operator's own credentials did not load: nothing sent either.
        let (result, outcome) =
            send_failure(sts_said(403, "AccessDenied", "no web identity"), false);
        let SendResult::NotCreated { message } = &result else {
            panic!("the operator's credentials did not load, yet {result:?}");
        };
        assert!(
            message.starts_with("could not load the operator's AWS credentials: "),
            "{message}"
        );
        assert_eq!(outcome, "SsmUnavailable");
    }

    #[test]
    fn what_ssm_itself_answers_to_a_send_decides_whether_it_may_exist() {
        let cases: Vec<(SdkError<SendCommandError>, &str, &str)> = vec![
            // The operator's own session expired: SSM refused before creating anything, and
            // the credentials chain renews it. Not an IAM refusal, not a throttle.
            (
                ssm_said(
                    400,
                    "ExpiredTokenException",
                    "The security token is expired",
                ),
                "NotCreated",
                "SsmUnavailable",
            ),
            (
                ssm_said(400, "ThrottlingException", "Rate exceeded"),
                "NotCreated",
                "Throttled",
            ),
            (
                ssm_said(400, "AccessDeniedException", "not authorized"),
                "Blocked",
                "AccessDenied",
            ),
            (
                ssm_said(400, "InvalidDocument", "no such document"),
                "Refused",
                "SendFailed",
            ),
            (
                ssm_said(500, "InternalServerError", "oops"),
                "Unknown",
                "SendUnknown",
            ),
            // SSM itself unreachable mid-request (not a credentials failure): may exist.
            (
                SdkError::dispatch_failure(ConnectorError::io(io(
                    std::io::ErrorKind::ConnectionReset,
                ))),
                "Unknown",
                "SendUnknown",
            ),
        ];
        for (error, kind, outcome) in cases {
            let what = format!("{error:?}");
            let (result, counted) = send_failure(error, true);
            let seen = match &result {
                SendResult::Accepted { .. } => "Accepted",
                SendResult::Refused { .. } => "Refused",
                SendResult::NotCreated { .. } => "NotCreated",
                SendResult::Blocked { .. } => "Blocked",
                SendResult::Unknown { .. } => "Unknown",
            };
            assert_eq!((seen, counted), (kind, outcome), "{what}: {result:?}");
        }
    }

    fn spec() -> CommandSpec {
        CommandSpec {
            document_name: "AWS-RunShellScript".into(),
            instance_ids: Some(vec!["i-0123456789abcdef0".into()]),
            ..CommandSpec::default()
        }
    }

    #[tokio::test]
    async fn a_send_to_a_region_that_never_resolves_is_blocked_after_three() {
        // Each send left nothing (the name did not resolve): not sent again at once, never
        // "unknown" (a search there could not answer either); the third is Stalled, rarely
        // tried again, and says which region.
        let ssm = ssm_nowhere().await;
        let scope = Scope {
            region: Some("xx-nowhere-9".into()),
            role: None,
        };
        let not_after = Timestamp::now() + Duration::from_secs(60);
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(ssm.send_command(&scope, &spec(), "m", not_after).await);
        }
        assert!(
            matches!(&results[0], SendResult::NotCreated { message } if message.contains("xx-nowhere-9")),
            "{results:?}"
        );
        assert!(
            matches!(results[1], SendResult::NotCreated { .. }),
            "{results:?}"
        );
        let SendResult::Blocked { reason, message } = &results[2] else {
            panic!("{results:?}");
        };
        assert_eq!(*reason, "SsmUnavailable");
        assert!(
            message.contains("region xx-nowhere-9 did not resolve 3 times"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn the_real_assume_role_provider_failing_on_a_send_creates_nothing() {
        use ssm_sim::{Fault, StsSimulator};
        let sts = StsSimulator::start().await.expect("STS simulator");
        let ssm = ssm_via(&sts).await;
        let not_after = Timestamp::now() + Duration::from_secs(60);
        let faults = [
            Fault::ServerError { count: 1 },
            Fault::Throttle { count: 1 },
            Fault::DropConnection { count: 1 },
            Fault::Slow {
                count: 1,
                delay: Duration::from_secs(2),
            },
        ];
        for (n, fault) in faults.into_iter().enumerate() {
            // A fresh role each time: a fresh client whose credentials are not cached.
            let mut role = role();
            role.arn = format!("arn:aws:iam::111122223333:role/r{n}");
            sts.allow_role(&role.arn, None);
            sts.inject(fault);
            let scope = Scope {
                region: None,
                role: Some(role),
            };
            let result = ssm.send_command(&scope, &spec(), "op:1", not_after).await;
            assert!(
                matches!(&result, SendResult::NotCreated { message }
                    if message.contains("role credentials from STS")),
                "{fault:?}: {result:?}"
            );
        }
        assert_eq!(ssm.budget.rate(), 1000.0, "STS never slows the SSM budget");
        let metrics = ssm.metrics.encode().expect("metrics");
        assert!(
            metrics.contains(
                "ssm_operator_ssm_calls_total{operation=\"SendCommand\",outcome=\"SsmUnavailable\"} 4"
            ),
            "{metrics}"
        );

        let refused = Scope {
            region: None,
            role: Some(Role {
                arn: "arn:aws:iam::444455556666:role/untrusted".into(),
                ..role()
            }),
        };
        let result = ssm.send_command(&refused, &spec(), "op:1", not_after).await;
        assert!(
            matches!(
                &result,
                SendResult::Blocked {
                    reason: "AssumeRoleFailed",
                    ..
                }
            ),
            "{result:?}"
        );
    }
}
