//! What every `Command` reconcile shares ([`Context`]): SSM, the fenced writer, the send
//! policy, the reconcile permits, the watches' caches, and what this process remembers per
//! `Command` ([`Memo`]), which only ever saves calls: losing it never causes a send.
//!
//! Every reconcile first takes a permit from the `Command`s' own `--max-concurrent-reconciles`
//! semaphore (one per process, across all watched namespaces); it holds it while it calls SSM
//! and the API server, and never waits on another reconcile, so no permit waits on another.
//! `CommandInvocation` reconciles have their own semaphore of the same size: a `Command`
//! waiting for SSM (its budget, throttling, STS) never holds up a `CommandInvocation`'s status
//! write, nor the other way round. What this process remembers per `Command` is dropped when
//! the watch sees it deleted, or misses it on a re-list ([`Forget`]), and at the end of a
//! reconcile that finds it gone. When a namespace's role changes, its `Command`s are
//! reconciled at once ([`Context::role_changed`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Semaphore;

use crate::api::{Command, SendRecord};
use crate::aws::roles::{NamespaceNotSeen, Roles};
use crate::aws::ssm::{Scope, Ssm};
use crate::command::send::Policy;
use crate::k8s::watch::{watch_commands, CommandStores, Forget, WatchedCommands};
use crate::k8s::writer::Writer;
use crate::runtime::metrics::Metrics;
use crate::tracking::schedule::PollIntervals;
use crate::tracking::wakers::Wakers;

/// An attempt, named by its generation and its number within it ([`SendRecord::attempt`]).
pub(super) type Attempt = (i64, u32);

/// What is known of the children of one run.
#[derive(Clone, Debug, Default)]
pub(super) struct KnownChildren {
    /// The SSM command id of the run.
    pub(super) command_id: String,
    /// Names of the children that exist.
    pub(super) names: HashSet<String>,
    /// Nodes whose child the API server refused (admission policy, quota, RBAC), with why.
    pub(super) refused: std::collections::BTreeMap<String, String>,
}

/// The attempt `record` names.
pub(super) fn attempt_of(record: &SendRecord) -> Attempt {
    (record.generation, record.attempt)
}

/// What this process remembers per `Command` (by uid); losing it costs calls, never a send.
#[derive(Default)]
pub(super) struct Memo {
    /// The attempt this process knows SSM did not create, and when it may be made again.
    pub(super) unsent: Option<(Attempt, Instant)>,
    /// The attempt SSM accepted, and the command it created (in case the status write that
    /// records it lost its compare-and-swap).
    pub(super) accepted: Option<(Attempt, String)>,
    /// Rounds in a row without news (for the polling backoff).
    pub(super) quiet: u32,
    /// When SSM was last asked about the run (`ListCommands`).
    pub(super) polled: Option<Instant>,
    /// Failed reconciles in a row (for the retry backoff).
    pub(super) failures: u32,
    /// The run whose children are known, and those children's nodes.
    pub(super) children: Option<KnownChildren>,
    /// The generation waiting for the earlier run to be cancelled, and since when.
    pub(super) retiring: Option<(i64, Instant)>,
    /// Earlier runs this process cancelled (or gave up cancelling): not tried again.
    pub(super) cancelled: HashSet<String>,
}

/// Everything a `Command` reconcile needs, shared by all runs.
pub struct Context {
    /// For reading children (every change goes through `writer`).
    pub client: Client,
    /// SSM access (shared budget).
    pub ssm: Arc<Ssm>,
    /// The role each namespace's calls use.
    pub roles: Arc<Roles>,
    /// Status writes and Events.
    pub writer: Writer,
    /// `--send-commands` / `--allowed-documents`.
    pub policy: Policy,
    /// Poll backoff bounds.
    pub intervals: PollIntervals,
    /// How often a run stalled on an error an outside fix can cure is looked at again.
    pub recheck: Duration,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// `--ttl-after-finished`: the TTL of a finished `Command` whose spec sets none.
    pub ttl_after_finished: Option<Duration>,
    /// `--max-concurrent-reconciles` permits of `Command` reconciles, shared by every watched
    /// namespace (the process has one context), not with `CommandInvocation` reconciles.
    pub(super) permits: Semaphore,
    pub(super) memo: Mutex<HashMap<String, Memo>>,
    /// The caches of the `Command` watches ([`Context::watch`]).
    stores: Arc<CommandStores>,
    /// Where [`Context::role_changed`] wakes Commands: a channel per controller, with
    /// its namespace (`None`: all).
    wakers: Wakers<Command>,
    /// SSM commands a push event named whose `Command`s will be woken shortly
    /// ([`Context::hinted`]).
    hinted: Mutex<HashSet<String>>,
}

/// Push events of one SSM command are gathered this long before its `Command` is woken: a
/// fleet's nodes finish by the hundred per second, and one reconcile reads them all.
pub const HINT_GATHER: Duration = Duration::from_millis(500);

impl Context {
    /// A context; see the fields. `max_concurrent_reconciles`: how many `Command` reconciles
    /// run at once in the process (at least one).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        ssm: Arc<Ssm>,
        roles: Arc<Roles>,
        writer: Writer,
        policy: Policy,
        intervals: PollIntervals,
        recheck: Duration,
        metrics: Arc<Metrics>,
        max_concurrent_reconciles: usize,
    ) -> Self {
        Self {
            client,
            ssm,
            roles,
            writer,
            policy,
            intervals,
            recheck,
            metrics,
            ttl_after_finished: None,
            permits: Semaphore::new(max_concurrent_reconciles.max(1)),
            memo: Mutex::new(HashMap::new()),
            stores: Arc::new(CommandStores::default()),
            wakers: Wakers::default(),
            hinted: Mutex::new(HashSet::new()),
        }
    }

    /// A push event named SSM command `command_id` (a node of it, or the command, changed):
    /// its `Command`s are reconciled within [`HINT_GATHER`], once for all the events of that
    /// window, so new nodes get their child and a finished run its final status without
    /// waiting for the next poll.
    pub fn hinted(self: &Arc<Self>, command_id: &str) {
        let first = self
            .hinted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(command_id.to_string());
        if !first {
            return;
        }
        let ctx = self.clone();
        let command_id = command_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(HINT_GATHER).await;
            ctx.hinted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&command_id);
            let commands = ctx.stores.running(&command_id);
            ctx.remembered(&commands, |m| m.polled = None);
            ctx.wakers
                .wake(commands.iter().map(|c| ObjectRef::from_obj(c.as_ref())));
        });
    }

    /// Changes what is remembered for each of `commands` (those remembered at all). News from
    /// outside (an event, a new role) clears `polled`, so the next reconcile asks SSM even
    /// if it asked a moment ago, instead of waiting out `--poll-interval-min`.
    fn remembered(&self, commands: &[Arc<Command>], mut change: impl FnMut(&mut Memo)) {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        for uid in commands.iter().filter_map(|c| c.uid()) {
            if let Some(m) = memo.get_mut(&uid) {
                change(m);
            }
        }
    }

    /// The watch of `api`'s `Command`s for a controller; the ones it sees deleted, or no
    /// longer lists, are forgotten here.
    pub fn watch(self: &Arc<Self>, api: Api<Command>) -> WatchedCommands {
        watch_commands(api, self.stores.clone(), self.clone())
    }

    /// Whether `object` is known to be gone (see [`CommandStores::known_gone`]).
    pub(super) fn gone(&self, object: &Command) -> bool {
        self.stores.known_gone(object)
    }

    /// The `Command`s of `namespace` (`None`: all) to reconcile now, for a controller's
    /// `reconcile_on`.
    pub fn wakes(
        &self,
        namespace: Option<String>,
    ) -> impl Stream<Item = ObjectRef<Command>> + Send + 'static {
        self.wakers.stream(namespace)
    }

    /// `namespace`'s role changed: its `Command`s are reconciled at once, and a send SSM or
    /// STS refused with the old identity (nothing created) is made again now rather than at
    /// the rare re-check.
    pub fn role_changed(&self, namespace: &str) {
        let commands = self.stores.in_namespace(namespace);
        let now = Instant::now();
        self.remembered(&commands, |m| {
            m.polled = None;
            m.unsent = m.unsent.map(|(attempt, _)| (attempt, now));
        });
        self.wakers
            .wake(commands.iter().map(|c| ObjectRef::from_obj(c.as_ref())));
    }

    /// What is remembered for `uid`, created if nothing is. Only a reconcile uses it (it ends
    /// by dropping the entry again if the `Command` turned out to be gone).
    pub(super) fn memo<T>(&self, uid: &str, f: impl FnOnce(&mut Memo) -> T) -> T {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        f(memo.entry(uid.to_string()).or_default())
    }

    /// Like [`Context::memo`], but only for a `Command` already remembered (a deleted
    /// one must not come back); `None` otherwise.
    pub(super) fn memo_if_known<T>(&self, uid: &str, f: impl FnOnce(&mut Memo) -> T) -> Option<T> {
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.get_mut(uid).map(f)
    }

    /// Number of `Command`s this process remembers something about.
    #[cfg(test)]
    pub(super) fn memo_len(&self) -> usize {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Where `object`'s SSM calls go, and as whom; [`NamespaceNotSeen`] while its namespace's
    /// role is unknown (never the operator's own identity by mistake).
    pub(super) fn scope(&self, object: &Command) -> Result<Scope, NamespaceNotSeen> {
        Ok(Scope {
            region: object.spec.region.clone(),
            role: self
                .roles
                .role_for(&object.namespace().unwrap_or_default())?,
        })
    }
}

impl Forget for Context {
    fn forget(&self, uid: &str) {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    fn retain(&self, live: &HashSet<String>) {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|uid, _| live.contains(uid));
    }
}
