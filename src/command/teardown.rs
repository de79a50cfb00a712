//! What a `Command` leaves behind when it moves on or goes: the run of an earlier generation
//! is cancelled (if SSM may still run it) and its children deleted before a new generation is
//! sent; on deletion, the finalizer holds the object until the run is cancelled. Every cancel,
//! delete and finalizer patch goes through the fenced
//! [`Writer`](crate::k8s::writer::Writer), so a replica that is not sure it leads never
//! cancels a run nor deletes a child.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::api::{Command, CommandInvocation, CommandStatus};
use crate::aws::ssm::Recovery;
use crate::command::context::{attempt_of, Context};
use crate::command::send::{self, SearchResult};
use crate::command::status as command_status;
use crate::command::sync::delete_all_children;
use crate::k8s::writer::EventNote;
use crate::Error;

/// The finalizer that makes deletion cancel an unfinished run first.
pub const FINALIZER: &str = "ssm.operator.dev/cancel";

/// How long a deletion retries cancelling the run before it goes ahead without (a Warning
/// Event says so).
const DELETE_GIVE_UP: Duration = Duration::from_secs(300);
/// How long a new generation waits for the earlier run's cancel (SSM throttling or
/// unavailable) before it goes on without it (a Warning Event says so). Waiting for the
/// earlier send to be listed is bounded by [`send::SETTLE`] on its own.
const RETIRE_GIVE_UP: Duration = Duration::from_secs(300);

/// What SSM may still be running for a stored status.
enum LiveRuns {
    /// These commands (maybe none).
    Known(Vec<String>),
    /// An attempt whose outcome is unknown, younger than SSM's listing lag: not listed yet.
    NotListedYet,
}

/// The commands SSM may still be running for `status`: its command if unfinished, one this
/// process saw SSM accept, or what a search finds for an intent without a command id.
async fn live_runs(
    object: &Command,
    ctx: &Context,
    status: &CommandStatus,
) -> Result<LiveRuns, String> {
    if let Some(id) = &status.command_id {
        let unfinished = !command_status::run_finished(status);
        return Ok(LiveRuns::Known(if unfinished {
            vec![id.clone()]
        } else {
            Vec::new()
        }));
    }
    let Some(intent) = &status.send else {
        return Ok(LiveRuns::Known(Vec::new()));
    };
    let uid = object.uid().unwrap_or_default();
    let attempt = attempt_of(intent);
    let accepted = ctx.memo(&uid, |m| {
        m.accepted
            .clone()
            .filter(|(a, _)| *a == attempt)
            .map(|(_, id)| id)
    });
    if let Some(id) = accepted {
        return Ok(LiveRuns::Known(vec![id]));
    }
    let window = send::search_window(intent.time.0);
    match ctx
        .ssm
        .find_commands(
            &ctx.scope(object).map_err(|e| e.to_string())?,
            &intent.marker,
            window,
        )
        .await
    {
        SearchResult::Listed(found) if found.is_empty() => {
            let settled = Timestamp::now()
                .duration_since(intent.time.0)
                .try_into()
                .is_ok_and(|age: Duration| age >= send::SETTLE);
            Ok(if settled {
                LiveRuns::Known(Vec::new())
            } else {
                LiveRuns::NotListedYet
            })
        }
        SearchResult::Listed(found) => Ok(LiveRuns::Known(
            found.into_iter().map(|f| f.command_id).collect(),
        )),
        SearchResult::Refused { message } | SearchResult::Failed { message } => Err(message),
    }
}

/// Before anything else happens for a new generation: the earlier generation's run, if SSM may
/// still be running it, is cancelled, and its children go. The new generation waits (the
/// reconcile fails and is retried) while the cancel fails for now or the earlier send is not
/// listed by SSM yet, for up to [`RETIRE_GIVE_UP`]; an Event says what became of the earlier
/// run (`EarlierRunCancelled`, or a Warning `CancelFailed`). `strict`: a failure to delete the
/// children fails the reconcile (before a send); else it is logged (a refused generation).
pub(super) async fn retire_previous_run(
    object: &Command,
    ctx: &Context,
    generation: i64,
    strict: bool,
) -> Result<(), Error> {
    let Some(status) = object.status.as_ref() else {
        return Ok(());
    };
    let earlier = status
        .send
        .as_ref()
        .is_some_and(|s| s.generation != generation);
    if !earlier {
        return Ok(());
    }
    let uid = object.uid().unwrap_or_default();
    let since = ctx.memo(&uid, |m| match m.retiring {
        Some((g, since)) if g == generation => since,
        _ => {
            let now = Instant::now();
            m.retiring = Some((generation, now));
            now
        }
    });
    let give_up = since.elapsed() >= RETIRE_GIVE_UP;
    let earlier = |what: String| EventNote {
        warning: true,
        reason: "CancelFailed".into(),
        action: "Retiring".into(),
        message: format!(
            "{what}; the earlier generation's run may still be running in SSM (marker {})",
            status.send.as_ref().map_or("-", |s| s.marker.as_str())
        ),
    };
    match live_runs(object, ctx, status).await {
        Ok(LiveRuns::Known(runs)) => {
            let done = ctx.memo(&uid, |m| m.cancelled.clone());
            let scope = ctx.scope(object)?;
            for old in runs.into_iter().filter(|id| !done.contains(id)) {
                let note = match ctx.writer.cancel_command(&ctx.ssm, &scope, &old).await {
                    Ok(()) => {
                        info!(command_id = %old, "earlier run cancelled for the new generation");
                        EventNote {
                            warning: false,
                            reason: "EarlierRunCancelled".into(),
                            action: "Retiring".into(),
                            message: format!(
                                "cancelled {old}, the earlier generation's run, before \
                                 generation {generation}"
                            ),
                        }
                    }
                    Err(error @ Error::Cancel { .. }) if transient(&error) && !give_up => {
                        return Err(error)
                    }
                    Err(error @ Error::Cancel { .. }) => {
                        warn!(%error, "could not cancel the earlier run");
                        earlier(format!("could not cancel {old}: {error}"))
                    }
                    Err(error) => return Err(error),
                };
                ctx.writer.record_command(object, &note).await?;
                ctx.memo(&uid, |m| m.cancelled.insert(old));
            }
        }
        Ok(LiveRuns::NotListedYet) if !give_up => return Err(Error::RunNotListedYet),
        Ok(LiveRuns::NotListedYet) => {
            let note = earlier("its send was never listed by SSM".into());
            ctx.writer.record_command(object, &note).await?;
        }
        Err(message) if !give_up => return Err(Error::FindRun(message)),
        Err(message) => {
            let note = earlier(format!("could not look for it: {message}"));
            ctx.writer.record_command(object, &note).await?;
        }
    }
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<CommandInvocation> = Api::namespaced(ctx.client.clone(), &namespace);
    // No child belongs to the run about to be sent: every earlier child goes.
    match delete_all_children(object, ctx, &api).await {
        Ok(_) => {}
        Err(error) if strict || matches!(error, Error::Fenced) => return Err(error),
        Err(error) => warn!(%error, "could not delete the earlier run's children"),
    }
    ctx.memo(&uid, |m| {
        m.children = None;
        m.retiring = None;
    });
    Ok(())
}

/// Deletion: cancels the run if SSM may still be running it (a run whose send is unknown is
/// looked for first, and waited for while SSM's listing may lag). Past [`DELETE_GIVE_UP`] of
/// failures, or on a permanent refusal, it is reported with a Warning Event and the deletion
/// goes on: a Command must not stay Terminating for ever.
pub(super) async fn cancel_before_deletion(object: &Command, ctx: &Context) -> Result<(), Error> {
    let Some(status) = object.status.as_ref() else {
        return Ok(());
    };
    let scope = ctx.scope(object)?;
    let deleting_for = object
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Timestamp::now().duration_since(t.0).try_into().ok())
        .unwrap_or(Duration::ZERO);
    let give_up = deleting_for >= DELETE_GIVE_UP;
    let mut problems = Vec::new();
    match live_runs(object, ctx, status).await {
        Ok(LiveRuns::Known(runs)) => {
            for id in runs {
                match ctx.writer.cancel_command(&ctx.ssm, &scope, &id).await {
                    Ok(()) => {
                        info!(command_id = %id, "run cancelled: the Command is being deleted")
                    }
                    Err(error @ Error::Cancel { .. }) if give_up || !transient(&error) => {
                        problems.push(error.to_string())
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(LiveRuns::NotListedYet) if !give_up => return Err(Error::RunNotListedYet),
        Ok(LiveRuns::NotListedYet) => problems.push("the run was never listed by SSM".into()),
        Err(message) if !give_up => return Err(Error::FindRun(message)),
        Err(message) => problems.push(format!("looking for the run: {message}")),
    }
    if !problems.is_empty() {
        let message = format!(
            "deleted without cancelling in SSM ({}); check the command's marker {} in SSM",
            problems.join("; "),
            status.send.as_ref().map_or("-", |s| s.marker.as_str())
        );
        warn!(%message, "Command deleted without cancelling its run");
        let note = EventNote {
            warning: true,
            reason: "CancelFailed".into(),
            action: "Deleting".into(),
            message,
        };
        ctx.writer.record_command(object, &note).await?;
    }
    Ok(())
}

/// Whether a failed cancel may succeed when tried again (throttled, SSM unavailable).
fn transient(error: &Error) -> bool {
    matches!(error, Error::Cancel { source, .. } if source.recovery() == Recovery::Transient)
}

/// Adds the finalizer (a no-op when present). `Ok(None)`: the object changed meanwhile.
pub(super) async fn add_finalizer(
    object: &Command,
    ctx: &Context,
) -> Result<Option<Command>, Error> {
    if object.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Some(object.clone()));
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    ctx.writer.patch_finalizers(object, finalizers).await
}

pub(super) async fn remove_finalizer(object: &Command, ctx: &Context) -> Result<(), Error> {
    let finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    ctx.writer
        .patch_finalizers(object, finalizers)
        .await
        .map(|_| ())
}
