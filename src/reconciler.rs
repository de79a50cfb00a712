//! The reconcile loop for one `CommandInvocation`: decide whether SSM is due, ask it, map the
//! answer ([`crate::mapping`]), write the status and Event if anything changed, and requeue.
//!
//! SSM errors never fail a reconcile: they become conditions. Only Kubernetes write failures do,
//! and [`error_policy`] retries those with backoff.
//!
//! A reconcile acts on what is really stored: when the watch cache has not yet shown this
//! process's last write, it uses that write ([`StatusWriter::fresher`]). At most
//! `--max-concurrent-reconciles` reconciles ask SSM at once, across all watched namespaces.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tracing::{debug, info, instrument};

use crate::api::CommandInvocation;
use crate::mapping::{self, Next, Poll, Settings};
use crate::metrics::Metrics;
use crate::schedule::{PollBook, PollIntervals};
use crate::ssm::{InvocationKey, Ssm};
use crate::status_writer::StatusWriter;
use crate::watch::Forget;
use crate::Error;

/// Everything a reconcile run needs, shared by all runs.
pub struct Context {
    /// SSM access.
    pub ssm: Arc<Ssm>,
    /// Status and Event writes.
    pub writer: StatusWriter,
    /// When each resource is due.
    pub book: PollBook,
    /// Status-shaping settings.
    pub settings: Settings,
    /// Poll backoff bounds.
    pub intervals: PollIntervals,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// `--max-concurrent-reconciles` permits, shared by every watched namespace.
    pub permits: tokio::sync::Semaphore,
}

impl Forget for Context {
    fn forget(&self, uid: &str) {
        self.book.forget(uid);
        self.writer.forget(uid);
        self.metrics.set_poll_book(self.book.len());
    }

    fn retain(&self, live: &HashSet<String>) {
        self.book.retain(live);
        self.writer.retain(live);
        self.metrics.set_poll_book(self.book.len());
    }
}

/// Reconciles one resource. See the module docs.
#[instrument(skip_all, fields(namespace = %object.namespace().unwrap_or_default(), name = %object.name_any()))]
pub async fn reconcile(object: Arc<CommandInvocation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&object, &ctx).await;
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
        ctx.book.forget(&uid);
        return Ok(Action::await_change());
    }
    let now = Instant::now();
    if up_to_date {
        if let Some(wait) = ctx.book.wait_left(&uid, generation, now) {
            return Ok(Action::requeue(wait));
        }
    }

    // The semaphore is never closed; without a permit (impossible) the call goes ahead.
    let _permit = ctx.permits.acquire().await.ok();
    let answer = ctx.ssm.invocation(&InvocationKey::from(&object.spec)).await;
    let poll = Poll {
        answer: &answer,
        generation: Some(generation),
        now: Time(Timestamp::now()),
        waited: waited(object, ctx, &uid, generation, now),
    };
    let outcome = mapping::apply(current, &poll, &ctx.settings);
    if outcome.write {
        ctx.writer.write(object, &outcome.status).await?;
        let ready = outcome.status.conditions.first();
        info!(
            status = outcome.status.status.as_deref().unwrap_or("-"),
            reason = ready.map_or("-", |c| c.reason.as_str()),
            "status updated"
        );
    }
    if let Some(note) = &outcome.note {
        ctx.writer.record(object, note).await;
    }

    let action = match outcome.next {
        Next::Stop => {
            ctx.book.forget(&uid);
            Action::await_change()
        }
        Next::RecheckRarely => {
            let delay = ctx.settings.recheck_interval;
            ctx.book.record_fixed(&uid, generation, delay, now);
            Action::requeue(delay)
        }
        Next::Poll => Action::requeue(ctx.book.record_poll(
            &uid,
            generation,
            outcome.status_changed,
            ctx.intervals,
            now,
        )),
    };
    ctx.metrics.set_poll_book(ctx.book.len());
    debug!(?action, "reconciled");
    Ok(action)
}

/// How long SSM has had to show the invocation: since creation for the first spec, else since
/// this process first saw the current spec (a restart can only lengthen the grace).
fn waited(
    object: &CommandInvocation,
    ctx: &Context,
    uid: &str,
    generation: i64,
    now: Instant,
) -> Duration {
    let created = object.creation_timestamp().filter(|_| generation <= 1);
    match created {
        Some(created) => Timestamp::now()
            .duration_since(created.0)
            .try_into()
            .unwrap_or(Duration::ZERO),
        None => now.saturating_duration_since(ctx.book.first_seen(uid, generation, now)),
    }
}

/// Retries a failed reconcile (a Kubernetes write failure) with the poll backoff.
pub fn error_policy(object: Arc<CommandInvocation>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    tracing::warn!(name = %object.name_any(), %error, "reconcile failed; retrying");
    let uid = object.uid().unwrap_or_default();
    let generation = object.metadata.generation.unwrap_or_default();
    Action::requeue(
        ctx.book
            .record_poll(&uid, generation, false, ctx.intervals, Instant::now()),
    )
}
