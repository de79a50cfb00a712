//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): with
//! `--leader-elect`, only the Lease holder reconciles and writes status.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Error, OPERATOR_NAME};

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
            .with_grace((seconds / 3).max(1))
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
