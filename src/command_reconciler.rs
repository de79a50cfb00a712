//! The reconcile of one `Command`: decide the send ([`crate::send`]), make it or look for it
//! in SSM, follow the run's counts ([`crate::command_status`]) and create a child
//! `CommandInvocation` for every node SSM reports ([`crate::children`]); on deletion, cancel
//! an unfinished run before the finalizer goes.
//!
//! Every status write is a compare-and-swap on the resourceVersion the decision was made on
//! ([`StatusWriter::write_command`]): a reconcile that acts on a stale cache, or a second
//! writer, loses the write and decides again instead of sending twice. `SendCommand` is only
//! called after the intent write succeeded, and only while the leadership fence is open.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::api::{Command, CommandInvocation, SendRecord};
use crate::children::{self, COMMAND_LABEL};
use crate::command_status::{self, Change};
use crate::leader::Fence;
use crate::mapping::Note;
use crate::metrics::Metrics;
use crate::roles::Roles;
use crate::schedule::{backoff, PollIntervals};
use crate::send::{self, Facts, Next, Policy, SearchResult, Step, SEND_FAILED, SEND_UNKNOWN};
use crate::ssm::{Recovery, Scope, Ssm};
use crate::status_writer::StatusWriter;
use crate::Error;

/// The finalizer that makes deletion cancel an unfinished run first.
pub const FINALIZER: &str = "ssm.operator.dev/cancel";

/// How soon a reconcile whose write lost a compare-and-swap runs again (the watch usually
/// delivers the newer object first).
const AFTER_CONFLICT: Duration = Duration::from_secs(1);
/// How often a search waits between looks while SSM's listing settles.
const SEARCH_EVERY: Duration = Duration::from_secs(10);

/// What this process remembers per `Command` (by uid); losing it costs calls, never a send.
#[derive(Default)]
struct Memo {
    /// The attempt (generation, intent time) this process knows SSM did not create.
    unsent: Option<(i64, Timestamp)>,
    /// Rounds in a row without news (for the polling backoff).
    quiet: u32,
    /// Failed reconciles in a row (for the retry backoff).
    failures: u32,
    /// The run whose children are known, and those children's nodes.
    children: Option<(String, HashSet<String>)>,
}

/// Everything a `Command` reconcile needs, shared by all runs.
pub struct CommandContext {
    /// For finalizers and children.
    pub client: Client,
    /// SSM access (shared budget).
    pub ssm: Arc<Ssm>,
    /// The role each namespace's calls use.
    pub roles: Arc<Roles>,
    /// Status writes and Events.
    pub writer: StatusWriter,
    /// `--send-commands` / `--allowed-documents`.
    pub policy: Policy,
    /// Poll backoff bounds.
    pub intervals: PollIntervals,
    /// How often a run stalled on an error an outside fix can cure is looked at again.
    pub recheck: Duration,
    /// Leadership: no send unless it is open.
    pub fence: Fence,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    memo: Mutex<HashMap<String, Memo>>,
}

impl CommandContext {
    /// A context; see the fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        ssm: Arc<Ssm>,
        roles: Arc<Roles>,
        writer: StatusWriter,
        policy: Policy,
        intervals: PollIntervals,
        recheck: Duration,
        fence: Fence,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            ssm,
            roles,
            writer,
            policy,
            intervals,
            recheck,
            fence,
            metrics,
            memo: Mutex::new(HashMap::new()),
        }
    }

    fn memo<T>(&self, uid: &str, f: impl FnOnce(&mut Memo) -> T) -> T {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        f(memo.entry(uid.to_string()).or_default())
    }

    fn forget(&self, uid: &str) {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }
}

/// Reconciles one `Command`. See the module docs.
#[instrument(skip_all, fields(namespace = %object.namespace().unwrap_or_default(), name = %object.name_any()))]
pub async fn reconcile(object: Arc<Command>, ctx: Arc<CommandContext>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&object, &ctx).await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        if let Some(uid) = object.uid() {
            ctx.memo(&uid, |m| m.failures = 0);
        }
    }
    result
}

/// Retries a failed reconcile with the poll backoff, growing with each failure in a row.
pub fn error_policy(object: Arc<Command>, error: &Error, ctx: Arc<CommandContext>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    warn!(name = %object.name_any(), %error, "Command reconcile failed; retrying");
    let failures = ctx.memo(&object.uid().unwrap_or_default(), |m| {
        m.failures += 1;
        m.failures
    });
    Action::requeue(backoff(
        ctx.intervals,
        failures.saturating_sub(1),
        fastrand::f64(),
    ))
}

async fn reconcile_inner(object: &Command, ctx: &CommandContext) -> Result<Action, Error> {
    let uid = object.uid().ok_or(Error::MissingObjectKey("uid"))?;
    if object.metadata.deletion_timestamp.is_some() {
        if object.finalizers().iter().any(|f| f == FINALIZER) {
            cancel_before_deletion(object, ctx).await?;
            remove_finalizer(object, ctx).await?;
        }
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.as_ref();
    let now = Timestamp::now();
    let intent_time = status
        .and_then(|s| s.send.as_ref())
        .filter(|s| s.generation == generation)
        .map(|s| s.time.0);
    let known_unsent = ctx.memo(&uid, |m| {
        intent_time.is_some() && m.unsent == intent_time.map(|t| (generation, t))
    });
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
            Ok(Action::await_change())
        }
        Step::Track { command_id } => track(object, ctx, &command_id).await,
        Step::Settled => Ok(Action::await_change()),
        Step::Refuse { reason } => {
            let message = command_status::gate_message(reason, &object.spec.document_name);
            let change = command_status::refused(status, generation, reason, &message, &Time(now));
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        Step::Unknown { message } => {
            let change =
                command_status::refused(status, generation, SEND_UNKNOWN, &message, &Time(now));
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        Step::Intend { record } => intend_and_send(object, ctx, record).await,
        Step::Search { marker, since, .. } => {
            let result = ctx
                .ssm
                .find_commands(&scope(object, ctx), &marker, since)
                .await;
            let attempted = intent_time.unwrap_or(now);
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

/// Where the Command's SSM calls go, and as whom.
fn scope(object: &Command, ctx: &CommandContext) -> Scope {
    Scope {
        region: object.spec.region.clone(),
        role: ctx.roles.role_for(&object.namespace().unwrap_or_default()),
    }
}

/// Records the change's Event, then writes its status (compare-and-swap). `Ok(None)`: the
/// object changed meanwhile (nothing written). Nothing new: nothing written, `object` returned.
async fn write(
    object: &Command,
    ctx: &CommandContext,
    change: Change,
) -> Result<Option<Command>, Error> {
    if !change.differs_from(object.status.as_ref()) {
        return Ok(Some(object.clone()));
    }
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
    ctx: &CommandContext,
    record: SendRecord,
) -> Result<Action, Error> {
    let generation = record.generation;
    retire_previous_run(object, ctx, generation).await?;
    let Some(object) = add_finalizer(object, ctx).await? else {
        return Ok(Action::requeue(AFTER_CONFLICT));
    };
    let now = Time(Timestamp::now());
    let change = command_status::intended(object.status.as_ref(), generation, &record, &now);
    let Some(stored) = write(&object, ctx, change).await? else {
        return Ok(Action::requeue(AFTER_CONFLICT));
    };
    if !ctx.fence.allows_writes() {
        // Lost the lead between the write and the send: the next leader searches first.
        return Err(Error::Fenced);
    }
    let comment = send::comment(object.spec.comment.as_deref(), &record.marker);
    let result = ctx
        .ssm
        .send_command(&scope(&object, ctx), &object.spec, &comment)
        .await;
    info!(?result, marker = %record.marker, generation, "SendCommand");
    let uid = object.uid().unwrap_or_default();
    if matches!(result, send::SendResult::NotCreated { .. }) {
        ctx.memo(&uid, |m| m.unsent = Some((generation, record.time.0)));
    }
    follow(&stored, ctx, send::after_send(result), Some(&record)).await
}

/// Acts on the step after a send or a search.
async fn follow(
    object: &Command,
    ctx: &CommandContext,
    next: Next,
    sent: Option<&SendRecord>,
) -> Result<Action, Error> {
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.as_ref();
    let now = Time(Timestamp::now());
    let uid = object.uid().unwrap_or_default();
    match next {
        Next::Adopt {
            command_id,
            duplicates,
        } => {
            if !duplicates.is_empty() {
                let note = Note {
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
        Next::Failed { message } => {
            let message = format!("SSM refused the send: {message}");
            let change = command_status::refused(status, generation, SEND_FAILED, &message, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        Next::Unknown { message } => {
            let change = command_status::refused(status, generation, SEND_UNKNOWN, &message, &now);
            Ok(settle(
                write(object, ctx, change).await?,
                Action::await_change(),
            ))
        }
        Next::Retry { message } => {
            let what = if sent.is_some() {
                "SSM did not create the command"
            } else {
                "could not look for the command in SSM"
            };
            let message = format!("{what}: {message}; trying again");
            let change = command_status::sending(status, generation, &message, &now);
            let failures = ctx.memo(&uid, |m| {
                m.quiet += 1;
                m.quiet
            });
            let wait = backoff(ctx.intervals, failures - 1, fastrand::f64());
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(wait),
            ))
        }
        Next::Search => Ok(Action::requeue(Duration::from_secs(1))),
        Next::SearchAgain { after } => {
            let message = "SSM did not say whether it created the command: looking for it in \
                           ListCommands while SSM's listing catches up";
            let change = command_status::sending(status, generation, message, &now);
            let wait = after.min(SEARCH_EVERY).max(Duration::from_secs(1));
            Ok(settle(
                write(object, ctx, change).await?,
                Action::requeue(wait),
            ))
        }
        Next::Resend => {
            // Not in SSM's settled listing: never created. The same marker, a new attempt.
            let attempted = status.and_then(|s| s.send.as_ref()).map(|s| s.time.0);
            if let Some(attempted) = attempted {
                ctx.memo(&uid, |m| m.unsent = Some((generation, attempted)));
            }
            Ok(Action::requeue(Duration::from_millis(100)))
        }
    }
}

/// Follows a known run: SSM's counts into status, a child for every node.
async fn track(object: &Command, ctx: &CommandContext, command_id: &str) -> Result<Action, Error> {
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.as_ref();
    let uid = object.uid().unwrap_or_default();
    let scope = scope(object, ctx);
    let now = Time(Timestamp::now());
    match ctx.ssm.command(&scope, command_id).await {
        Ok(Some(summary)) => {
            let finished = crate::mapping::is_terminal(&summary.status);
            sync_children(
                object,
                ctx,
                &scope,
                command_id,
                summary.target_count,
                finished,
            )
            .await?;
            let change = command_status::observed(status, generation, &summary, &now);
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
        Ok(None) => Ok(Action::requeue(ctx.intervals.min)),
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

/// Creates the children SSM's nodes call for: the named instance ids, or the nodes SSM lists
/// for targets (asked only while fewer children are known than SSM counts targets, and once
/// more when the run has finished).
async fn sync_children(
    object: &Command,
    ctx: &CommandContext,
    scope: &Scope,
    command_id: &str,
    target_count: i32,
    finished: bool,
) -> Result<(), Error> {
    let uid = object.uid().unwrap_or_default();
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<CommandInvocation> = Api::namespaced(ctx.client.clone(), &namespace);
    let known = ctx.memo(&uid, |m| {
        m.children
            .as_ref()
            .filter(|(id, _)| id == command_id)
            .map(|(_, nodes)| nodes.clone())
    });
    let mut known = match known {
        Some(known) => known,
        None => existing_children(object, &api, command_id).await?,
    };
    let enough = usize::try_from(target_count).unwrap_or(0) <= known.len();
    if enough && !finished {
        ctx.memo(&uid, |m| m.children = Some((command_id.to_string(), known)));
        return Ok(());
    }
    // Named nodes are the invocations SSM makes; only targets need SSM's list.
    let named = object
        .spec
        .instance_ids
        .clone()
        .filter(|ids| !ids.is_empty());
    let listed = match named {
        Some(ids) => Ok(ids),
        None => ctx.ssm.command_nodes(scope, command_id).await,
    };
    let nodes = match listed {
        Ok(nodes) => nodes,
        Err(error) => {
            warn!(%error, "could not list the command's nodes; children follow later");
            ctx.memo(&uid, |m| m.children = Some((command_id.to_string(), known)));
            return Ok(());
        }
    };
    for node in nodes {
        if known.contains(&node) {
            continue;
        }
        let child = children::child(object, command_id, &node);
        match api.create(&PostParams::default(), &child).await {
            Ok(_) => info!(child = %child.name_any(), "child CommandInvocation created"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => {
                return Err(Error::Kube(source));
            }
        }
        known.insert(node);
    }
    ctx.memo(&uid, |m| m.children = Some((command_id.to_string(), known)));
    Ok(())
}

/// The nodes of `command_id` that already have a child; children of any other run are
/// deleted (a new generation's run replaces the old one's).
async fn existing_children(
    object: &Command,
    api: &Api<CommandInvocation>,
    command_id: &str,
) -> Result<HashSet<String>, Error> {
    let selector = format!(
        "{COMMAND_LABEL}={}",
        children::label_value(&object.name_any())
    );
    let listed = api.list(&ListParams::default().labels(&selector)).await?;
    let uid = object.uid().unwrap_or_default();
    let mut nodes = HashSet::new();
    for child in listed {
        let ours = child.owner_references().iter().any(|o| o.uid == uid);
        if !ours {
            continue;
        }
        if child.spec.command_id == command_id {
            nodes.insert(child.spec.instance_id.clone());
        } else {
            delete_child(api, &child.name_any()).await?;
        }
    }
    Ok(nodes)
}

async fn delete_child(api: &Api<CommandInvocation>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(child = %name, "child of an earlier run deleted");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(Error::Kube(error)),
    }
}

/// Before a new generation's send: an unfinished earlier run is cancelled, and its children go.
async fn retire_previous_run(
    object: &Command,
    ctx: &CommandContext,
    generation: i64,
) -> Result<(), Error> {
    let Some(status) = object.status.as_ref() else {
        return Ok(());
    };
    let Some(old) = status.command_id.as_ref().filter(|_| {
        status
            .send
            .as_ref()
            .is_some_and(|s| s.generation != generation)
    }) else {
        return Ok(());
    };
    if !command_status::run_finished(status) {
        match ctx.ssm.cancel_command(&scope(object, ctx), old).await {
            Ok(()) => info!(command_id = %old, "earlier run cancelled for the new generation"),
            Err(error) => warn!(command_id = %old, %error, "could not cancel the earlier run"),
        }
    }
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<CommandInvocation> = Api::namespaced(ctx.client.clone(), &namespace);
    // No child belongs to the run about to be sent: every earlier child goes.
    existing_children(object, &api, "").await?;
    let uid = object.uid().unwrap_or_default();
    ctx.memo(&uid, |m| m.children = None);
    Ok(())
}

/// Deletion: cancels the run if SSM may still be running it (a run whose send is unknown is
/// looked for first). Permanent SSM errors are reported and do not block deletion.
async fn cancel_before_deletion(object: &Command, ctx: &CommandContext) -> Result<(), Error> {
    let Some(status) = object.status.as_ref() else {
        return Ok(());
    };
    let scope = scope(object, ctx);
    let mut runs = Vec::new();
    match (&status.command_id, &status.send) {
        (Some(id), _) if !command_status::run_finished(status) => runs.push(id.clone()),
        (None, Some(intent)) => {
            let since = intent
                .time
                .0
                .checked_sub(send::CLOCK_SKEW)
                .unwrap_or(Timestamp::UNIX_EPOCH);
            match ctx.ssm.find_commands(&scope, &intent.marker, since).await {
                SearchResult::Listed(found) => runs.extend(found.into_iter().map(|f| f.command_id)),
                SearchResult::Failed { message } => {
                    return Err(Error::Cancel(format!(
                        "looking for the run to cancel before deletion: {message}"
                    )))
                }
                SearchResult::Refused { message } => {
                    warn!(%message, "cannot look for the run to cancel; deleting anyway")
                }
            }
        }
        _ => {}
    }
    for id in runs {
        match ctx.ssm.cancel_command(&scope, &id).await {
            Ok(()) => info!(command_id = %id, "run cancelled: the Command is being deleted"),
            Err(error) if error.recovery() == Recovery::Transient => {
                return Err(Error::Cancel(format!(
                    "cancelling {id} before deletion: {error}"
                )))
            }
            Err(error) => {
                warn!(command_id = %id, %error, "could not cancel the run; deleting anyway")
            }
        }
    }
    Ok(())
}

/// Adds the finalizer (a no-op when present). `Ok(None)`: the object changed meanwhile.
async fn add_finalizer(object: &Command, ctx: &CommandContext) -> Result<Option<Command>, Error> {
    if object.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Some(object.clone()));
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    patch_finalizers(object, ctx, finalizers).await
}

async fn remove_finalizer(object: &Command, ctx: &CommandContext) -> Result<(), Error> {
    let finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(object, ctx, finalizers).await.map(|_| ())
}

/// Sets `metadata.finalizers` if the object is still at its resourceVersion (fenced like
/// every write).
async fn patch_finalizers(
    object: &Command,
    ctx: &CommandContext,
    finalizers: Vec<String>,
) -> Result<Option<Command>, Error> {
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    if !ctx.fence.allows_writes() {
        return Err(Error::Fenced);
    }
    let api: Api<Command> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": object.resource_version(),
        }
    });
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(stored) => Ok(Some(stored)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(error) => Err(Error::Kube(error)),
    }
}
