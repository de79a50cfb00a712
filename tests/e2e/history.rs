//! Every version of a namespace's CommandInvocations as a watch delivered them, for scenarios
//! that assert what a user could have seen in between (no flapping, never Stalled, nothing
//! written after a pause).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use ssm_operator::api::CommandInvocation;
use tokio::task::JoinHandle;

use crate::support::{ssm_status, World, DEADLINE};

/// One condition of a [`Seen`] version.
#[derive(Clone, Debug, Default)]
pub struct SeenCondition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// `lastTransitionTime`.
    pub since: String,
}

/// One version of a CommandInvocation, as a watch delivered it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When the test received it.
    pub at: Instant,
    pub name: String,
    /// `.status.status`.
    pub status: Option<String>,
    pub conditions: Vec<SeenCondition>,
}

impl Seen {
    fn of(obj: &CommandInvocation) -> Seen {
        Seen {
            at: Instant::now(),
            name: obj.name_any(),
            status: ssm_status(obj).map(str::to_string),
            conditions: obj
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .map(|c| SeenCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    since: c.last_transition_time.0.to_string(),
                })
                .collect(),
        }
    }

    /// Condition `type_`, if the version has it.
    pub fn condition(&self, type_: &str) -> Option<&SeenCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Condition `type_` is `status`.
    pub fn has(&self, type_: &str, status: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == status)
    }

    /// One line for a failure message: status and every condition's status/reason.
    pub fn line(&self) -> String {
        let conditions: Vec<String> = self
            .conditions
            .iter()
            .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
            .collect();
        format!(
            "{} {}",
            self.status.as_deref().unwrap_or("-"),
            conditions.join(" ")
        )
    }
}

/// Every version of the namespace's CommandInvocations, recorded by a background watch that is
/// running (initial list done) before [`History::start`] returns; stopped on drop.
pub struct History {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl History {
    pub async fn start(world: &World) -> History {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (synced, mut is_synced) = tokio::sync::watch::channel(false);
        let record = seen.clone();
        let api = world.api();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => record
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Seen::of(&obj)),
                    Ok(watcher::Event::InitDone) => {
                        synced.send_replace(true);
                    }
                    Ok(_) => {}
                    Err(error) => eprintln!("history watch: {error}"),
                }
            }
        });
        tokio::time::timeout(DEADLINE, is_synced.wait_for(|s| *s))
            .await
            .expect("the history watch did not sync in time")
            .expect("the history watch ended");
        History { seen, task }
    }

    /// The versions of `name` seen so far, oldest first.
    pub fn of(&self, name: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}
