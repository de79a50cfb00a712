//! The error type of the test bed: every variant names the step that failed, and start-up
//! failures of etcd or kube-apiserver carry the tail of that process's log.

use std::path::PathBuf;
use std::time::Duration;

/// Why starting or using a [`TestCluster`](crate::TestCluster) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `KUBEBUILDER_ASSETS` is not set (or empty), so the binaries cannot be found.
    #[error(
        "KUBEBUILDER_ASSETS is not set; build the envtest binaries and point at them with \
         `export KUBEBUILDER_ASSETS=\"$(bash hack/envtest-assets.sh)\"`"
    )]
    AssetsUnset,

    /// The assets directory lacks one or more of the required binaries.
    #[error(
        "envtest assets directory {} is incomplete (missing: {}); (re)build it with \
         `bash hack/envtest-assets.sh`",
        dir.display(),
        missing.join(", ")
    )]
    AssetsIncomplete {
        /// The directory that was looked at.
        dir: PathBuf,
        /// File names that are missing or are not regular files.
        missing: Vec<String>,
    },

    /// A file-system or process operation failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done, e.g. "creating the temporary directory".
        step: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A helper tool (such as `openssl`) ran but reported failure.
    #[error("{step}: exited with {status}: {stderr}")]
    Tool {
        /// What the tool was asked to do.
        step: String,
        /// Its exit status.
        status: String,
        /// What it printed to stderr.
        stderr: String,
    },

    /// etcd or kube-apiserver exited while the cluster was starting.
    #[error(
        "{process} exited while {step} ({status}); last lines of {}:\n{tail}",
        log.display()
    )]
    ProcessExited {
        /// "etcd" or "kube-apiserver".
        process: &'static str,
        /// What start-up was waiting for when the exit was noticed.
        step: String,
        /// The exit status.
        status: String,
        /// The process's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A start-up step did not finish before its deadline.
    #[error(
        "timed out after {waited:?} while {step} (last error: {last_error}); last lines of {}:\n{tail}",
        log.display()
    )]
    Timeout {
        /// What was being waited for.
        step: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last error seen while polling.
        last_error: String,
        /// The log of the process that was expected to become ready.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// Reading the kubeconfig or turning it into a client configuration failed.
    #[error("{step}: {source}")]
    Kubeconfig {
        /// What was being done.
        step: String,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },

    /// Building or using a Kubernetes client failed.
    #[error("{step}: {source}")]
    Client {
        /// What was being done.
        step: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Shorthand for an [`Error::Io`] with its step.
    pub(crate) fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            step: step.into(),
            source,
        }
    }

    /// Whether this start-up failure was caused by a port that another process took between
    /// choosing it and binding it, so that a retry with fresh ports may succeed.
    pub(crate) fn is_port_conflict(&self) -> bool {
        match self {
            Error::ProcessExited { tail, .. } => tail.contains("address already in use"),
            _ => false,
        }
    }
}
