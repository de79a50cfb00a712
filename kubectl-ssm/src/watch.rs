//! Following a `Command` (with its children) or a `CommandInvocation` until it is finished:
//! watches, never fixed sleeps. The object is watched by name and a Command's children by their
//! `ssm.operator.dev/command` label; every change is turned into a [`Progress`] (pure, in
//! [`crate::follow`]) and shown: a bar redrawn in place on a terminal, one plain line per change
//! otherwise. `--timeout` and Ctrl-C stop following and leave the object in place.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use ssm_operator::api::{Command, CommandInvocation};
use ssm_operator::command::children::{label_value, COMMAND_LABEL};

use crate::cli::{FollowArgs, Kind, Output};
use crate::error::Failure;
use crate::follow::{self, End, FinalJson, Progress};

/// One change seen by the watches.
enum Change {
    Object(Option<Box<Object>>),
    /// The object's watch listed everything once (absent then means: not found).
    ObjectListed,
    Children(Vec<CommandInvocation>),
    Child(Box<CommandInvocation>),
    ChildGone(String),
    Error(watcher::Error),
}

enum Object {
    Command(Command),
    Invocation(CommandInvocation),
}

fn by_name(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

/// The watch of the followed object, as changes.
fn object_changes(
    client: &Client,
    namespace: &str,
    kind: Kind,
    name: &str,
) -> impl Stream<Item = Change> + Send + 'static {
    fn changes<K>(
        api: Api<K>,
        name: &str,
        wrap: fn(K) -> Object,
    ) -> impl Stream<Item = Change> + Send + 'static
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let mut seen = false;
        watcher::watcher(api, by_name(name))
            .default_backoff()
            .flat_map(move |event| {
                let out: Vec<Change> = match event {
                    Ok(Event::Init) => {
                        seen = false;
                        vec![]
                    }
                    Ok(Event::InitApply(o)) => {
                        seen = true;
                        vec![Change::Object(Some(Box::new(wrap(o))))]
                    }
                    Ok(Event::InitDone) if !seen => {
                        vec![Change::Object(None), Change::ObjectListed]
                    }
                    Ok(Event::InitDone) => vec![Change::ObjectListed],
                    Ok(Event::Apply(o)) => vec![Change::Object(Some(Box::new(wrap(o))))],
                    Ok(Event::Delete(_)) => vec![Change::Object(None)],
                    Err(e) => vec![Change::Error(e)],
                };
                futures::stream::iter(out)
            })
    }
    match kind {
        Kind::Command => changes(
            Api::<Command>::namespaced(client.clone(), namespace),
            name,
            Object::Command,
        )
        .boxed(),
        Kind::Invocation => changes(
            Api::<CommandInvocation>::namespaced(client.clone(), namespace),
            name,
            Object::Invocation,
        )
        .boxed(),
    }
}

/// The watch of a Command's children, as changes.
fn children_changes(
    client: &Client,
    namespace: &str,
    name: &str,
) -> impl Stream<Item = Change> + Send + 'static {
    let api = Api::<CommandInvocation>::namespaced(client.clone(), namespace);
    let config =
        watcher::Config::default().labels(&format!("{COMMAND_LABEL}={}", label_value(name)));
    let mut buffer: Vec<CommandInvocation> = Vec::new();
    watcher::watcher(api, config)
        .default_backoff()
        .flat_map(move |event| {
            let out: Vec<Change> = match event {
                Ok(Event::Init) => {
                    buffer.clear();
                    vec![]
                }
                Ok(Event::InitApply(o)) => {
                    buffer.push(o);
                    vec![]
                }
                Ok(Event::InitDone) => vec![Change::Children(std::mem::take(&mut buffer))],
                Ok(Event::Apply(o)) => vec![Change::Child(Box::new(o))],
                Ok(Event::Delete(o)) => vec![Change::ChildGone(o.name_any())],
                Err(e) => vec![Change::Error(e)],
            };
            futures::stream::iter(out)
        })
}

/// How progress is shown.
enum Display {
    /// A bar redrawn in place (stderr is a terminal).
    Bar(ProgressBar),
    /// One plain line on stderr per change.
    Plain { last: String, started: Instant },
}

impl Display {
    fn new(kind: Kind, name: &str) -> Display {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(bar_style(false));
            bar.set_prefix(format!("{}/{name}", kind.short()));
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            Display::Plain {
                last: String::new(),
                started: Instant::now(),
            }
        }
    }

    fn show(&mut self, kind: Kind, name: &str, progress: &Progress) {
        match self {
            Display::Bar(bar) => {
                let target = progress.target.max(progress.done);
                // No nodes known yet: a spinner, not a bar that looks full at 0/0.
                bar.set_style(bar_style(target > 0));
                bar.set_length(u64::from(target));
                bar.set_position(u64::from(progress.done));
                let plural = if progress.errors == 1 { "" } else { "s" };
                bar.set_message(format!(
                    "{} error{plural}, {}",
                    progress.errors,
                    progress.status_text()
                ));
            }
            Display::Plain { last, started } => {
                let line = progress.line();
                if *last != line {
                    eprintln!(
                        "[{:>6.1}s] {}/{name}: {line}",
                        started.elapsed().as_secs_f64(),
                        kind.short()
                    );
                    *last = line;
                }
            }
        }
    }

    fn note(&self, text: &str) {
        match self {
            Display::Bar(bar) => bar.println(text),
            Display::Plain { .. } => eprintln!("{text}"),
        }
    }

    /// Stops redrawing; the bar is cleared, the result line that follows says the same.
    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// The bar's look: `⠋ ssmcmd/web [00:00:04] [=====>    ] 1/3 0 errors, InProgress`, or
/// without the bar while no node is known.
fn bar_style(with_bar: bool) -> ProgressStyle {
    let template = if with_bar {
        "{spinner} {prefix} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}"
    } else {
        "{spinner} {prefix} [{elapsed_precise}] {msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Follows `kind/name` until it is finished, `--timeout` passes or Ctrl-C; prints the result
/// and returns the exit status.
pub async fn follow(
    client: Client,
    namespace: &str,
    kind: Kind,
    name: &str,
    args: &FollowArgs,
) -> Result<u8, Failure> {
    let started = Instant::now();
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut changes = object_changes(&client, namespace, kind, name).boxed();
    if kind == Kind::Command {
        changes =
            futures::stream::select(changes, children_changes(&client, namespace, name)).boxed();
    }
    let mut display = Display::new(kind, name);
    let mut object: Option<Object> = None;
    let mut children: BTreeMap<String, CommandInvocation> = BTreeMap::new();
    let mut progress: Option<Progress> = None;
    let mut last_error = String::new();
    let sleep = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => futures::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let end = loop {
        let change = tokio::select! {
            change = changes.next() => change,
            () = &mut sleep => break End::TimedOut,
            _ = &mut ctrl_c => break End::Interrupted,
        };
        match change {
            None => break End::Failed,
            Some(Change::Object(Some(o))) => object = Some(*o),
            Some(Change::Object(None)) => {
                if object.is_some() {
                    break End::Deleted;
                }
            }
            Some(Change::ObjectListed) => {
                if object.is_none() {
                    display.finish();
                    return Err(Failure::Refused(format!(
                        "{}/{name} not found in namespace {namespace}",
                        kind.short()
                    )));
                }
            }
            Some(Change::Children(list)) => {
                children = list.into_iter().map(|c| (c.name_any(), c)).collect();
            }
            Some(Change::Child(c)) => {
                children.insert(c.name_any(), *c);
            }
            Some(Change::ChildGone(n)) => {
                children.remove(&n);
            }
            Some(Change::Error(e)) => {
                if let Some(refusal) = refused(&e) {
                    display.finish();
                    return Err(Failure::Refused(refusal));
                }
                // Transient (connection, API server restarting): the watch backs off and
                // resumes; say so once per distinct error.
                let text = format!("watch: {e} (retrying)");
                if text != last_error {
                    display.note(&text);
                    last_error = text;
                }
                continue;
            }
        }
        let Some(current) = &object else { continue };
        let now = match current {
            Object::Command(c) => follow::of_command(c, children.values()),
            Object::Invocation(c) => follow::of_invocation(c),
        };
        display.show(kind, name, &now);
        let end = now.end();
        progress = Some(now);
        if let Some(end) = end {
            break end;
        }
    };
    display.finish();
    let elapsed = started.elapsed();
    match args.output {
        Output::Text => {
            let text =
                follow::final_text(kind, name, end, progress.as_ref(), elapsed, args.timeout);
            match end {
                End::Succeeded | End::Failed => println!("{text}"),
                End::Deleted | End::TimedOut | End::Interrupted => eprintln!("{text}"),
            }
        }
        Output::Json => {
            let json = FinalJson {
                kind: match kind {
                    Kind::Command => "Command",
                    Kind::Invocation => "CommandInvocation",
                },
                namespace,
                name,
                result: end,
                exit_code: end.exit_code(),
                elapsed_seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                left_in_place: end != End::Deleted,
                progress: progress.as_ref(),
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
            if matches!(end, End::TimedOut | End::Interrupted) {
                eprintln!(
                    "{}",
                    follow::final_text(kind, name, end, progress.as_ref(), elapsed, args.timeout)
                );
            }
        }
    }
    Ok(end.exit_code())
}

/// A watch error the cluster will keep giving (RBAC, a missing CRD): stop, exit 2.
fn refused(error: &watcher::Error) -> Option<String> {
    let source = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    match source {
        kube::Error::Api(status) if matches!(status.code, 401 | 403 | 404) => Some(format!(
            "the cluster refused to let us watch: {}",
            status.message
        )),
        _ => None,
    }
}
