//! When SSM is asked: per command in rounds, not per resource, and who is woken by the answer.
//!
//! - [`tracker`]: the tracker: what reconcilers and the SQS consumer call, and the state its
//!   rounds share;
//! - `rounds`: the tracker's round loop, the only part of it that asks SSM;
//! - `plan`: pure, which round of a command starts now (regular, Gets or a walk for hints),
//!   and how a new resource is first read;
//! - `heard`: pure, what the push queue said about nodes no resource tracks yet;
//! - [`entries`]: pure, what a `ListCommandInvocations` entry says about one tracked step;
//! - [`schedule`]: pure, backoff with jitter and each command's round clock;
//! - [`wakers`]: the streams that wake resources whose answer changed.

pub mod entries;
mod heard;
mod plan;
mod rounds;
pub mod schedule;
pub mod tracker;
pub mod wakers;
