//! The reconcile of one `Command`, read top to bottom as its steps: decide the send
//! ([`crate::command::send`]), make it or look for it in SSM, follow the run's counts
//! ([`crate::command::status`]) and keep a child `CommandInvocation` for every node SSM reports
//! ([`crate::command::sync`]); a new generation first retires the earlier run, and deletion
//! cancels an unfinished run before the finalizer goes ([`crate::command::teardown`]).
//!
//! Every status write is a compare-and-swap on the resourceVersion the decision was made on
//! ([`Writer::write_command`](crate::k8s::writer::Writer::write_command)): a reconcile that
//! acts on a stale cache, or a second writer, loses the write and decides again instead of
//! sending twice. `SendCommand` is only called after the intent write succeeded. Every change
//! (status, Events, children, finalizer, send, cancel) goes through the fenced writer, so a
//! replica that is not sure it leads changes nothing. What the reconcile shares with the
//! others, and what it remembers, is in [`crate::command::context`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tracing::{debug, info, instrument, warn};

use crate::api::{Command, SendRecord};
use crate::aws::budget;
use crate::aws::ssm::{is_terminal, Recovery};
use crate::command::context::{attempt_of, Context};
use crate::command::expiry;
use crate::command::send::{self, Facts, FollowUp, SendResult, Step, SEND_FAILED, SEND_UNKNOWN};
use crate::command::status::{self as command_status, Change};
use crate::command::sync::sync_children;
use crate::command::teardown::{
    add_finalizer, cancel_before_deletion, remove_finalizer, retire_previous_run, FINALIZER,
};
use crate::k8s::watch::Forget;
use crate::k8s::writer::EventNote;
use crate::tracking::schedule::backoff;
use crate::Error;

/// How soon a reconcile whose write lost a compare-and-swap runs again (the watch usually
/// delivers the newer object first).
const AFTER_CONFLICT: Duration = Duration::from_secs(1);

/// How often a search waits between looks while SSM's listing settles.
const SEARCH_EVERY: Duration = Duration::from_secs(10);

/// Reconciles one `Command`. See the module docs.
#[instrument(skip_all, fields(namespace = %object.namespace().unwrap_or_default(), name = %object.name_any()))]
pub async fn reconcile(object: Arc<Command>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = {
        // The semaphore is never closed; without a permit (impossible) the reconcile goes ahead.
        let _permit = ctx.permits.acquire().await.ok();
        // Its SSM calls count against its namespace's share of the budget.
        let share = Arc::from(object.namespace().unwrap_or_default());
        budget::in_share(share, reconcile_inner(&object, &ctx)).await
    };
    ctx.metrics.reconciled(started.elapsed());
    if let Some(uid) = object.uid() {
        if gone_from_the_api(&result) || ctx.gone(&object) {
            // Deleted meanwhile: what this reconcile remembered must not outlive the watch's
            // forget (which may already have run).
            ctx.forget(&uid);
        } else if result.is_ok() {
            ctx.memo_if_known(&uid, |m| m.failures = 0);
        }
    }
    result
}

/// Whether the API server answered a write with 404: the object is gone.
fn gone_from_the_api(result: &Result<Action, Error>) -> bool {
    let source = match result {
        Err(Error::WriteStatus { source, .. } | Error::RecordEvent { source, .. }) => source,
        Err(Error::Kube(source)) => source,
        _ => return false,
    };
    matches!(source, kube::Error::Api(status) if status.code == 404)
}

/// Retries a failed reconcile with the poll backoff, growing with each failure in a row.
pub fn error_policy(object: Arc<Command>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    warn!(name = %object.name_any(), %error, "Command reconcile failed; retrying");
    if let Some(wait) = error.fixed_retry() {
        return Action::requeue(wait);
    }
    // Only a Command still remembered counts its failures: a deleted one must not come back.
    let failures = ctx
        .memo_if_known(&object.uid().unwrap_or_default(), |m| {
            m.failures += 1;
            m.failures
        })
        .unwrap_or(1);
    Action::requeue(backoff(
        ctx.intervals,
        failures.saturating_sub(1),
        fastrand::f64(),
    ))
}

async fn reconcile_inner(object: &Command, ctx: &Context) -> Result<Action, Error> {
    let uid = object.uid().ok_or(Error::MissingObjectKey("uid"))?;
    if object.metadata.deletion_timestamp.is_some() {
        if object.finalizers().iter().any(|f| f == FINALIZER) {
            cancel_before_deletion(object, ctx).await?;
            remove_finalizer(object, ctx).await?;
        }
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    // With --namespace-roles, nothing (no finalizer, no intent, no call) before the
    // namespace's role is known: a send must never go out with the operator's own identity.
    ctx.scope(object)?;
    if let Some(action) = expiry::rebase_ttl_change(object, ctx).await? {
        return Ok(action);
    }
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.as_ref();
    let now = Timestamp::now();
    let attempt = status
        .and_then(|s| s.send.as_ref())
        .filter(|s| s.generation == generation)
        .map(attempt_of);
    let (unsent, accepted) = ctx.memo(&uid, |m| {
        let unsent = m
            .unsent
            .filter(|(a, _)| Some(*a) == attempt)
            .map(|(_, not_before)| not_before);
        let accepted = m
            .accepted
            .clone()
            .filter(|(a, _)| Some(*a) == attempt)
            .map(|(_, id)| id);
        (unsent, accepted)
    });
    let no_command_id = status.is_none_or(|s| s.command_id.is_none());
    if let (Some(command_id), true) = (accepted, no_command_id) {
        // SSM accepted this attempt; only the status write recording it was lost.
        let next = FollowUp::Adopt {
            command_id,
            duplicates: Vec::new(),
        };
        return follow(object, ctx, next, None).await;
    }
    if let Some(wait) = unsent.and_then(|t| t.checked_duration_since(Instant::now())) {
        return Ok(Action::requeue(wait));
    }
    let known_unsent = unsent.is_some();
    let step = send::decide(&Facts {
        uid: &uid,
        generation,
        status,
        gate: ctx.policy.gate(&object.spec.document_name),
        known_unsent,
        now,
    });
    debug!(?step, "decided");
    match step {
        // A finished run was fully synced (children first) before its last status write.
        Step::Track { .. }
            if status.is_some_and(|s| {
                s.observed_generation == Some(generation) && command_status::run_finished(s)
            }) =>
        {
            expiry::expire(object, ctx, Action::await_change()).await
        }
        Step::Track { command_id } => track(object, ctx, &command_id).await,
        Step::Settled => expiry::expire(object, ctx, Action::await_change()).await,
        Step::Refuse { reason } => {
            retire_previous_run(object, ctx, generation, false).await?;
            let message = command_status::gate_message(reason, &object.spec.document_name);
            let change = command_status::refused(status, generation, reason, &message, &Time(now));
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        Step::Unknown { message } => {
            retire_previous_run(object, ctx, generation, false).await?;
            let change =
                command_status::refused(status, generation, SEND_UNKNOWN, &message, &Time(now));
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        Step::Intend { mut record } => {
            // The fingerprint that tells a later TTL-only change from a new run.
            record.spec_hash = Some(crate::api::lifecycle::spec_hash(&object.spec));
            intend_and_send(object, ctx, record).await
        }
        Step::Search {
            marker,
            attempted,
            window,
            ..
        } => {
            let result = ctx
                .ssm
                .find_commands(&ctx.scope(object)?, &marker, window)
                .await;
            info!(?result, %marker, "looked for an earlier send in ListCommands");
            follow(
                object,
                ctx,
                send::after_search(result, attempted, now),
                None,
            )
            .await
        }
    }
}

/// `action` when the write went through; a quick retry when it lost the compare-and-swap.
fn settle(stored: Option<Command>, action: Action) -> Action {
    match stored {
        Some(_) => action,
        None => Action::requeue(AFTER_CONFLICT),
    }
}

/// Records the change's Event, then writes its status (compare-and-swap). `Ok(None)`: the
/// object changed meanwhile (nothing written). Nothing new: nothing written, `object` returned.
async fn write(object: &Command, ctx: &Context, change: Change) -> Result<Option<Command>, Error> {
    if !change.differs_from(object.status.as_ref()) {
        return Ok(Some(object.clone()));
    }
    write_always(object, ctx, change).await
}

/// [`write`] even when the status is unchanged: the compare-and-swap itself is the point (an
/// intent must be stored over exactly the object it was decided on).
async fn write_always(
    object: &Command,
    ctx: &Context,
    change: Change,
) -> Result<Option<Command>, Error> {
    if let Some(note) = &change.note {
        ctx.writer.record_command(object, note).await?;
    }
    let stored = ctx.writer.write_command(object, &change.status).await?;
    match &stored {
        Some(_) => {
            let ready = change.status.conditions.first();
            info!(
                status = change.status.status.as_deref().unwrap_or("-"),
                reason = ready.map_or("-", |c| c.reason.as_str()),
                "Command status updated"
            );
        }
        None => debug!("the Command changed meanwhile; deciding again"),
    }
    Ok(stored)
}

/// A new attempt: the previous run goes, the finalizer is in place, the intent is stored, and
/// only then does `SendCommand` run.
async fn intend_and_send(
    object: &Command,
    ctx: &Context,
    record: SendRecord,
) -> Result<Action, Error> {
    let generation = record.generation;
    retire_previous_run(object, ctx, generation, true).await?;
    let Some(object) = add_finalizer(object, ctx).await? else {
        return Ok(Action::requeue(AFTER_CONFLICT));
    };
    let now = Time(Timestamp::now());
    let change = command_status::intended(object.status.as_ref(), generation, &record, &now);
    let Some(stored) = write_always(&object, ctx, change).await? else {
        return Ok(Action::requeue(AFTER_CONFLICT));
    };
    // Fenced like every change: a lead lost between the write and the send ends here, and the
    // next leader searches first.
    let comment = send::comment(object.spec.comment.as_deref(), &record.marker);
    let result = ctx
        .writer
        .send_command(
            &ctx.ssm,
            &ctx.scope(&object)?,
            &object.spec,
            &comment,
            not_after(&record),
        )
        .await?;
    info!(?result, marker = %record.marker, generation, "SendCommand");
    let uid = object.uid().unwrap_or_default();
    let attempt = attempt_of(&record);
    match &result {
        SendResult::Accepted { command_id } => {
            let id = command_id.clone();
            ctx.memo(&uid, |m| m.accepted = Some((attempt, id)));
        }
        SendResult::NotCreated { .. } => {
            let wait = backoff(ctx.intervals, 2, fastrand::f64());
            ctx.memo(&uid, |m| m.unsent = Some((attempt, Instant::now() + wait)));
        }
        SendResult::Blocked { .. } => {
            let recheck = ctx.recheck;
            ctx.memo(&uid, |m| {
                m.unsent = Some((attempt, Instant::now() + recheck))
            });
        }
        SendResult::Refused { .. } | SendResult::Unknown { .. } => {}
    }
    follow(&stored, ctx, send::after_send(result), Some(&record)).await
}

/// The last moment the attempt's request may leave ([`send::MAX_SEND_DELAY`] after its intent).
fn not_after(record: &SendRecord) -> Timestamp {
    record
        .time
        .0
        .checked_add(send::MAX_SEND_DELAY)
        .unwrap_or(record.time.0)
}

/// Acts on the step after a send or a search.
async fn follow(
    object: &Command,
    ctx: &Context,
    next: FollowUp,
    sent: Option<&SendRecord>,
) -> Result<Action, Error> {
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.as_ref();
    let now = Time(Timestamp::now());
    let uid = object.uid().unwrap_or_default();
    match next {
        FollowUp::Adopt {
            command_id,
            duplicates,
        } => {
            if !duplicates.is_empty() {
                let note = EventNote {
                    warning: true,
                    reason: "DuplicateSend".into(),
                    action: "SendingToSent".into(),
                    message: format!(
                        "SSM holds more than one command with this generation's marker: \
                         tracking {command_id}, not {}",
                        duplicates.join(", ")
                    ),
                };
                ctx.writer.record_command(object, &note).await?;
            }
            let change = command_status::adopted(status, generation, &command_id, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(ctx.intervals.min),
            ))
        }
        FollowUp::Failed { message } => {
            let message = format!("SSM refused the send: {message}");
            let change = command_status::refused(status, generation, SEND_FAILED, &message, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        FollowUp::Unknown { message } => {
            let change = command_status::refused(status, generation, SEND_UNKNOWN, &message, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        FollowUp::Retry { message } => {
            let what = if sent.is_some() {
                "SSM did not create the command"
            } else {
                "could not look for the command in SSM"
            };
            let message = format!("{what}: {message}; trying again");
            let change = command_status::sending(status, generation, &message, &now);
            let (failures, not_before) = ctx.memo(&uid, |m| {
                m.quiet += 1;
                (m.quiet, m.unsent.map(|(_, t)| t))
            });
            let wait = match (sent, not_before) {
                // The send's own retry time (kept in the memo for reconciles our write causes).
                (Some(_), Some(t)) => t.saturating_duration_since(Instant::now()),
                _ => backoff(ctx.intervals, failures - 1, fastrand::f64()),
            };
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(wait),
            ))
        }
        FollowUp::Blocked { reason, message } => {
            let message = format!("SSM did not create the command: {message}");
            let change = command_status::refused(status, generation, reason, &message, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(ctx.recheck),
            ))
        }
        FollowUp::Search => Ok(Action::requeue(Duration::from_secs(1))),
        FollowUp::SearchAgain { after } => {
            let message = "SSM did not say whether it created the command: looking for it in \
                           ListCommands while SSM's listing catches up";
            let change = command_status::sending(status, generation, message, &now);
            let wait = after.min(SEARCH_EVERY).max(Duration::from_secs(1));
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(wait),
            ))
        }
        FollowUp::Resend => {
            // Not in SSM's settled listing: never created. The same marker, a new attempt.
            let attempt = status.and_then(|s| s.send.as_ref()).map(attempt_of);
            if let Some(attempt) = attempt {
                ctx.memo(&uid, |m| m.unsent = Some((attempt, Instant::now())));
            }
            Ok(Action::requeue(Duration::from_millis(100)))
        }
    }
}

/// Follows a known run: SSM's counts into status, a child for every node.
async fn track(object: &Command, ctx: &Context, command_id: &str) -> Result<Action, Error> {
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.as_ref();
    let uid = object.uid().unwrap_or_default();
    let scope = ctx.scope(object)?;
    // Woken again right after a poll, most often by the watch showing this process's own
    // status write: SSM is asked at most once per --poll-interval-min per Command. Without
    // this, each write's echo asked again and wrote again (every ~40 ms while counts moved),
    // and the quiet echoes grew the backoff, so the end was seen seconds late.
    let too_soon = ctx.memo(&uid, |m| {
        let since = m.polled.map(|at| at.elapsed());
        let too_soon = since.filter(|since| *since < ctx.intervals.min);
        if too_soon.is_none() {
            m.polled = Some(Instant::now());
        }
        too_soon
    });
    if let Some(since) = too_soon {
        return Ok(Action::requeue(ctx.intervals.min - since));
    }
    let now = Time(Timestamp::now());
    match ctx.ssm.command(&scope, command_id).await {
        Ok(Some(summary)) => {
            let finished = is_terminal(&summary.status);
            let synced = sync_children(
                object,
                ctx,
                &scope,
                command_id,
                summary.target_count,
                finished,
            )
            .await?;
            if let Some((child, why)) = synced.newly_refused.first() {
                let note = EventNote {
                    warning: true,
                    reason: "ChildRefused".into(),
                    action: "CreatingChildren".into(),
                    message: format!(
                        "the API server refused {} child CommandInvocation(s) ({} in all), e.g. \
                         {child}: {why}; the Command's status follows SSM without them",
                        synced.newly_refused.len(),
                        synced.refused
                    ),
                };
                ctx.writer.record_command(object, &note).await?;
            }
            let change = command_status::with_refused_children(
                command_status::observed(status, generation, &summary, &now),
                synced.refused,
            );
            let news = change.differs_from(status);
            let stored = write(object, ctx, change).await?;
            if finished {
                return Ok(settle(stored, Action::await_change()));
            }
            let quiet = ctx.memo(&uid, |m| {
                m.quiet = if news { 0 } else { m.quiet + 1 };
                m.quiet
            });
            Ok(settle(
                stored,
                Action::requeue(backoff(ctx.intervals, quiet, fastrand::f64())),
            ))
        }
        // Not listed yet (SSM's listing lags its send), or no longer (past its history).
        Ok(None) => {
            let quiet = ctx.memo(&uid, |m| {
                m.quiet += 1;
                m.quiet
            });
            Ok(Action::requeue(backoff(
                ctx.intervals,
                quiet,
                fastrand::f64(),
            )))
        }
        Err(error) => {
            let wait = match error.recovery() {
                Recovery::Transient => backoff(ctx.intervals, 2, fastrand::f64()),
                Recovery::OutsideFix | Recovery::SpecChange => ctx.recheck,
            };
            let change = command_status::ssm_error(status, generation, &error, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(wait),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::StreamExt;
    use http::{Request, Response};
    use kube::client::Body;
    use kube::{Api, Client};
    use serde_json::json;

    use crate::api::{CommandSpec, CommandStatus};
    use crate::aws::roles::Roles;
    use crate::aws::ssm::Ssm;
    use crate::command::send::Policy;
    use crate::k8s::leader::Fence;
    use crate::k8s::writer::Writer;
    use crate::runtime::metrics::Metrics;
    use crate::tracking::schedule::PollIntervals;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const WAIT: Duration = Duration::from_secs(10);

    /// A context whose API server is a mock (returned) and whose SSM is nowhere (no test here
    /// reaches SSM).
    fn context() -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let metrics = Arc::new(Metrics::new());
        let ssm = Arc::new(Ssm::new(
            aws_config::SdkConfig::builder().build(),
            metrics.clone(),
            1000.0,
        ));
        let ctx = Context::new(
            client.clone(),
            ssm,
            Arc::new(Roles::disabled()),
            Writer::new(client, Some("test".into()), metrics.clone(), Fence::open()),
            Policy::new(true, &[]).expect("no globs"),
            PollIntervals {
                min: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            Duration::from_secs(300),
            metrics,
            4,
        );
        (Arc::new(ctx), handle)
    }

    fn command(uid: &str) -> Command {
        let mut c = Command::new(
            &format!("c-{uid}"),
            CommandSpec {
                document_name: "AWS-RunShellScript".into(),
                instance_ids: Some(vec!["i-0123456789abcdef0".into()]),
                ..CommandSpec::default()
            },
        );
        c.metadata.namespace = Some("ops".into());
        c.metadata.uid = Some(uid.into());
        c.metadata.generation = Some(1);
        c.metadata.resource_version = Some("7".into());
        c
    }

    /// Something remembered for `uid`, as a reconcile leaves it.
    fn remember(ctx: &Context, uid: &str) {
        ctx.memo(uid, |m| m.quiet = 3);
    }

    fn json_response(code: u16, body: &serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("response")
    }

    async fn next_request(
        handle: &mut Handle,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        tokio::time::timeout(WAIT, handle.next_request())
            .await
            .expect("the API server should have been called")
            .expect("mock service dropped")
    }

    /// Answers a list of Commands with `items` at resourceVersion `version`.
    async fn answer_list(handle: &mut Handle, items: &[Command], version: &str) {
        let (request, send) = next_request(handle).await;
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(!query.contains("watch=true"), "a list, not {query}");
        send.send_response(json_response(
            200,
            &json!({
                "apiVersion": "ssm.operator.dev/v1alpha1",
                "kind": "CommandList",
                "metadata": {"resourceVersion": version},
                "items": items,
            }),
        ));
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        tokio::time::timeout(WAIT, async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn a_command_deleted_without_the_finalizer_is_forgotten_by_the_watch_and_a_relist() {
        let (ctx, _api) = context();
        let (service, mut watch_api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Command> = Api::namespaced(Client::new(service, "default"), "ops");
        let (kept, deleted, missed) =
            (command("u-kept"), command("u-deleted"), command("u-missed"));
        for c in [&kept, &deleted, &missed] {
            remember(&ctx, &c.uid().expect("uid"));
        }
        let watched = ctx.watch(api);
        let stream = tokio::spawn(watched.stream.for_each(|_| async {}));

        answer_list(
            &mut watch_api,
            &[kept.clone(), deleted.clone(), missed.clone()],
            "10",
        )
        .await;
        // The watch: `deleted` goes (no finalizer: no reconcile ever sees it deleting), then the
        // history is gone (410) and the watch lists again, no longer showing `missed`.
        let (request, send) = next_request(&mut watch_api).await;
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("watch=true"), "{query}");
        let mut lines = Vec::new();
        for event in [
            json!({"type": "DELETED", "object": deleted}),
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version"}}),
        ] {
            lines.extend(serde_json::to_vec(&event).expect("JSON"));
            lines.push(b'\n');
        }
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(lines))
                .expect("response"),
        );
        until("the deleted Command to be forgotten", || {
            ctx.memo_len() == 2
        })
        .await;
        let memo = |uid: &str| ctx.memo.lock().expect("memo").contains_key(uid);
        assert!(!memo("u-deleted") && memo("u-kept") && memo("u-missed"));

        answer_list(&mut watch_api, std::slice::from_ref(&kept), "20").await;
        until("the re-list to forget what it no longer shows", || {
            ctx.memo_len() == 1
        })
        .await;
        assert!(memo("u-kept"), "a live Command stays remembered");
        stream.abort();
    }

    #[tokio::test]
    async fn a_deletion_the_reconcile_finishes_leaves_nothing_remembered() {
        let (ctx, mut api) = context();
        let mut deleting = command("u-1");
        remember(&ctx, "u-1");
        deleting.metadata.finalizers = Some(vec![FINALIZER.into()]);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let stored = deleting.clone();
        // No status: nothing was sent, so nothing to cancel; only the finalizer goes.
        let server = tokio::spawn(async move {
            let (request, send) = next_request(&mut api).await;
            assert_eq!(request.method(), http::Method::PATCH);
            let mut answer = serde_json::to_value(&stored).expect("JSON");
            answer["metadata"]["finalizers"] = json!([]);
            send.send_response(json_response(200, &answer));
            api
        });
        let action = tokio::time::timeout(WAIT, reconcile(Arc::new(deleting), ctx.clone()))
            .await
            .expect("reconcile finished")
            .expect("reconciled");
        server.await.expect("mock API server");
        assert_eq!(action, Action::await_change());
        assert_eq!(ctx.memo_len(), 0, "nothing left for a deleted Command");
    }

    #[tokio::test]
    async fn a_failed_reconcile_of_a_forgotten_command_does_not_bring_it_back() {
        let (ctx, _api) = context();
        let object = Arc::new(command("u-gone"));
        let error = Error::Cancel {
            command_id: "c0ffee00-0000-4000-8000-000000000000".into(),
            source: crate::aws::ssm::SsmError::Unavailable("SSM unavailable".into()),
        };
        // The watch already forgot it (deleted while its reconcile was in flight).
        error_policy(object, &error, ctx.clone());
        assert_eq!(
            ctx.memo_len(),
            0,
            "nothing remembered for a forgotten Command"
        );
        // A Command still remembered counts its failures in a row.
        remember(&ctx, "u-kept");
        let kept = Arc::new(command("u-kept"));
        error_policy(kept.clone(), &error, ctx.clone());
        error_policy(kept, &error, ctx.clone());
        let failures = ctx
            .memo
            .lock()
            .expect("memo")
            .get("u-kept")
            .map(|m| m.failures);
        assert_eq!(failures, Some(2));
    }

    #[tokio::test]
    async fn a_reconcile_whose_status_write_finds_the_command_gone_leaves_nothing_remembered() {
        let (ctx, mut api) = context();
        let object = command("u-1");
        let stored = object.clone();
        // A first send: finalizer, intent Event, intent status write; the Command was deleted
        // (its finalizer removed by hand) meanwhile, so the write finds nothing.
        let server = tokio::spawn(async move {
            let (request, send) = next_request(&mut api).await;
            assert_eq!(request.method(), http::Method::PATCH);
            let mut answer = serde_json::to_value(&stored).expect("JSON");
            answer["metadata"]["finalizers"] = json!([FINALIZER]);
            answer["metadata"]["resourceVersion"] = json!("8");
            send.send_response(json_response(200, &answer));
            let (request, send) = next_request(&mut api).await;
            assert!(
                request.uri().path().ends_with("/events"),
                "{}",
                request.uri()
            );
            send.send_response(json_response(201, &json!({})));
            let (request, send) = next_request(&mut api).await;
            assert!(
                request.uri().path().ends_with("/c-u-1/status"),
                "{}",
                request.uri()
            );
            send.send_response(json_response(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404,
                        "message": "commands \"c-u-1\" not found"}),
            ));
            api
        });
        let result = tokio::time::timeout(WAIT, reconcile(Arc::new(object.clone()), ctx.clone()))
            .await
            .expect("reconcile finished");
        server.await.expect("mock API server");
        let error = result.expect_err("the write failed");
        error_policy(Arc::new(object), &error, ctx.clone());
        assert_eq!(ctx.memo_len(), 0, "nothing left for a deleted Command");
    }

    #[tokio::test]
    async fn a_reconcile_of_a_command_the_watch_no_longer_holds_leaves_nothing_remembered() {
        let (ctx, _api) = context();
        let (service, mut watch_api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let watched = ctx.watch(Api::namespaced(Client::new(service, "default"), "ops"));
        let store = watched.store.clone();
        let stream = tokio::spawn(watched.stream.for_each(|_| async {}));
        let live = command("u-live");
        answer_list(&mut watch_api, std::slice::from_ref(&live), "10").await;
        tokio::time::timeout(WAIT, store.wait_until_ready())
            .await
            .expect("the watch listed")
            .expect("store");

        // Both wait for a send's retry time: the reconcile makes no call at all.
        let waiting = |uid: &str| {
            let mut c = command(uid);
            let time = Time(Timestamp::now());
            c.status = Some(CommandStatus {
                send: Some(SendRecord {
                    spec_hash: None,
                    generation: 1,
                    marker: send::marker(uid, 1),
                    time: time.clone(),
                    attempt: 1,
                }),
                ..CommandStatus::default()
            });
            let not_before = Instant::now() + Duration::from_secs(60);
            ctx.memo(uid, |m| m.unsent = Some(((1, 1), not_before)));
            c
        };
        let live = waiting("u-live");
        let gone = waiting("u-gone");
        for c in [&live, &gone] {
            let action = tokio::time::timeout(WAIT, reconcile(Arc::new(c.clone()), ctx.clone()))
                .await
                .expect("reconcile finished")
                .expect("reconciled");
            assert_ne!(action, Action::await_change());
        }
        let memo = |uid: &str| ctx.memo.lock().expect("memo").contains_key(uid);
        assert!(memo("u-live"), "a Command the watch holds stays remembered");
        assert!(!memo("u-gone"), "one the watch no longer holds is dropped");
        stream.abort();
    }
}
