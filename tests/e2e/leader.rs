//! Leader election with two operator processes on one Lease: only the holder reconciles, and
//! when it dies (SIGKILL, no chance to give the Lease up) the other takes over once the Lease
//! expires and finishes the job, without either process repeating what the other recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::support::{
    leader_and_follower, lease_holder, spec, wait_log, World, COMMAND_ID, DEADLINE, INSTANCE_ID,
};

const LEASE_NAME: &str = "ssm-operator-e2e-leader";
/// --lease-duration: how long a dead leader's Lease keeps the follower waiting.
const LEASE_DURATION: Duration = Duration::from_secs(4);
/// Allowed on top of the Lease duration for a takeover: the follower's look at the expired
/// Lease (it sleeps until the expiry it last saw), its random back-off of up to 1 s after
/// clearing the Lease, and API round trips.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(4);
const NAME: &str = "long-patch";

fn reconciles(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ssm_operator_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ssm_operator_reconciles_total in /metrics:\n{metrics}"))
}

pub async fn only_the_leader_reconciles_and_a_follower_takes_over(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "leader").await;
    let sim = Simulator::start().await.expect("simulator");
    let leases: Api<Lease> = Api::namespaced(world.client.clone(), &world.namespace);

    // Both start at once and race for the Lease.
    let (leader, follower, leader_id, follower_id) =
        leader_and_follower(&world, &sim.endpoint(), LEASE_NAME, LEASE_DURATION).await;

    // Pending for 2 s (so the leader's first polls see it), InProgress until well after the
    // takeover, then Success.
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new("aws:runShellScript")
                    .step(Duration::from_secs(2), Status::InProgress)
                    .step(Duration::from_secs(14), Status::Success)
                    .stdout("patched\n"),
            ),
        ),
    );
    world.create(NAME, spec(None)).await;
    world.wait_status(NAME, "Pending").await;
    world.wait_status(NAME, "InProgress").await;

    // Only the leader has reconciled: its log and /metrics say so, the follower's do not.
    let leader_log = leader.log();
    let follower_log = follower.log();
    assert!(
        leader_log.contains("status updated"),
        "the leader ({leader_id}) logged no status update:\n{}",
        leader.log_tail()
    );
    assert!(
        !follower_log.contains("status updated") && !follower_log.contains("leading:"),
        "the follower ({follower_id}) reconciled while {leader_id} held the Lease:\n{}",
        follower.log_tail()
    );
    assert!(
        reconciles(&leader.metrics().await) > 0,
        "the leader's reconcile counter"
    );
    assert_eq!(
        reconciles(&follower.metrics().await),
        0,
        "the follower's reconcile counter while following"
    );
    assert_eq!(
        lease_holder(&leases, LEASE_NAME).await.as_deref(),
        Some(leader_id),
        "the Lease holder while the leader runs"
    );

    // The leader dies without giving up the Lease; the follower takes it once it expires.
    let killed = Instant::now();
    leader.kill();
    loop {
        let holder = lease_holder(&leases, LEASE_NAME).await;
        if holder.as_deref() == Some(follower_id) {
            break;
        }
        assert!(
            killed.elapsed() < DEADLINE,
            "{follower_id} did not take the Lease within {DEADLINE:?}; holder: {holder:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    eprintln!("leader: {follower_id} took the Lease {takeover:?} after {leader_id} was killed");
    assert!(
        takeover <= LEASE_DURATION + TAKEOVER_MARGIN,
        "takeover took {takeover:?}, more than the {LEASE_DURATION:?} Lease + {TAKEOVER_MARGIN:?}"
    );
    wait_log(&follower, follower_id, "leading: starting controllers").await;

    let obj = world.wait_condition(NAME, "Ready", "True").await;
    let status = obj.status.clone().expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"), "{status:#?}");
    assert_eq!(status.standard_output_content.as_deref(), Some("patched\n"));
    // The log line follows the write's reply, which may come after the watch showed it.
    wait_log(&follower, follower_id, "status updated").await;

    // Each SSM status change was recorded once, by the process that saw it first: Pending and
    // InProgress by the first leader, Success by the second. A second writer would show up
    // as a second Event with another reporting instance, or as a repeated series.
    let events = Api::<Event>::namespaced(world.client.clone(), &world.namespace)
        .list(&ListParams::default().fields(&format!("regarding.name={NAME}")))
        .await
        .expect("list Events")
        .items;
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} by {} (series {:?})",
                e.reason.as_deref().unwrap_or("-"),
                e.reporting_instance.as_deref().unwrap_or("-"),
                e.series.as_ref().map(|s| s.count)
            )
        })
        .collect();
    for (reason, by) in [
        ("Pending", leader_id),
        ("InProgress", leader_id),
        ("Success", follower_id),
    ] {
        let matching: Vec<&Event> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect();
        assert_eq!(matching.len(), 1, "{reason} Events; all Events: {seen:?}");
        let event = matching[0];
        assert_eq!(
            (
                event.reporting_controller.as_deref(),
                event.reporting_instance.as_deref()
            ),
            (Some("ssm-operator"), Some(by)),
            "who reported {reason}; all Events: {seen:?}"
        );
        assert!(
            event.series.as_ref().is_none_or(|s| s.count <= 1),
            "{reason} was recorded repeatedly; all Events: {seen:?}"
        );
    }

    // The status was last written by the operator's server-side apply field manager. (Before
    // Kubernetes 1.22 managedFields do not tell the status subresource apart, so the creator
    // also shows as an owner of the defaulted `status.observedGeneration`; what a user can
    // rely on is who wrote last, not how many managers are listed.)
    let fresh = world.api().get(NAME).await.expect("get");
    let managers: Vec<String> = fresh
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{} {} at {:?}",
                m.manager.as_deref().unwrap_or("-"),
                m.operation.as_deref().unwrap_or("-"),
                m.time.as_ref().map(|t| t.0.to_string()),
            )
        })
        .collect();
    let last_status_writer = fresh
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:status").is_some())
        })
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .expect("someone wrote the status");
    assert_eq!(
        (
            last_status_writer.manager.as_deref(),
            last_status_writer.operation.as_deref()
        ),
        (Some("ssm-operator"), Some("Apply")),
        "the last writer of .status: {managers:#?}"
    );

    // A clean stop gives the Lease up at once, so a restart does not wait out the duration.
    follower.stop().await;
    assert_eq!(
        lease_holder(&leases, LEASE_NAME).await,
        None,
        "the Lease holder after the survivor stopped cleanly"
    );
}
