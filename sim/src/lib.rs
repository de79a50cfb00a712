//! `ssm-sim`: a scripted simulator of AWS Systems Manager Run Command.
//!
//! It speaks SSM's real wire protocol (awsJson1_1: `POST /` with
//! `X-Amz-Target: AmazonSSM.<Operation>`), so the real `aws-sdk-ssm` client works against it
//! through `endpoint_url`. Signatures are ignored. Served operations: GetCommandInvocation,
//! ListCommandInvocations, ListCommands, SendCommand and CancelCommand.
//!
//! Tests script commands whose plugins follow timelines measured from the moment the command
//! is added, inject faults (throttling, HTTP 500, dropped connections), limit the request
//! rate, add latency and read per-operation call counters:
//!
//! ```no_run
//! use std::time::Duration;
//! use ssm_sim::{Command, Fault, Invocation, Plugin, Simulator, Status};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let sim = Simulator::start().await?;
//! sim.add_command(
//!     Command::new("11111111-2222-4333-8444-555555555555").invocation(
//!         Invocation::new("i-0123456789abcdef0").plugin(
//!             Plugin::new("aws:runShellScript")
//!                 .step(Duration::from_millis(100), Status::InProgress)
//!                 .step_with(Duration::from_millis(300), Status::Failed, "Failed", 2)
//!                 .stderr("boom\n"),
//!         ),
//!     ),
//! );
//! sim.inject(Fault::Throttle { count: 1 });
//! println!("point the SDK at {}", sim.endpoint());
//! # Ok(()) }
//! ```
//!
//! Commands made by SendCommand play per-instance scripts ([`Simulator::script_instance`],
//! [`Simulator::set_send_default`]) and resolve tag targets over time
//! ([`Simulator::resolve_target`]); SendCommand has its own fault queue
//! ([`Simulator::inject_send`], [`SendFault`]) and records what it created
//! ([`Simulator::sent`]), CancelCommand what it was asked ([`Simulator::cancelled`]), and
//! ListCommands may lag behind sends ([`Simulator::set_list_commands_lag`]).
//!
//! The exact SSM behaviours mirrored (status aggregation, output limits, error codes) are
//! described on the modules and in `sim/README.md`.

#![warn(missing_docs)]

mod api;
mod clock;
mod command_filters;
mod error;
mod faults;
mod ids;
mod listing;
mod model;
mod protocol;
mod ratelimit;
mod render;
mod scenario;
mod script;
#[cfg(test)]
mod send_tests;
mod sending;
mod server;
mod serving;
mod simulator;
mod simulator_send;
pub mod sqs;
pub mod sts;

pub use faults::Fault;
pub use scenario::Scenario;
pub use script::{
    Command, Invocation, Plugin, Status, DEFAULT_DOCUMENT, DEFAULT_PLUGIN, DEFAULT_S3_REGION,
};
pub use sending::{SendFault, Sent};
pub use simulator::Simulator;
pub use sqs::SqsSimulator;
pub use sts::StsSimulator;
