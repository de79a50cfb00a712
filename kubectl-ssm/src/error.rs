//! Why the plugin stops before an outcome, and the exit status that says so: 2 for usage
//! errors and the cluster refusing, 1 when `logs --full` could not fetch the whole text.

use crate::cli::UsageError;

/// Why the plugin stopped before an outcome.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad arguments: exit 2.
    #[error("{0}")]
    Usage(#[from] UsageError),
    /// The cluster refused (not found, forbidden, invalid, unreachable): exit 2.
    #[error("{0}")]
    Refused(String),
    /// `logs --full` could not fetch the whole text: exit 1.
    #[error("{0}")]
    Fetch(String),
}

impl Failure {
    /// The exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Refused(_) => 2,
            Failure::Fetch(_) => 1,
        }
    }
}

/// The cluster refused `what`.
pub fn refused(what: &str, error: impl std::fmt::Display) -> Failure {
    Failure::Refused(format!("{what}: {error}"))
}
