//! ssm-operator: mirrors AWS Systems Manager Run Command invocations into `CommandInvocation`
//! resources (`ssm.operator.dev/v1alpha1`), so `kubectl`, kstatus and GitOps tools can see them.
//!
//! The tree, a folder per concern (each folder's `mod.rs` says what it owns):
//! - [`api`]: the two kinds (`CommandInvocation`, `Command`), their schema and conditions;
//! - [`invocation`]: a `CommandInvocation`'s reconcile and its pure status mapping;
//! - [`command`]: a `Command`'s reconcile: the exactly-once send, its status, its children;
//! - [`tracking`]: when SSM is asked, per command in rounds, and who is woken by the answer;
//! - [`aws`]: the only code that talks to AWS (SSM, STS, SQS), the SSM budget, roles, events;
//! - [`k8s`]: the only code that changes the cluster (the fenced writer), watches, leadership;
//! - [`runtime`]: process wiring: controllers, HTTP, metrics, flags, logs, memory.

#![warn(missing_docs)]

pub mod api;
pub mod aws;
pub mod command;
pub mod invocation;
pub mod k8s;
pub mod runtime;
pub mod tracking;

/// The name the operator uses as field manager, Event reporter and User-Agent product.
pub const OPERATOR_NAME: &str = "ssm-operator";

/// Installs rustls' process-wide crypto provider (ring). kube and the AWS SDK link different
/// providers, and rustls refuses to guess between them, so call this once at start-up, before
/// any TLS connection. A second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every way the operator itself can fail (SSM's answers, errors included, become status).
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// Writing `.status` failed (conflict, RBAC, API server down, ...).
    #[error("writing status of {namespace}/{name}: {source}")]
    WriteStatus {
        /// Namespace of the resource.
        namespace: String,
        /// Name of the resource.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Recording an Event failed in a way a retry may fix; the status waits for it.
    #[error("recording an Event for {namespace}/{name}: {source}")]
    RecordEvent {
        /// Namespace of the resource.
        namespace: String,
        /// Name of the resource.
        name: String,
        /// What the API server (or the connection to it) said.
        #[source]
        source: kube::Error,
    },
    /// Creating a `Command`'s child `CommandInvocation` failed.
    #[error("creating child {namespace}/{name}: {source}")]
    CreateChild {
        /// Namespace of the child.
        namespace: String,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Reading a child whose create conflicted (to tell ours from someone else's) failed.
    #[error("reading child {name} after a conflict: {source}")]
    ReadChild {
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Listing a `Command`'s children failed.
    #[error("listing the children ({selector}): {source}")]
    ListChildren {
        /// The label selector.
        selector: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child of an earlier run failed.
    #[error("deleting child {name}: {source}")]
    DeleteChild {
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Deleting a resource whose TTL ran out failed.
    #[error("deleting expired {namespace}/{name}: {source}")]
    Expire {
        /// Namespace of the resource.
        namespace: String,
        /// Name of the resource.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Setting a `Command`'s finalizers failed.
    #[error("setting the finalizers of {name}: {source}")]
    PatchFinalizers {
        /// Name of the `Command`.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// SSM's list of a finished command's nodes could not be read (its final status waits for
    /// every child).
    #[error("listing the nodes of finished command {command_id}: {source}")]
    ListNodes {
        /// SSM command id.
        command_id: String,
        /// What SSM said.
        #[source]
        source: crate::aws::ssm::SsmError,
    },
    /// `CancelCommand` failed.
    #[error("cancelling {command_id} in SSM: {source}")]
    Cancel {
        /// SSM command id.
        command_id: String,
        /// What SSM said.
        #[source]
        source: crate::aws::ssm::SsmError,
    },
    /// With `--namespace-roles`, the resource's namespace was not seen yet (its role unknown):
    /// nothing is asked or sent for it until it is.
    #[error(transparent)]
    NamespaceNotSeen(#[from] crate::aws::roles::NamespaceNotSeen),
    /// A deletion, or a new generation, waits for SSM to list the run it must cancel (SSM's
    /// listing lags its send).
    #[error("waiting for SSM to list the run to cancel")]
    RunNotListedYet,
    /// Looking in SSM for the run to cancel failed.
    #[error("looking for the run to cancel: {0}")]
    FindRun(String),
    /// The status could not be turned into JSON (a bug, not a runtime condition).
    #[error("serializing status: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The object lacks something every stored object has (namespace, name, uid).
    #[error("resource has no {0}")]
    MissingObjectKey(&'static str),
    /// Kubernetes client set-up or a call outside reconcile failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Kubernetes client configuration could not be inferred.
    #[error("kubernetes configuration: {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// This process lost the Lease while reconciling; it exits so that it restarts as follower.
    #[error("lost leadership")]
    LostLeadership,
    /// A change to the cluster or to SSM was refused because this process may not be sure it
    /// still leads ([`k8s::writer`] asks the fence before each).
    #[error("not the leader (lease not renewed in time): write refused")]
    Fenced,
    /// The HTTP server could not start.
    #[error("http server on {bind}: {source}")]
    Http {
        /// The address it tried.
        bind: std::net::SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// How soon a reconcile that failed with this error is tried again, when that does not
    /// depend on how often it failed (else the reconcilers' growing backoff applies).
    pub fn fixed_retry(&self) -> Option<std::time::Duration> {
        match self {
            Self::NamespaceNotSeen(_) => Some(crate::aws::roles::NAMESPACE_WAIT),
            _ => None,
        }
    }

    /// A short label for the `ssm_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "write_status",
            Self::RecordEvent { .. } => "record_event",
            Self::CreateChild { .. } => "create_child",
            Self::ReadChild { .. } => "read_child",
            Self::ListChildren { .. } => "list_children",
            Self::DeleteChild { .. } => "delete_child",
            Self::Expire { .. } => "expire",
            Self::PatchFinalizers { .. } => "patch_finalizers",
            Self::ListNodes { .. } => "list_nodes",
            Self::Cancel { .. } => "cancel",
            Self::RunNotListedYet => "run_not_listed_yet",
            Self::NamespaceNotSeen(_) => "namespace_not_seen",
            Self::FindRun(_) => "find_run",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Serialize(_) => "serialize",
            Self::Kube(_) | Self::KubeConfig(_) => "kube",
            Self::Config(_) => "config",
            Self::Lease(_) | Self::LostLeadership => "lease",
            Self::Fenced => "fenced",
            Self::Http { .. } => "http",
        }
    }
}
