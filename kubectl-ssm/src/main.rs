//! `kubectl-ssm`: the `kubectl ssm` plugin. `run` creates a `Command` and follows it, `wait`
//! follows an existing `Command` or `CommandInvocation`, `logs` prints their output. It talks to
//! the cluster only (the user's kubeconfig and RBAC: no AWS credentials needed), except
//! `logs --full`, which reads S3 or CloudWatch Logs with the standard AWS chain.
//!
//! - [`cli`]: the arguments, and (pure) `run`'s arguments → the `Command` spec;
//! - [`error`]: why the plugin stops before an outcome, and the exit status that says so;
//! - [`follow`]: pure, the follow state → progress line, end and exit status;
//! - [`watch`]: the watches that feed it, the bar or plain lines, timeout and Ctrl-C;
//! - [`logs`]: pure, invocation output → prefixed lines, cut detection;
//! - [`full`]: `--full`, the whole text from S3 or CloudWatch Logs.
//!
//! Exit status: 0 success (or output shown), 1 ended otherwise, 2 usage error or the cluster
//! refusing, 124 `--timeout`, 130 Ctrl-C.

mod cli;
mod error;
mod follow;
mod full;
mod logs;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use ssm_operator::api::{Command, CommandInvocation};
use ssm_operator::command::children::{label_value, COMMAND_LABEL};

use cli::{Cli, ClusterArgs, Kind, LogsArgs, Output, RunArgs, Sub};
use error::{refused, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ssm_operator::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    // Usage errors come before any connection to the cluster.
    let (kind, name) = match &cli.command {
        Sub::Run(run) => {
            cli::command_spec(run)?;
            (Kind::Command, run.name.clone())
        }
        Sub::Wait(wait) => cli::parse_target(&wait.target)?,
        Sub::Logs(logs) => cli::parse_target(&logs.target)?,
    };
    let (client, namespace) = connect(&cli.cluster).await?;
    match cli.command {
        Sub::Run(run) => run_command(client, &namespace, run).await,
        Sub::Wait(wait) => watch::follow(client, &namespace, kind, &name, &wait.follow).await,
        Sub::Logs(args) => show_logs(client, &namespace, kind, &name, &args).await,
    }
}

/// A client for the kubeconfig (`--kubeconfig`, else `KUBECONFIG` / `~/.kube/config`, else
/// in-cluster) and `--context`; the namespace from `-n`, else the context's, else `default`.
async fn connect(args: &ClusterArgs) -> Result<(Client, String), Failure> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| refused(&format!("reading {}", path.display()), e))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| refused("kubeconfig", e))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| refused("kubeconfig", e))?,
        None => Config::infer()
            .await
            .map_err(|e| refused("kubeconfig", e))?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| refused("kubernetes client", e))?;
    Ok((client, namespace))
}

async fn run_command(client: Client, namespace: &str, args: RunArgs) -> Result<u8, Failure> {
    let spec = cli::command_spec(&args)?;
    let api: Api<Command> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &Command::new(&args.name, spec))
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) => Failure::Refused(format!(
                "creating ssmcmd/{} in {namespace}: {}",
                args.name, status.message
            )),
            other => refused(&format!("creating ssmcmd/{}", args.name), other),
        })?;
    if args.detach {
        match args.follow.output {
            Output::Text => println!("ssmcmd/{} created in namespace {namespace}", args.name),
            Output::Json => println!(
                "{}",
                serde_json::json!({"kind": "Command", "namespace": namespace, "name": args.name, "result": "created"})
            ),
        }
        return Ok(0);
    }
    if args.follow.output == Output::Text {
        eprintln!("ssmcmd/{} created in namespace {namespace}", args.name);
    }
    watch::follow(client, namespace, Kind::Command, &args.name, &args.follow).await
}

async fn show_logs(
    client: Client,
    namespace: &str,
    kind: Kind,
    name: &str,
    args: &LogsArgs,
) -> Result<u8, Failure> {
    let invocations: Api<CommandInvocation> = Api::namespaced(client.clone(), namespace);
    let not_found = |e: kube::Error| match e {
        kube::Error::Api(status) => {
            Failure::Refused(format!("{}/{name}: {}", kind.short(), status.message))
        }
        other => refused(&format!("{}/{name}", kind.short()), other),
    };
    let mut list: Vec<CommandInvocation> = match kind {
        Kind::Invocation => vec![invocations.get(name).await.map_err(not_found)?],
        Kind::Command => {
            let command = Api::<Command>::namespaced(client, namespace)
                .get(name)
                .await
                .map_err(not_found)?;
            let run = command.status.and_then(|s| s.command_id);
            let selector = format!("{COMMAND_LABEL}={}", label_value(name));
            invocations
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(not_found)?
                .items
                .into_iter()
                // Children of an earlier generation's run are on their way out.
                .filter(|c| run.as_deref().is_none_or(|id| c.spec.command_id == id))
                .collect()
        }
    };
    list.sort_by(|a, b| a.spec.instance_id.cmp(&b.spec.instance_id));
    if args.failed {
        list.retain(logs::failed);
    }
    let mut fetcher = full::Fetcher::default();
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for cinv in &list {
        let mut entry = logs::entry(cinv);
        if args.full {
            for (text, stream) in [
                (&mut entry.stdout, logs::Stream::Stdout),
                (&mut entry.stderr, logs::Stream::Stderr),
            ] {
                if text.cut {
                    match fetcher.fetch(cinv, stream).await {
                        Ok(whole) => *text = whole,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
        }
        entries.push(entry);
    }
    match args.output {
        Output::Text => {
            for entry in &entries {
                eprintln!("{}", logs::summary(entry, args.full));
            }
            print!("{}", logs::format(&entries));
        }
        Output::Json => {
            let json = serde_json::json!({
                "kind": match kind { Kind::Command => "Command", Kind::Invocation => "CommandInvocation" },
                "namespace": namespace,
                "name": name,
                "invocations": entries,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
    }
    if entries.is_empty() {
        eprintln!(
            "# no {}invocations to show for {}/{name}",
            if args.failed { "failed " } else { "" },
            kind.short()
        );
    }
    if !errors.is_empty() {
        return Err(Failure::Fetch(format!(
            "--full: {} (the cut excerpt was shown instead)",
            errors.join("; ")
        )));
    }
    Ok(0)
}
