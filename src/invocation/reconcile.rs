//! The reconcile of one `CommandInvocation`: take the latest SSM answer for its step from the
//! [`Tracker`] (which asks SSM, per command, and wakes this reconcile when the answer changes),
//! map it ([`crate::invocation::status`]), and record the Event and write the status if anything changed.
//! A reconcile never waits on SSM.
//!
//! A finished resource is deleted once its TTL runs out ([`crate::api::lifecycle`]; the
//! reconcile is requeued for exactly then, nothing is polled meanwhile), and a spec change
//! that only touched the TTL moves the status to the new generation without asking SSM.
//!
//! SSM errors never fail a reconcile: they become conditions. Only Kubernetes write failures do,
//! and [`error_policy`] retries those with backoff.
//!
//! A reconcile acts on what is really stored: when the watch cache has not yet shown this
//! process's last write, it uses that write ([`Writer::fresher`]). At most
//! `--max-concurrent-reconciles` reconciles write at once, across all watched namespaces, in
//! the order of [`crate::invocation::turns`]; no reconcile waits for a turn.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use tracing::{debug, info, instrument};

use crate::api::lifecycle::{self, Expiry};
use crate::api::{CommandInvocation, CommandInvocationSpec};
use crate::aws::roles::Roles;
use crate::aws::ssm::{InvocationKey, SsmError};
use crate::invocation::status::{self as mapping, Poll, Polling, Settings};
use crate::invocation::turns::{Class, WriteTurns};
use crate::k8s::watch::Forget;
use crate::k8s::writer::Writer;
use crate::runtime::metrics::Metrics;
use crate::tracking::schedule::{backoff, PollIntervals};
use crate::tracking::tracker::Tracker;
use crate::Error;

/// Everything a reconcile run needs, shared by all runs.
pub struct Context {
    /// The SSM answers, per command.
    pub tracker: Arc<Tracker>,
    /// The role each namespace's calls use (`--namespace-roles`).
    pub roles: Arc<Roles>,
    /// Status and Event writes.
    pub writer: Writer,
    /// Status-shaping settings.
    pub settings: Settings,
    /// Poll backoff bounds (also for retrying failed writes).
    pub intervals: PollIntervals,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// `--max-concurrent-reconciles` turns for status writes (and their Events), shared by
    /// every watched namespace.
    pub turns: WriteTurns,
    /// `--ttl-after-finished`: the TTL of a finished resource without a controller owner
    /// whose spec sets none.
    pub ttl_after_finished: Option<Duration>,
}

impl Forget for Context {
    fn forget(&self, uid: &str) {
        self.tracker.forget(uid);
        self.writer.forget(uid);
        self.turns.leave(uid);
    }

    fn retain(&self, live: &HashSet<String>) {
        self.tracker.retain(live);
        self.writer.retain(live);
        self.turns.retain(live);
    }
}

/// Reconciles one resource. See the module docs.
#[instrument(skip_all, fields(namespace = %object.namespace().unwrap_or_default(), name = %object.name_any()))]
pub async fn reconcile(object: Arc<CommandInvocation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&object, &ctx).await;
    // Called for a write turn but ended without taking it (nothing to write after all, no
    // answer yet, a role not known yet, an error): the turn goes to the next in line.
    if let Some(uid) = object.uid() {
        ctx.turns.pass(&uid);
    }
    ctx.metrics.reconciled(started.elapsed());
    result
}

async fn reconcile_inner(object: &CommandInvocation, ctx: &Context) -> Result<Action, Error> {
    let fresher = ctx.writer.fresher(object);
    let object = fresher.as_ref().unwrap_or(object);
    let uid = object.uid().ok_or(Error::MissingObjectKey("uid"))?;
    let generation = object.metadata.generation.unwrap_or_default();
    let current = object.status.as_ref();
    let up_to_date = current.is_some_and(|s| s.observed_generation == Some(generation));

    if up_to_date && current.is_some_and(|s| !mapping::needs_polling(s)) {
        ctx.tracker.forget(&uid);
        return expire(object, ctx).await;
    }
    let hash = lifecycle::spec_hash(&object.spec);
    if let Some(status) = current.filter(|s| {
        !up_to_date && !mapping::needs_polling(s) && s.spec_hash.as_deref() == Some(&hash)
    }) {
        // Finished, and the spec changed only in its TTL: SSM has nothing new to say. The
        // status moves to this generation as it is (the TTL still counts from the finish).
        let mut rebased = status.clone();
        rebased.conditions = lifecycle::rebase_conditions(
            &status.conditions,
            status.observed_generation,
            generation,
        );
        rebased.observed_generation = Some(generation);
        ctx.writer.write(object, &rebased).await?;
        info!(
            generation,
            "only the TTL changed: status moved to the new generation"
        );
        return Ok(Action::await_change());
    }
    let now = Instant::now();
    // With --namespace-roles, a namespace not seen yet has no known role: wait for it (the
    // roles watch wakes its resources once it is seen), never ask with the operator's own.
    let role = ctx
        .roles
        .role_for(&object.namespace().unwrap_or_default())?;
    let tracked = ctx.tracker.track(
        &uid,
        ObjectRef::from_obj(object),
        &key_of(&object.spec, role),
        generation,
        now,
    );
    let Some(answer) = tracked.answer else {
        // Not asked yet: the tracker wakes this resource once SSM answered.
        return Ok(Action::await_change());
    };
    let waited = waited(object, generation, tracked.first_seen, now);
    let poll = Poll {
        answer: &answer.result,
        generation: Some(generation),
        now: answer.asked_at.clone(),
        waited,
    };
    let mut outcome = mapping::apply(current, &poll, &ctx.settings);
    if outcome.status.spec_hash.as_deref() != Some(&hash) {
        // Recorded with the first write of each spec (and once for statuses from before).
        outcome.status.spec_hash = Some(hash);
        outcome.write = true;
    }
    // "Not visible yet" turns into Stalled when the grace runs out, with no new answer.
    let grace_left = match &answer.result {
        Err(SsmError::InvocationDoesNotExist(_))
            if outcome.next == Polling::Poll && waited < ctx.settings.not_found_grace =>
        {
            Some(ctx.settings.not_found_grace - waited + Duration::from_millis(100))
        }
        _ => None,
    };
    // A young resource keeps quiet about progress (--progress-after): mostly, its first
    // write is its final answer. Its age is also counted on this process's clock, so a clock
    // behind the API server's cannot stretch the quiet time.
    let age = age(object).max(now.saturating_duration_since(tracked.first_seen));
    if let Some(left) =
        mapping::progress_held(current, &outcome.status, age, ctx.settings.progress_after)
    {
        ctx.turns.leave(&uid);
        debug!(?left, "a young resource's progress is not written yet");
        return Ok(Action::requeue(
            grace_left.map_or(left, |grace| grace.min(left)),
        ));
    }
    // Writes take turns (crate::invocation::turns): final answers first, then oldest first.
    // A reconcile with nothing to write (most, at start-up, where each resource is first only
    // tracked) takes no turn; one whose turn has not come ends, and is woken when it comes.
    let _slot = if outcome.write || outcome.note.is_some() {
        let class = if mapping::is_progress(&outcome.status) {
            Class::Progress
        } else {
            Class::Final
        };
        match ctx.turns.ask(&uid, class, ObjectRef::from_obj(object)) {
            Some(slot) => Some(slot),
            None => {
                debug!(?class, "status write waits its turn");
                return Ok(Action::await_change());
            }
        }
    } else {
        ctx.turns.leave(&uid);
        None
    };
    // The Event first: a crash or an unreachable API server before the status write repeats
    // the attempt (the API refuses the duplicate name), while a status written first would
    // lose the Event for good.
    let writing = Instant::now();
    if let Some(note) = &outcome.note {
        ctx.writer.record(object, note).await?;
    }
    if outcome.write {
        ctx.writer.write(object, &outcome.status).await?;
        let ready = outcome.status.conditions.first();
        let age = Timestamp::now().duration_since(answer.asked_at.0);
        info!(
            answer_age_ms = age.as_millis(),
            // The Event and the status write: the API server's answer time, as the operator
            // sees it (against answer_age_ms, how long the answer waited for its turn).
            write_ms = writing.elapsed().as_millis(),
            status = outcome.status.status.as_deref().unwrap_or("-"),
            reason = ready.map_or("-", |c| c.reason.as_str()),
            "status updated"
        );
    }
    ctx.tracker.settle(&uid, outcome.next);
    // The answer only changes when the tracker says so; but "not visible yet" turns into
    // Stalled when the grace runs out: look again then.
    let action = grace_left.map_or_else(Action::await_change, Action::requeue);
    debug!(?action, "reconciled");
    Ok(action)
}

/// A finished resource: deleted when its TTL ran out ([`lifecycle`]), else looked at again
/// exactly when it runs out (no SSM or API call in between), else left alone.
async fn expire(object: &CommandInvocation, ctx: &Context) -> Result<Action, Error> {
    let ttl = lifecycle::invocation_ttl(
        object.spec.ttl_seconds_after_finished,
        object.owner_references(),
        ctx.ttl_after_finished,
    );
    let conditions = object
        .status
        .as_ref()
        .map_or(&[][..], |s| &s.conditions[..]);
    match lifecycle::expiry(&ttl, conditions, Timestamp::now()) {
        Expiry::Keep => Ok(Action::await_change()),
        Expiry::CheckIn(left) => Ok(Action::requeue(left + EXPIRY_SLACK)),
        Expiry::DeleteNow => {
            if ctx.writer.delete_expired(object).await? {
                info!(?ttl, "deleted: finished longer ago than its TTL");
            }
            Ok(Action::await_change())
        }
    }
}

/// Added to a requeue for an expiry, so that the look comes just after it, never just before.
pub const EXPIRY_SLACK: Duration = Duration::from_millis(20);

/// The step to ask SSM about, with the identity to ask with.
fn key_of(spec: &CommandInvocationSpec, role: Option<crate::aws::sts::Role>) -> InvocationKey {
    InvocationKey {
        region: spec.region.clone(),
        command_id: spec.command_id.clone(),
        instance_id: spec.instance_id.clone(),
        plugin_name: spec.plugin_name.clone(),
        role,
    }
}

/// How long ago `object` was created (zero if it says nothing or a clock is off).
fn age(object: &CommandInvocation) -> Duration {
    object
        .creation_timestamp()
        .and_then(|created| Timestamp::now().duration_since(created.0).try_into().ok())
        .unwrap_or(Duration::ZERO)
}

/// How long SSM has had to show the invocation: since creation for the first spec, else since
/// this process first saw the current spec (a restart can only lengthen the grace).
fn waited(
    object: &CommandInvocation,
    generation: i64,
    first_seen: Instant,
    now: Instant,
) -> Duration {
    if generation <= 1 && object.creation_timestamp().is_some() {
        age(object)
    } else {
        now.saturating_duration_since(first_seen)
    }
}

/// Retries a failed reconcile (a Kubernetes write failure) with the poll backoff, growing with
/// each failure in a row.
pub fn error_policy(object: Arc<CommandInvocation>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    tracing::warn!(name = %object.name_any(), %error, "reconcile failed; retrying");
    if let Some(wait) = error.fixed_retry() {
        return Action::requeue(wait);
    }
    let failures = ctx.tracker.write_failed(&object.uid().unwrap_or_default());
    Action::requeue(backoff(
        ctx.intervals,
        failures.saturating_sub(1),
        fastrand::f64(),
    ))
}
