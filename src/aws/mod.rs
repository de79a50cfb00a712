//! The only code that talks to AWS, and what decides how it may.
//!
//! - [`ssm`]: SSM clients per region and role, error classes, reads, sends and cancels;
//! - [`budget`]: pure, the process-wide SSM rate (token bucket, cut on throttling);
//! - [`sts`]: STS, a namespace's role credentials;
//! - [`roles`]: which role each namespace's resources use (a watch of Namespace annotations);
//! - [`sqs`]: the push queue of SSM events (long polling);
//! - [`eventbridge`]: pure, what an EventBridge message says (a hint to re-read SSM).

pub mod budget;
pub mod eventbridge;
pub mod roles;
pub mod sqs;
pub mod ssm;
pub mod sts;
