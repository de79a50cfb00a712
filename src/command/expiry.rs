//! A finished `Command`'s lifetime: deleted when its TTL runs out (`ttlSecondsAfterFinished`,
//! else `--ttl-after-finished`), looked at again exactly then and not before; its children go
//! through their owner references (Kubernetes' garbage collector). A GitOps-tracked `Command`
//! is never deleted unless it opts in: a Warning Event and a log line say why. A spec change
//! that only touched the TTL moves the run to the new generation instead of sending again.
//! The decisions are pure ([`crate::api::lifecycle`]); the delete and the status write go
//! through the fenced [`Writer`](crate::k8s::writer::Writer).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tracing::{info, warn};

use crate::api::conditions;
use crate::api::lifecycle::{self, Expiry, Ttl};
use crate::api::Command;
use crate::command::context::Context;
use crate::k8s::writer::EventNote;
use crate::Error;

/// Added to a requeue for an expiry, so that the look comes just after it, never just before.
const SLACK: Duration = Duration::from_millis(20);

/// A `Command` whose run is over (and whose status describes its generation): deleted if its
/// TTL ran out, else `Action::requeue` for when it runs out, else `otherwise`.
pub(super) async fn expire(
    object: &Command,
    ctx: &Context,
    otherwise: Action,
) -> Result<Action, Error> {
    let ttl = lifecycle::command_ttl(
        object.spec.ttl_seconds_after_finished,
        object.labels(),
        object.annotations(),
        ctx.ttl_after_finished,
    );
    let conditions = object
        .status
        .as_ref()
        .map_or(&[][..], |s| &s.conditions[..]);
    if let Ttl::RefusedGitOps { mark, tool } = &ttl {
        // Said once it finished (the TTL would count from then), so the user learns it early.
        if conditions::is_true(conditions, conditions::FINISHED) {
            refuse(object, ctx, mark, tool).await?;
        }
        return Ok(otherwise);
    }
    match lifecycle::expiry(&ttl, conditions, Timestamp::now()) {
        Expiry::Keep => Ok(otherwise),
        Expiry::CheckIn(left) => Ok(Action::requeue(left + SLACK)),
        Expiry::DeleteNow => {
            // Finished: the finalizer sees a finished run and cancels nothing.
            if ctx.writer.delete_expired(object).await? {
                info!(
                    ?ttl,
                    "deleted: finished longer ago than its TTL; children follow"
                );
            }
            Ok(Action::await_change())
        }
    }
}

/// Says (once per stored version: the Event's name is derived from it, a repeat is refused
/// as a duplicate) that a TTL is not applied to a `Command` a GitOps tool manages.
async fn refuse(object: &Command, ctx: &Context, mark: &str, tool: &str) -> Result<(), Error> {
    let message = format!(
        "not deleted after its TTL: it carries {tool}'s tracking mark {mark}, and {tool} would \
         recreate it, which sends the command again; annotate it {}: \"true\" to apply the TTL \
         anyway",
        lifecycle::GITOPS_OPT_IN
    );
    warn!(%mark, %tool, "TTL not applied to a GitOps-tracked Command");
    let note = EventNote {
        warning: true,
        reason: lifecycle::TTL_REFUSED.to_string(),
        action: "Expire".to_string(),
        message,
    };
    ctx.writer.record_command(object, &note).await
}

/// When the spec changed since the recorded send only in its TTL: the status moves to the new
/// generation (compare-and-swap), nothing is sent. `None`: not such a change.
pub(super) async fn rebase_ttl_change(
    object: &Command,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    let generation = object.metadata.generation.unwrap_or_default();
    let Some(status) = object.status.as_ref() else {
        return Ok(None);
    };
    let hash = lifecycle::spec_hash(&object.spec);
    let Some(rebased) = lifecycle::rebase_command(status, &hash, generation) else {
        return Ok(None);
    };
    let stored = ctx.writer.write_command(object, &rebased).await?;
    info!(
        generation,
        "only the TTL changed: the same run, moved to the new generation (nothing sent)"
    );
    Ok(Some(match stored {
        Some(_) => Action::await_change(),
        None => Action::requeue(Duration::from_secs(1)),
    }))
}
