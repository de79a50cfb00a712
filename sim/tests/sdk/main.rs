//! End-to-end tests of the simulator through the real `aws-sdk-ssm` client.
//!
//! One test binary (modules below) so the SDK is linked once.

mod common;
mod errors;
mod faults;
mod identity;
mod lifecycle;
mod listing;
mod rate_limit;
mod send_cancel;
mod sending;
mod sqs;
mod timelines;
