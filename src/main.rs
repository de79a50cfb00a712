//! The `ssm-operator` binary: command-line parsing only; the work is in the library.

use std::process::ExitCode;

use clap::Parser;
use kube::CustomResourceExt;
use ssm_operator::api::{Command as SsmCommand, CommandInvocation};
use ssm_operator::runtime::cli::{Cli, Command, CrdKind};
use ssm_operator::runtime::{controller, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ssm_operator::install_crypto_provider();
    match cli.command {
        Command::Crd { kind } => {
            let crds = match kind {
                Some(CrdKind::Commandinvocation) => vec![CommandInvocation::crd()],
                Some(CrdKind::Command) => vec![SsmCommand::crd()],
                None => vec![CommandInvocation::crd(), SsmCommand::crd()],
            };
            let mut documents = Vec::new();
            for crd in &crds {
                match serde_yaml_ng::to_string(crd) {
                    Ok(yaml) => documents.push(yaml),
                    Err(error) => {
                        eprintln!("ssm-operator: rendering the CRD failed: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            print!("{}", documents.join("---\n"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            ssm_operator::runtime::memory::tune_allocator();
            telemetry::init(args.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("ssm-operator: starting the async runtime failed: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(controller::run(*args)) {
                Ok(()) => {
                    tracing::info!("stopped");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    tracing::error!(%error, "ssm-operator failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
