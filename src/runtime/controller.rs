//! Wiring: builds the Kubernetes client, SSM access and HTTP endpoint, optionally waits for the
//! Lease, then runs one kube-runtime `Controller` per watched namespace (or one for all) until
//! SIGTERM/SIGINT or lost leadership. On a signal, in-flight reconciles finish before it
//! returns; on lost leadership (or renewals that stopped succeeding in time) it returns at once,
//! without waiting for in-flight SSM calls, and the fence has already stopped every write.

use std::sync::Arc;
use std::time::Duration;

use ::http::header::{HeaderValue, USER_AGENT};
use futures::future::join_all;
use futures::StreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{Command, CommandInvocation};
use crate::aws::eventbridge::Hint;
use crate::aws::roles::Roles;
use crate::aws::sqs::Queue;
use crate::aws::ssm::Ssm;
use crate::command::send::Policy;
use crate::invocation::status::Settings;
use crate::invocation::turns::{WriteTurns, CALL_STALE};
use crate::k8s::health::Health;
use crate::k8s::leader::{Fence, Leadership, LeaseSettings};
use crate::k8s::watch::watch as watch_invocations;
use crate::k8s::writer::Writer;
use crate::runtime::cli::RunArgs;
use crate::runtime::http;
use crate::runtime::metrics::Metrics;
use crate::tracking::schedule::PollIntervals;
use crate::tracking::tracker::Tracker;
use crate::{command, invocation};
use crate::{Error, OPERATOR_NAME};

/// Reconciles that run at once per kind, per `--max-concurrent-reconciles` write slot.
const RECONCILES_PER_WRITE: u16 = 2;

/// A resource stalled on an error an outside fix can cure is asked again after this many
/// `--poll-interval-max` (5 minutes by default).
const RECHECK_FACTOR: u32 = 10;

/// How long in-flight reconciles may take to finish after SIGTERM (the chart's pod grace is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the operator with the given flags until a shutdown signal. `Ok` means a clean stop.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    if args.poll_interval_min.is_zero() || args.poll_interval_min > args.poll_interval_max {
        return Err(Error::Config(format!(
            "need 0 < --poll-interval-min ({:?}) <= --poll-interval-max ({:?})",
            args.poll_interval_min, args.poll_interval_max
        )));
    }
    let namespaces = args.watched_namespaces().map_err(Error::Config)?;
    let identity = instance_identity();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        ?namespaces,
        poll_interval_min = ?args.poll_interval_min,
        poll_interval_max = ?args.poll_interval_max,
        not_found_grace = ?args.not_found_grace,
        progress_after = ?args.progress_after,
        max_output_chars = args.max_output_chars,
        leader_elect = args.leader_elect,
        namespace_roles = args.namespace_roles,
        sqs_queue_url = ?args.sqs_queue_url,
        push_backstop = ?args.push_backstop,
        ssm_attempt_timeout = ?args.ssm_attempt_timeout,
        ssm_max_rate = args.ssm_rate(),
        max_concurrent_reconciles = args.max_concurrent_reconciles,
        send_commands = args.send_commands,
        allowed_documents = ?args.allowed_documents,
        %identity,
        "starting ssm-operator"
    );
    let client = kube_client().await?;
    let metrics = Arc::new(Metrics::new());
    let ssm =
        Arc::new(Ssm::from_env(metrics.clone(), args.ssm_attempt_timeout, args.ssm_rate()).await);
    match ssm.default_region() {
        Some(region) => info!(region, "SSM default region"),
        None => warn!(
            "no AWS region configured: resources without spec.region will report SsmUnavailable"
        ),
    }

    let stop = stop_on_signals();
    let health = Arc::new(Health::default());
    let fence = if args.leader_elect {
        Fence::for_lease(&identity, args.lease_duration)
    } else {
        Fence::open()
    };
    let (bound, server) = http::serve(
        args.http_bind,
        metrics.clone(),
        health.clone(),
        fence.clone(),
        stopped(stop.subscribe()),
    )
    .await?;
    info!(%bound, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(server);

    let intervals = PollIntervals {
        min: args.poll_interval_min,
        max: args.poll_interval_max,
    };
    let recheck_interval = args.poll_interval_max.saturating_mul(RECHECK_FACTOR);
    let roles = Arc::new(if args.namespace_roles {
        Roles::enabled()
    } else {
        Roles::disabled()
    });
    let tracker = Arc::new(Tracker::new(
        ssm.clone(),
        intervals,
        recheck_interval,
        args.push_backstop,
        metrics.clone(),
    ));
    let ctx = Arc::new(invocation::Context {
        tracker: tracker.clone(),
        roles: roles.clone(),
        writer: Writer::new(
            client.clone(),
            Some(identity.clone()),
            metrics.clone(),
            fence.clone(),
        ),
        settings: Settings {
            max_output_chars: args.max_output_chars as usize,
            not_found_grace: args.not_found_grace,
            recheck_interval,
            progress_after: args.progress_after,
        },
        intervals,
        metrics: metrics.clone(),
        turns: {
            let tracker = tracker.clone();
            WriteTurns::new(
                usize::from(args.max_concurrent_reconciles),
                metrics.clone(),
                move |woken| tracker.wake(woken),
            )
        },
        ttl_after_finished: args.ttl_after_finished,
    });

    let policy = Policy::new(args.send_commands, &args.allowed_documents)
        .map_err(|e| Error::Config(format!("--allowed-documents: {e}")))?;
    let mut commands = command::Context::new(
        client.clone(),
        ssm.clone(),
        roles.clone(),
        Writer::new(
            client.clone(),
            Some(identity.clone()),
            ctx.metrics.clone(),
            fence.clone(),
        ),
        policy,
        intervals,
        recheck_interval,
        ctx.metrics.clone(),
        // --max-concurrent-reconciles per kind: Commands have their own semaphore (one for the
        // process, across all watched namespaces), so that Commands waiting for SSM never hold
        // the turns CommandInvocation status writes need, nor the other way round.
        usize::from(args.max_concurrent_reconciles),
    );
    commands.ttl_after_finished = args.ttl_after_finished;
    let commands = Arc::new(commands);
    let queue = args
        .sqs_queue_url
        .clone()
        .map(|url| Queue::new(ssm.sdk_config(), url, ctx.metrics.clone()));
    // A namespace whose role changed: its tracked CommandInvocations and its Commands are
    // reconciled at once with the new identity.
    let on_role_change = {
        let (tracker, commands) = (ctx.tracker.clone(), commands.clone());
        move |namespace: &str| {
            tracker.wake_namespace(namespace);
            commands.role_changed(namespace);
        }
    };
    let roles_task = tokio::spawn(roles.clone().follow(
        client.clone(),
        on_role_change,
        ctx.metrics.clone(),
    ));
    let result = if args.leader_elect {
        let settings = LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
            duration: args.lease_duration,
        };
        let follower = tokio::spawn(fence.clone().follow(
            client.clone(),
            settings.namespace.clone(),
            settings.name.clone(),
        ));
        let result = run_as_leader(
            Parts {
                args: &args,
                namespaces,
                client,
                ctx,
                commands,
                health,
                queue,
            },
            &stop,
            settings,
            fence,
        )
        .await;
        follower.abort();
        result
    } else {
        let parts = Parts {
            args: &args,
            namespaces,
            client,
            ctx,
            commands,
            health,
            queue,
        };
        run_controllers(parts, stopped(stop.subscribe())).await;
        Ok(())
    };

    roles_task.abort();
    stop.send_replace(true);
    if let Ok(Err(error)) = server.await {
        warn!(%error, "http server stopped with an error");
    }
    result
}

/// Waits for the Lease, reconciles while holding it, and gives it up on shutdown.
/// What the controllers run with.
struct Parts<'a> {
    args: &'a RunArgs,
    /// The namespaces to watch (empty: all).
    namespaces: Vec<String>,
    client: Client,
    ctx: Arc<invocation::Context>,
    commands: Arc<command::Context>,
    health: Arc<Health>,
    queue: Option<Queue>,
}

async fn run_as_leader(
    parts: Parts<'_>,
    stop: &watch::Sender<bool>,
    settings: LeaseSettings,
    fence: Fence,
) -> Result<(), Error> {
    let mut leadership = Leadership::campaign(parts.client.clone(), &settings).await?;
    parts.health.set_ready(true);
    info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "waiting for leadership");
    tokio::select! {
        acquired = leadership.acquired() => acquired?,
        () = stopped(stop.subscribe()) => {
            leadership.release().await;
            return Ok(());
        }
    }
    // The fence opens once the Lease as stored names this process.
    tokio::select! {
        () = fence.opened() => {},
        () = leadership.lost() => return Err(Error::LostLeadership),
        () = stopped(stop.subscribe()) => {
            leadership.release().await;
            return Ok(());
        }
    }
    info!("leading: starting controllers");
    parts.health.set_ready(false);

    // A signal stops the controllers gracefully; a loss drops them below.
    let controllers = run_controllers(parts, stopped(stop.subscribe()));
    tokio::pin!(controllers);
    // On loss, return at once: the fence already refuses writes, and in-flight SSM calls
    // are not worth waiting for (dropping the controllers cancels them).
    tokio::select! {
        () = &mut controllers => {},
        () = leadership.lost() => {
            warn!("lost leadership: stopping at once");
            return Err(Error::LostLeadership);
        }
        () = fence.closed() => {
            warn!("lost leadership: the Lease was not renewed in time; stopping at once");
            return Err(Error::LostLeadership);
        }
    }
    leadership.release().await;
    Ok(())
}

/// Runs one controller per watched namespace until `shutdown` completes.
async fn run_controllers(
    parts: Parts<'_>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Parts {
        args,
        namespaces,
        client,
        ctx,
        commands,
        health,
        queue,
    } = parts;
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    // No reconcile before every namespace's role is known (a no-op without --namespace-roles).
    tokio::select! {
        () = ctx.roles.synced() => {}
        () = shutdown.clone() => return,
    }
    let apis: Vec<(Option<String>, Api<CommandInvocation>)> = apis_for(&client, &namespaces);
    let command_apis: Vec<(Option<String>, Api<Command>)> = apis_for(&client, &namespaces);
    // Writes in flight are bounded by the write turns; more reconciles than that run at once
    // so that those with nothing to write (tracking a resource, or finding its write must
    // wait its turn) are not stuck behind the writes.
    let config = controller::Config::default().concurrency(
        args.max_concurrent_reconciles
            .saturating_mul(RECONCILES_PER_WRITE),
    );
    let mut stores = Vec::new();
    let runs = apis.into_iter().map(|(namespace, api)| {
        let watched = watch_invocations(api, health.clone(), ctx.metrics.clone(), ctx.clone());
        stores.push(watched.store.clone());
        let store = watched.store.clone();
        let run = Controller::for_stream(watched.stream, watched.store)
            .reconcile_on(ctx.tracker.wakes(namespace))
            .with_config(config.clone())
            .graceful_shutdown_on(shutdown.clone())
            .run(
                invocation::reconcile::reconcile,
                invocation::reconcile::error_policy,
                ctx.clone(),
            )
            .for_each(|result| async move {
                // Watch errors are logged and counted where they happen (crate::k8s::watch).
                if let Err(error) = result {
                    tracing::debug!(%error, "controller event");
                }
            });
        until_stopped(run, store, shutdown.clone())
    });
    let mut runs: Vec<_> = runs.map(futures::FutureExt::boxed).collect();
    // Commands: few objects, each reconcile short; their children are CommandInvocations
    // above. A missing Command CRD or RBAC shows as warnings here, not as unreadiness.
    runs.extend(command_apis.into_iter().map(|(namespace, api)| {
        let metrics = ctx.metrics.clone();
        // Deleted Commands (with or without the finalizer) are forgotten by the watch.
        let watched = commands.watch(api);
        let store = watched.store.clone();
        health.add_command_store(store.clone());
        let run = Controller::for_stream(watched.stream, watched.store)
            .reconcile_on(commands.wakes(namespace))
            .with_config(config.clone())
            .graceful_shutdown_on(shutdown.clone())
            .run(
                command::reconcile::reconcile,
                command::reconcile::error_policy,
                commands.clone(),
            )
            .for_each(move |result| {
                let metrics = metrics.clone();
                async move {
                if let Err(error) = result {
                    match error {
                        controller::Error::QueueError(error) => {
                            metrics.watch_failed();
                            warn!(%error, "watching Commands failed (is the Command CRD installed, and may the operator list and watch commands?)")
                        }
                        error => tracing::debug!(%error, "Command controller event"),
                    }
                }
                }
            });
        futures::FutureExt::boxed(until_stopped(run, store, shutdown.clone()))
    }));
    let readiness = {
        let health = health.clone();
        async move {
            for store in &stores {
                if !synced(store).await {
                    return;
                }
            }
            health.set_ready(true);
            info!("caches synced: ready");
        }
    };
    tokio::spawn(readiness);
    // The tracker's rounds, and the push queue (only the leader consumes), run exactly as
    // long as the controllers do.
    let consume = async {
        match queue {
            Some(queue) => {
                let commands = commands.clone();
                let hinted = move |hint: &Hint| commands.hinted(&hint.command_id);
                queue.consume(ctx.tracker.clone(), hinted).await
            }
            None => std::future::pending().await,
        }
    };
    // In-flight reconciles get a grace to finish; past it the controllers are dropped.
    // Dropping a Command reconcile mid-send is safe: the next leader searches before any
    // second attempt.
    let overdue = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!(grace = ?SHUTDOWN_GRACE, "controllers still running after the shutdown grace; stopping them");
        }
    };
    // Write turns whose resource never came for them go on, even while nothing else happens.
    let expire_turns = async {
        let mut every = tokio::time::interval(CALL_STALE / 4);
        loop {
            every.tick().await;
            ctx.turns.expire();
        }
    };
    tokio::select! {
        _ = join_all(runs) => {}
        () = ctx.tracker.clone().run() => {}
        () = expire_turns => {}
        () = consume => {}
        () = overdue => {}
    }
    health.set_ready(false);
    info!("controllers stopped");
}

/// Runs one controller until it ends. A controller whose watch never synced (a missing CRD,
/// no RBAC for it) waits for its cache and never sees the shutdown signal: it is stopped as
/// soon as the signal comes (it has no reconcile in flight).
async fn until_stopped<K>(
    run: impl std::future::Future<Output = ()>,
    store: Store<K>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    let unsynced_at_shutdown = async move {
        shutdown.await;
        if crate::k8s::watch::listed(&store) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = run => {}
        () = unsynced_at_shutdown => {}
    }
}

/// One API per watched namespace (with its name), or one for all namespaces.
fn apis_for<K>(client: &Client, namespaces: &[String]) -> Vec<(Option<String>, Api<K>)>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        return vec![(None, Api::all(client.clone()))];
    }
    namespaces
        .iter()
        .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
        .collect()
}

/// Waits until the store has its initial list; false if its writer is gone.
///
/// kube-runtime 5 keeps a single waker for a store's readiness and the controller itself waits
/// on it, so a second waiter is never woken: re-poll with a short timeout instead.
async fn synced(store: &Store<CommandInvocation>) -> bool {
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready());
        if let Ok(result) = attempt.await {
            return result.is_ok();
        }
    }
}

/// A channel that turns true on SIGTERM or SIGINT.
fn stop_on_signals() -> watch::Sender<bool> {
    let (tx, _) = watch::channel(false);
    let sender = tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received");
        sender.send_replace(true);
    });
    tx
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the operator");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Completes once the stop channel turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The Kubernetes client (KUBECONFIG / ~/.kube/config, else in-cluster) with our User-Agent.
async fn kube_client() -> Result<Client, Error> {
    let mut config = kube::Config::infer().await?;
    let agent = format!("{OPERATOR_NAME}/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = HeaderValue::from_str(&agent) {
        config.headers.push((USER_AGENT, value));
    }
    config.read_timeout = Some(Duration::from_secs(295));
    Ok(Client::try_from(config)?)
}

/// This process's name for Events and the Lease: `POD_NAME`, else host name and pid.
fn instance_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "local".to_string());
        format!("{host}-{}", std::process::id())
    })
}
