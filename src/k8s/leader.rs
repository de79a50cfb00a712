//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): with
//! `--leader-elect`, only the Lease holder reconciles and writes status.
//!
//! The [`Fence`] is checked right before every status write and Event. It does not trust the
//! election's own "I lead" flag, which can be stale after the process was paused or starved:
//! it reads the Lease itself (a watch) and allows writes only while the Lease names this
//! process and its last renewal, stamped by this process's own clock, is younger than the
//! lease duration minus a safety margin. A follower takes over only after the full duration.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Error, OPERATOR_NAME};

/// Whether this process may write status and Events right now.
#[derive(Clone, Debug, Default)]
pub struct Fence(Option<Arc<LeaseFence>>);

#[derive(Debug)]
struct LeaseFence {
    identity: String,
    /// Writes stop this long before the Lease would expire.
    margin: Duration,
    /// Until when the last observed Lease lets this process write (`None`: not held).
    valid_until: Mutex<Option<SystemTime>>,
}

impl Fence {
    /// A fence that always allows writes (no leader election).
    pub fn open() -> Self {
        Self(None)
    }

    /// A fence for `identity` that allows writes only while the observed Lease says so.
    pub fn for_lease(identity: &str, duration: Duration) -> Self {
        Self(Some(Arc::new(LeaseFence {
            identity: identity.to_string(),
            margin: fence_margin(duration),
            valid_until: Mutex::new(None),
        })))
    }

    /// True while writes are allowed at `now` (wall clock).
    pub fn allows_writes_at(&self, now: SystemTime) -> bool {
        match &self.0 {
            None => true,
            Some(fence) => fence
                .valid_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|until| now < until),
        }
    }

    /// True while writes are allowed now.
    pub fn allows_writes(&self) -> bool {
        self.allows_writes_at(SystemTime::now())
    }

    /// Takes in the Lease as last seen (`None`: it is gone).
    pub fn observe(&self, lease: Option<&Lease>) {
        let Some(fence) = &self.0 else { return };
        let until = lease
            .and_then(|l| l.spec.as_ref())
            .filter(|spec| spec.holder_identity.as_deref() == Some(fence.identity.as_str()))
            .and_then(|spec| {
                let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
                let duration = Duration::from_secs(spec.lease_duration_seconds?.max(0) as u64);
                renewed.checked_add(duration.saturating_sub(fence.margin))
            });
        *fence
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    /// Follows the Lease `name` in `namespace` until the task is dropped, feeding [`observe`].
    ///
    /// [`observe`]: Fence::observe
    pub async fn follow(self, client: Client, namespace: String, name: String) {
        let api: Api<Lease> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(lease) | Event::InitApply(lease)) => self.observe(Some(&lease)),
                Ok(Event::Delete(_)) => self.observe(None),
                Ok(Event::Init | Event::InitDone) => {}
                Err(error) => tracing::warn!(%error, lease = %name, "watching the Lease failed"),
            }
        }
    }

    /// Completes once writes are allowed (after this process acquired the Lease).
    pub async fn opened(&self) {
        while !self.allows_writes() {
            tokio::time::sleep(FENCE_CHECK).await;
        }
    }

    /// Completes once writes are no longer allowed: the Lease moved on, or this process failed
    /// to renew it in time (for instance because it was paused).
    pub async fn closed(&self) {
        while self.allows_writes() {
            tokio::time::sleep(FENCE_CHECK).await;
        }
    }
}

/// How often [`Fence::opened`] and [`Fence::closed`] look.
const FENCE_CHECK: Duration = Duration::from_millis(200);

/// Writes stop this long before the Lease expires: an eighth of its duration, at least 300 ms,
/// for clock skew between pods and the time a write takes. The Lease is renewed at half its
/// duration ([`renew_grace`]), so a renewal has `duration / 2 - margin` to be written and
/// seen by the fence's watch before the fence closes on a healthy leader.
fn fence_margin(duration: Duration) -> Duration {
    (duration / 8).max(Duration::from_millis(300))
}

/// kube-lease-manager renews this many seconds before the Lease expires: half its duration.
fn renew_grace(seconds: u64) -> u64 {
    (seconds / 2).max(1)
}

/// Where the Lease lives and who competes for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own namespace in a cluster).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This process's identity (the pod name).
    pub identity: String,
    /// How long a holder keeps the Lease without renewing it; a follower takes over after it.
    pub duration: Duration,
}

/// A running campaign for the Lease.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts competing for the Lease in the background.
    pub async fn campaign(client: Client, settings: &LeaseSettings) -> Result<Self, Error> {
        let seconds = settings.duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_field_manager(format!("{OPERATOR_NAME}-{}", settings.identity))
            .with_duration(seconds)
            .with_grace(renew_grace(seconds))
            .build()
            .await?;
        let (is_leader, task) = manager.watch().await;
        Ok(Self { is_leader, task })
    }

    /// Waits until this process holds the Lease.
    pub async fn acquired(&mut self) -> Result<(), Error> {
        self.is_leader
            .wait_for(|leader| *leader)
            .await
            .map(|_| ())
            .map_err(|_| Error::LostLeadership)
    }

    /// Waits until this process no longer holds the Lease.
    pub async fn lost(&mut self) {
        // An error means the campaign ended, which also means the Lease is gone.
        let _ = self.is_leader.wait_for(|leader| !*leader).await;
    }

    /// Stops competing and gives the Lease up, so a follower may take it.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("lease released"),
            Ok(Err(error)) => tracing::warn!(%error, "releasing the lease failed"),
            Err(error) => tracing::warn!(%error, "lease task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;

    fn lease(holder: &str, renewed: SystemTime, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(Timestamp::try_from(renewed).unwrap())),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn without_leader_election_writes_are_always_allowed() {
        assert!(Fence::open().allows_writes());
    }

    #[test]
    fn writes_are_allowed_only_while_our_renewal_is_younger_than_duration_minus_margin() {
        let fence = Fence::for_lease("me", Duration::from_secs(15));
        let t0 = SystemTime::now();
        assert!(!fence.allows_writes_at(t0), "nothing observed yet");
        fence.observe(Some(&lease("me", t0, 15)));
        assert!(fence.allows_writes_at(t0 + Duration::from_secs(13)));
        assert!(
            !fence.allows_writes_at(t0 + Duration::from_millis(13_200)),
            "closed 1.875 s before the Lease expires"
        );
        // A paused process resumes long after: its last renewal is too old.
        assert!(!fence.allows_writes_at(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_lease_held_by_another_or_gone_closes_the_fence_at_once() {
        let fence = Fence::for_lease("me", Duration::from_secs(4));
        let t0 = SystemTime::now();
        fence.observe(Some(&lease("me", t0, 4)));
        assert!(fence.allows_writes_at(t0));
        fence.observe(Some(&lease("other", t0, 4)));
        assert!(!fence.allows_writes_at(t0));
        fence.observe(Some(&lease("me", t0, 4)));
        fence.observe(None);
        assert!(!fence.allows_writes_at(t0));
        assert_eq!(
            fence_margin(Duration::from_secs(15)),
            Duration::from_millis(1875)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(2)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn a_healthy_leader_has_slack_between_renewal_and_the_fence_closing() {
        for seconds in [2u64, 4, 15, 60] {
            let duration = Duration::from_secs(seconds);
            let renewed_after = duration - Duration::from_secs(renew_grace(seconds));
            let closes_after = duration - fence_margin(duration);
            let slack = closes_after - renewed_after;
            assert!(
                slack >= duration / 4 && slack >= Duration::from_millis(700),
                "{seconds} s lease: only {slack:?} for a renewal to be seen"
            );
        }
    }
}
