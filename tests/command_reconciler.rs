//! The `Command` reconciler against kube's `tower-test` mock API server (the kube-rs
//! controller example's verifier pattern) and the SSM simulator through the real SDK: the
//! exactly-once guarantees that need a stale cache, a lost compare-and-swap or a closed
//! leadership fence, which the end-to-end suite cannot stage on demand.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder;
use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use ssm_operator::api::{Command, CommandSpec, CommandStatus, SendRecord};
use ssm_operator::aws::roles::Roles;
use ssm_operator::aws::ssm::Ssm;
use ssm_operator::command::reconcile::reconcile;
use ssm_operator::command::send::{marker, Policy};
use ssm_operator::command::{Context as CommandContext, FINALIZER};
use ssm_operator::k8s::leader::Fence;
use ssm_operator::k8s::writer::Writer;
use ssm_operator::runtime::metrics::Metrics;
use ssm_operator::tracking::schedule::PollIntervals;
use ssm_sim::{Plugin, Simulator};

const NODE: &str = "i-0123456789abcdef0";
const UID: &str = "0b6f3c52-1f4e-4c59-a0f5-7f3f6f0c9e21";
const PATH: &str = "/apis/ssm.operator.dev/v1alpha1/namespaces/ops/commands/patch";
mod mock_api;

const WAIT: Duration = Duration::from_secs(10);

use mock_api::{json_response, Handle};

/// Plays the API server: each `expect_*` takes the next request, checks it, and answers.
struct ApiServer(Handle);

impl ApiServer {
    async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        mock_api::next(&mut self.0).await
    }

    async fn body(request: Request<Body>) -> Value {
        mock_api::body(request).await
    }

    /// A new Command's first steps: the finalizer (stored at "8"), the "sending" Event, and
    /// the intent written; returns the Command as stored after the intent (at "81").
    async fn expect_intent(&mut self, object: &Command) -> Command {
        let stored = self.expect_finalizer(object, "8").await;
        self.expect_event().await;
        let intent = self.expect_status(&stored, "8", 200).await;
        stored_with(&stored, &intent, "81")
    }

    /// The finalizer patch, carrying the resourceVersion it was decided on; answered with
    /// the object at resourceVersion `next`.
    async fn expect_finalizer(&mut self, object: &Command, next: &str) -> Command {
        let (request, send) = self.next().await;
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::PATCH, PATH)
        );
        let body = Self::body(request).await;
        assert_eq!(body["metadata"]["finalizers"], json!([FINALIZER]));
        assert_eq!(
            body["metadata"]["resourceVersion"],
            json!(object.metadata.resource_version)
        );
        let mut stored = object.clone();
        stored.metadata.finalizers = Some(vec![FINALIZER.into()]);
        stored.metadata.resource_version = Some(next.into());
        send.send_response(json_response(200, &serde_json::to_value(&stored).unwrap()));
        stored
    }

    async fn expect_event(&mut self) -> Value {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert!(
            request.uri().path().ends_with("/events"),
            "{}",
            request.uri()
        );
        let body = Self::body(request).await;
        send.send_response(json_response(201, &body));
        body
    }

    /// A status apply that must carry `version` as its precondition; answered with `code`
    /// (200: the object with that status at resourceVersion `version`+1).
    async fn expect_status(&mut self, object: &Command, version: &str, code: u16) -> Value {
        let (request, send) = self.next().await;
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::PATCH, format!("{PATH}/status").as_str())
        );
        let body = Self::body(request).await;
        assert_eq!(
            body["metadata"]["resourceVersion"], version,
            "compare-and-swap"
        );
        if code == 200 {
            let mut stored = serde_json::to_value(object).unwrap();
            stored["status"] = body["status"].clone();
            stored["metadata"]["resourceVersion"] = json!(format!("{version}1"));
            send.send_response(json_response(200, &stored));
        } else {
            send.send_response(json_response(
                code,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Conflict", "code": code,
                        "message": "the object has been modified"}),
            ));
        }
        body
    }

    async fn expect_silence(&mut self) {
        mock_api::expect_silence(&mut self.0, Duration::from_millis(300)).await;
    }
}

async fn fixture(fence: Fence) -> (Arc<CommandContext>, Simulator, ApiServer) {
    fixture_polling(fence, Duration::from_millis(200), Duration::from_secs(2)).await
}

/// Polling between `min` and `max` (equal: backoff without jitter).
async fn fixture_polling(
    fence: Fence,
    min: Duration,
    max: Duration,
) -> (Arc<CommandContext>, Simulator, ApiServer) {
    fixture_with(fence, min, max, Roles::disabled()).await
}

/// [`fixture_polling`] with `roles` (`--namespace-roles` or not).
async fn fixture_with(
    fence: Fence,
    min: Duration,
    max: Duration,
    roles: Roles,
) -> (Arc<CommandContext>, Simulator, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let sim = Simulator::start().await.unwrap();
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(60))]);
    let sdk = mock_api::sdk_config(&sim.endpoint()).await;
    let metrics = Arc::new(Metrics::new());
    let ssm = Arc::new(Ssm::new(sdk, metrics.clone(), 1000.0));
    let ctx = CommandContext::new(
        client.clone(),
        ssm,
        Arc::new(roles),
        Writer::new(client, Some("test".into()), metrics.clone(), fence.clone()),
        Policy::new(true, &[]).unwrap(),
        PollIntervals { min, max },
        Duration::from_secs(300),
        metrics,
        16,
    );
    (Arc::new(ctx), sim, ApiServer(handle))
}

/// Generation 1's intent, recorded now (its first attempt).
fn first_intent() -> SendRecord {
    SendRecord {
        generation: 1,
        marker: marker(UID, 1),
        time: Time(Timestamp::now()),
        attempt: 1,
        spec_hash: None,
    }
}

fn command(status: Option<CommandStatus>) -> Command {
    let mut c = Command::new(
        "patch",
        CommandSpec {
            document_name: "AWS-RunShellScript".into(),
            instance_ids: Some(vec![NODE.into()]),
            comment: Some("nightly".into()),
            ..CommandSpec::default()
        },
    );
    c.metadata.namespace = Some("ops".into());
    c.metadata.uid = Some(UID.into());
    c.metadata.generation = Some(1);
    c.metadata.resource_version = Some("7".into());
    c.status = status;
    c
}

async fn run(ctx: &Arc<CommandContext>, object: &Command) -> Result<Action, ssm_operator::Error> {
    tokio::time::timeout(WAIT, reconcile(Arc::new(object.clone()), ctx.clone()))
        .await
        .expect("reconcile finished")
}

#[tokio::test]
async fn the_intent_is_stored_before_the_one_send_and_the_reply_after_it() {
    let (ctx, sim, mut api) = fixture(Fence::open()).await;
    let object = command(None);
    let verifier = tokio::spawn(async move {
        let stored = api.expect_finalizer(&object, "8").await;
        let sending = api.expect_event().await;
        let intent = api.expect_status(&stored, "8", 200).await;
        let sent = api.expect_event().await;
        let adopted = api.expect_status(&stored, "81", 200).await;
        (sending, intent, sent, adopted)
    });
    let action = run(&ctx, &command(None)).await.unwrap();
    let (sending, intent, sent, adopted) = verifier.await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_millis(200)),
        "then tracked"
    );
    assert_eq!(sending["reason"], "Sending");
    let record = &intent["status"]["send"];
    assert_eq!(record["generation"], 1);
    assert_eq!(record["marker"], marker(UID, 1));
    assert!(intent["status"].get("commandId").is_none());
    let created = sim.sent();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].comment, format!("nightly {}", marker(UID, 1)));
    assert_eq!(sent["reason"], "Sent");
    assert_eq!(
        adopted["status"]["commandId"],
        created[0].command_id.as_str()
    );
    assert_eq!(
        adopted["status"]["send"], *record,
        "the intent stays on record"
    );
}

#[tokio::test]
async fn a_lost_compare_and_swap_on_the_intent_sends_nothing() {
    // A reconcile on a stale cache (or a second writer): the intent write is refused.
    let (ctx, sim, mut api) = fixture(Fence::open()).await;
    let object = command(None);
    let verifier = tokio::spawn(async move {
        let stored = api.expect_finalizer(&object, "8").await;
        api.expect_event().await;
        api.expect_status(&stored, "8", 409).await;
        api.expect_silence().await;
    });
    let action = run(&ctx, &command(None)).await.unwrap();
    verifier.await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(1)),
        "decide again soon"
    );
    assert_eq!(sim.calls("SendCommand"), 0);
}

#[tokio::test]
async fn a_replica_whose_fence_is_closed_never_sends() {
    // Not (or no longer) sure it leads: not even the finalizer is written.
    let (ctx, sim, mut api) = fixture(Fence::for_lease("me", Duration::from_secs(15))).await;
    let verifier = tokio::spawn(async move {
        api.expect_silence().await;
    });
    let result = run(&ctx, &command(None)).await;
    verifier.await.unwrap();
    assert!(
        matches!(result, Err(ssm_operator::Error::Fenced)),
        "{result:?}"
    );
    assert_eq!(sim.calls("SendCommand"), 0);
}

#[tokio::test]
async fn a_fenced_replica_on_a_new_generation_cancels_deletes_and_sends_nothing() {
    // A deposed leader wakes up on generation 2 of a Command whose generation-1 run is still
    // going: retiring that run (CancelCommand, deleting its children) and the new send are
    // all changes, so the fence refuses each before it leaves the process.
    let (ctx, sim, mut api) = fixture(Fence::for_lease("me", Duration::from_secs(15))).await;
    let running = CommandStatus {
        observed_generation: Some(1),
        command_id: Some("5e3f1a2b-7c4d-4e8f-9a0b-1c2d3e4f5a6b".into()),
        status: Some("InProgress".into()),
        send: Some(first_intent()),
        ..CommandStatus::default()
    };
    let mut object = command(Some(running));
    object.metadata.generation = Some(2);
    object.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let verifier = tokio::spawn(async move {
        api.expect_silence().await;
    });
    let result = run(&ctx, &object).await;
    verifier.await.unwrap();
    assert!(
        matches!(result, Err(ssm_operator::Error::Fenced)),
        "{result:?}"
    );
    assert_eq!(sim.calls("CancelCommand"), 0, "no cancel");
    assert_eq!(sim.calls("SendCommand"), 0, "no send");
}

#[tokio::test]
async fn an_intent_found_in_ssm_is_adopted_not_sent_again() {
    // Another process recorded the intent and SSM created the command; its reply was lost.
    let (ctx, sim, mut api) = fixture(Fence::open()).await;
    let made = sent_by_an_earlier_process(&sim, &[NODE]).await;
    let intent = CommandStatus {
        observed_generation: Some(1),
        send: Some(first_intent()),
        ..CommandStatus::default()
    };
    let mut object = command(Some(intent));
    object.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let stored = object.clone();
    let verifier = tokio::spawn(async move {
        api.expect_event().await;
        api.expect_status(&stored, "7", 200).await
    });
    run(&ctx, &object).await.unwrap();
    let adopted = verifier.await.unwrap();
    assert_eq!(adopted["status"]["commandId"], made.as_str());
    assert_eq!(
        sim.calls("SendCommand"),
        1,
        "only the earlier process's send"
    );
}

/// The object as the API server stores it after a status apply answered by `expect_status`.
fn stored_with(object: &Command, applied: &Value, version: &str) -> Command {
    let mut stored = object.clone();
    stored.status = Some(serde_json::from_value(applied["status"].clone()).unwrap());
    stored.metadata.resource_version = Some(version.into());
    stored
}

/// Reconciles `stored` (resourceVersion "811", its last send not made) through a fresh
/// intent and a send SSM accepts: the intent and the adopted status written.
async fn send_again(
    ctx: &Arc<CommandContext>,
    mut api: ApiServer,
    stored: &Command,
) -> (Value, Value) {
    let again = stored.clone();
    let verifier = tokio::spawn(async move {
        api.expect_event().await;
        let intent = api.expect_status(&again, "811", 200).await;
        let after = stored_with(&again, &intent, "8111");
        api.expect_event().await;
        let adopted = api.expect_status(&after, "8111", 200).await;
        (intent, adopted)
    });
    run(ctx, stored).await.unwrap();
    verifier.await.unwrap()
}

/// Reconciles a new Command whose `SendCommand` IAM refuses, through to its Stalled status:
/// the reconcile's action, the Command as stored after it (resourceVersion "811"), the
/// Warning Event, and the mock API server.
async fn send_refused_by_iam(
    ctx: &Arc<CommandContext>,
    sim: &Simulator,
    mut api: ApiServer,
) -> (Action, Command, Value, ApiServer) {
    sim.inject_send(ssm_sim::SendFault::refuse(
        "AccessDeniedException",
        "not authorized to perform: ssm:SendCommand",
    ));
    let object = command(None);
    let verifier = tokio::spawn(async move {
        let after_intent = api.expect_intent(&object).await;
        let event = api.expect_event().await;
        let stalled = api.expect_status(&after_intent, "81", 200).await;
        (stored_with(&after_intent, &stalled, "811"), event, api)
    });
    let action = run(ctx, &command(None)).await.unwrap();
    let (stalled, event, api) = verifier.await.unwrap();
    (action, stalled, event, api)
}

#[tokio::test]
async fn a_throttled_send_is_made_again_with_a_fresh_intent_without_a_search() {
    let retry = Duration::from_millis(300);
    let (ctx, sim, mut api) = fixture_polling(Fence::open(), retry, retry).await;
    sim.inject_send(ssm_sim::SendFault::Throttle);
    let object = command(None);
    let verifier = tokio::spawn(async move {
        let after_intent = api.expect_intent(&object).await;
        let retry = api.expect_status(&after_intent, "81", 200).await;
        (stored_with(&after_intent, &retry, "811"), api)
    });
    let action = run(&ctx, &command(None)).await.unwrap();
    let (throttled, mut api) = verifier.await.unwrap();
    let condition = &throttled.status.as_ref().unwrap().conditions[0];
    assert_eq!(condition.reason, "Pending");
    assert!(
        condition.message.contains("did not create"),
        "{}",
        condition.message
    );
    assert_ne!(action, Action::await_change(), "retried after its backoff");

    // The reconcile our own write triggers waits out the retry time, with no call at all.
    let early = {
        let verifier = tokio::spawn(async move {
            api.expect_silence().await;
            api
        });
        let early = run(&ctx, &throttled).await.unwrap();
        api = verifier.await.unwrap();
        early
    };
    assert_ne!(early, Action::await_change(), "it comes back for the retry");

    // Then a fresh intent (same marker) and the send, never a search of ListCommands.
    tokio::time::sleep(retry).await;
    let (intent, adopted) = send_again(&ctx, api, &throttled).await;
    assert_eq!(intent["status"]["send"]["marker"], marker(UID, 1));
    assert_eq!(sim.calls("SendCommand"), 2);
    assert_eq!(
        sim.calls("ListCommands"),
        0,
        "SSM said it created nothing: no search"
    );
    assert_eq!(sim.sent().len(), 1);
    assert_eq!(
        adopted["status"]["commandId"],
        sim.sent()[0].command_id.as_str()
    );
}

#[tokio::test]
async fn a_lost_reply_to_a_retry_in_the_same_second_is_searched_for_not_sent_again() {
    // Intents are stamped in whole seconds: a throttled attempt and its retry within the same
    // second carry the same time. When the retry's reply is then lost, what this process
    // remembers of the first attempt ("SSM created nothing") must not be taken for the
    // retry: the next reconcile looks in ListCommands and adopts what it finds.
    let retry = Duration::from_millis(100);
    let (ctx, sim, mut api) = fixture_polling(Fence::open(), retry, retry).await;
    sim.inject_send(ssm_sim::SendFault::Throttle);
    sim.inject_send(ssm_sim::SendFault::AcceptThenFail);
    // Start early in a second, so that both attempts fall into it.
    let into_second = Timestamp::now().subsec_nanosecond();
    tokio::time::sleep(Duration::from_nanos(
        u64::try_from(1_050_000_000 - i64::from(into_second)).unwrap_or(0),
    ))
    .await;

    let object = command(None);
    let verifier = tokio::spawn(async move {
        let after_intent = api.expect_intent(&object).await;
        let retrying = api.expect_status(&after_intent, "81", 200).await;
        (stored_with(&after_intent, &retrying, "811"), api)
    });
    run(&ctx, &command(None)).await.unwrap();
    let (throttled, mut api) = verifier.await.unwrap();
    tokio::time::sleep(retry).await;

    // The retry: a fresh intent, the send, and its reply lost (SSM created the command).
    let again = throttled.clone();
    let verifier = tokio::spawn(async move {
        api.expect_event().await;
        let intent = api.expect_status(&again, "811", 200).await;
        (stored_with(&again, &intent, "8111"), intent, api)
    });
    run(&ctx, &throttled).await.unwrap();
    let (lost, intent, mut api) = verifier.await.unwrap();
    let first = throttled
        .status
        .as_ref()
        .and_then(|s| s.send.clone())
        .unwrap();
    let second = lost.status.as_ref().and_then(|s| s.send.clone()).unwrap();
    assert_eq!(first.time, second.time, "both attempts in the same second");
    assert_eq!(intent["status"]["send"]["attempt"], 2);
    assert_eq!(sim.sent().len(), 1, "the retry created the command");

    // Next: a search finds it and the run is adopted; no third SendCommand.
    let stored = lost.clone();
    let verifier = tokio::spawn(async move {
        api.expect_event().await;
        api.expect_status(&stored, "8111", 200).await
    });
    run(&ctx, &lost).await.unwrap();
    let adopted = verifier.await.unwrap();
    assert_eq!(sim.calls("SendCommand"), 2, "no send without a search");
    assert!(sim.calls("ListCommands") >= 1, "searched");
    assert_eq!(sim.sent().len(), 1);
    assert_eq!(
        adopted["status"]["commandId"],
        sim.sent()[0].command_id.as_str()
    );
}

#[tokio::test]
async fn with_namespace_roles_a_namespace_not_seen_yet_waits_and_is_never_sent_as_the_operator() {
    // The Namespace watch has listed (other namespaces), but "ops" was created since and its
    // event is still on the way: whether it names a role is unknown. Nothing is written and
    // nothing is sent until it is seen; then the send goes out with the namespace's identity.
    let roles = Roles::enabled();
    roles.observe("other", None);
    let (ctx, sim, mut api) = fixture_with(
        Fence::open(),
        Duration::from_millis(200),
        Duration::from_secs(2),
        roles,
    )
    .await;
    let verifier = tokio::spawn(async move {
        api.expect_silence().await;
        api
    });
    let result = run(&ctx, &command(None)).await;
    let mut api = verifier.await.unwrap();
    assert!(
        matches!(result, Err(ssm_operator::Error::NamespaceNotSeen(_))),
        "{result:?}"
    );
    assert_eq!(
        sim.total_calls(),
        0,
        "not one SSM call with the operator's identity"
    );
    let retry = ssm_operator::command::reconcile::error_policy(
        Arc::new(command(None)),
        &result.unwrap_err(),
        ctx.clone(),
    );
    assert_eq!(
        retry,
        Action::requeue(Duration::from_secs(1)),
        "looked at again soon"
    );

    // Seen, without an annotation: the operator's own identity is the namespace's choice.
    ctx.roles.observe("ops", None);
    let object = command(None);
    let verifier = tokio::spawn(async move {
        let stored = api.expect_intent(&object).await;
        api.expect_event().await;
        api.expect_status(&stored, "81", 200).await
    });
    run(&ctx, &command(None)).await.unwrap();
    let adopted = verifier.await.unwrap();
    assert_eq!(sim.calls("SendCommand"), 1);
    assert_eq!(
        adopted["status"]["commandId"],
        sim.sent()[0].command_id.as_str()
    );
}

/// The answer to a list of a Command's children (metadata only): none.
fn no_children() -> Response<Body> {
    json_response(
        200,
        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

/// A command sent to `nodes` straight through the simulator (as an earlier process of the
/// operator did), with generation 1's marker; returns its id.
async fn sent_by_an_earlier_process(sim: &Simulator, nodes: &[&str]) -> String {
    sent_by_an_earlier_process_to(sim, |send| {
        send.set_instance_ids(Some(nodes.iter().map(|n| n.to_string()).collect()))
    })
    .await
}

/// Like [`sent_by_an_earlier_process`], to the nodes `to` names (instance ids or targets).
async fn sent_by_an_earlier_process_to(
    sim: &Simulator,
    to: impl FnOnce(SendCommandFluentBuilder) -> SendCommandFluentBuilder,
) -> String {
    let aws = mock_api::sdk_config(&sim.endpoint()).await;
    let send = aws_sdk_ssm::Client::new(&aws)
        .send_command()
        .document_name("AWS-RunShellScript")
        .comment(format!("nightly {}", marker(UID, 1)));
    to(send)
        .send()
        .await
        .unwrap()
        .command()
        .and_then(|c| c.command_id())
        .unwrap()
        .to_string()
}

/// A `Command` whose targets are `key` = `value`, already sent (by an earlier process, with
/// generation 1's marker) and holding its finalizer; returns it and its SSM command id.
async fn sent_to_targets(sim: &Simulator, key: &str, value: &str) -> (Command, String) {
    let command_id = sent_by_an_earlier_process_to(sim, |send| {
        send.targets(
            aws_sdk_ssm::types::Target::builder()
                .key(key)
                .values(value)
                .build(),
        )
    })
    .await;
    let mut object = command(Some(CommandStatus {
        observed_generation: Some(1),
        command_id: Some(command_id.clone()),
        send: Some(first_intent()),
        ..CommandStatus::default()
    }));
    object.spec.instance_ids = None;
    object.spec.targets = Some(vec![ssm_operator::api::Target {
        key: key.into(),
        values: vec![value.into()],
    }]);
    object.metadata.finalizers = Some(vec![FINALIZER.into()]);
    (object, command_id)
}

/// Answers a reconcile's API calls until it has made `writes` status writes: children listed
/// (none), child creates (422 for `refused`, 201 otherwise), Events, and status applies, each
/// stored at the next resourceVersion. Returns the child creates by node (in the order they
/// came), the Event reasons and the last status written.
async fn answer_writes(
    mut api: ApiServer,
    stored: Command,
    writes: usize,
    refused: Option<&'static str>,
) -> (Vec<String>, Vec<String>, Value, ApiServer) {
    let (mut creates, mut events) = (Vec::new(), Vec::new());
    let mut version = stored.resource_version().unwrap_or_default();
    let mut written = 0;
    loop {
        let (request, send) = api.next().await;
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        if method == Method::GET && path.ends_with("/commandinvocations") {
            send.send_response(no_children());
            continue;
        }
        let body = ApiServer::body(request).await;
        if method == Method::POST && path.ends_with("/commandinvocations") {
            let node = body["spec"]["instanceId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            creates.push(node.clone());
            if Some(node.as_str()) == refused {
                send.send_response(json_response(
                    422,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "Invalid", "code": 422,
                            "message": "admission webhook \"policy.example\" denied the request"}),
                ));
            } else {
                send.send_response(json_response(201, &body));
            }
        } else if method == Method::POST && path.ends_with("/events") {
            events.push(body["reason"].as_str().unwrap_or_default().to_string());
            send.send_response(json_response(201, &body));
        } else if method == Method::PATCH && path == format!("{PATH}/status") {
            version.push('1');
            let mut object = serde_json::to_value(&stored).unwrap();
            object["status"] = body["status"].clone();
            object["metadata"]["resourceVersion"] = json!(version);
            send.send_response(json_response(200, &object));
            written += 1;
            if written == writes {
                return (creates, events, body, api);
            }
        } else {
            panic!("unexpected {method} {path}");
        }
    }
}

#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_and_the_status_still_follows_ssm() {
    // An admission policy refuses one node's child (422): the run's other children are
    // created, the refusal is counted in status with a Warning Event, and the Command's
    // status follows SSM instead of the reconcile failing for ever.
    let (ctx, sim, api) = fixture(Fence::open()).await;
    let nodes = [
        "i-0aaaaaaaaaaaaaaa1",
        "i-0aaaaaaaaaaaaaaa2",
        "i-0aaaaaaaaaaaaaaa3",
    ];
    let command_id = sent_by_an_earlier_process(&sim, &nodes).await;
    let mut object = command(Some(CommandStatus {
        observed_generation: Some(1),
        command_id: Some(command_id),
        send: Some(first_intent()),
        ..CommandStatus::default()
    }));
    object.spec.instance_ids = Some(nodes.iter().map(|n| n.to_string()).collect());
    object.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let verifier = tokio::spawn(answer_writes(api, object.clone(), 1, Some(nodes[1])));
    let result = run(&ctx, &object).await;
    let (creates, events, written, api) = verifier.await.unwrap();
    assert!(result.is_ok(), "the reconcile goes on: {result:?}");
    assert_eq!(creates, nodes, "every node's child was asked for once");
    assert!(events.contains(&"ChildRefused".to_string()), "{events:?}");
    assert_eq!(written["status"]["refusedChildren"], 1);
    assert_eq!(written["status"]["targetCount"], 3, "SSM's counts");

    // Remembered: the next reconcile neither lists the children again nor re-posts any.
    let mut tracked = stored_with(&object, &written, "9");
    tracked.metadata.resource_version = Some("9".into());
    let verifier = tokio::spawn(async move {
        let mut api = api;
        api.expect_silence().await;
    });
    run(&ctx, &tracked).await.unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn children_are_created_in_the_order_ssm_lists_their_nodes() {
    // Targets resolving to 40 nodes, listed by SSM in an order that is not the names' order:
    // the children are asked for in SSM's order, the first listed (the longest waiting) first.
    let (ctx, sim, api) = fixture(Fence::open()).await;
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(60))]);
    let nodes: Vec<String> = (0..40)
        .map(|k| format!("i-0ccccccccccccc{:03}", (k * 17) % 40))
        .collect();
    sim.resolve_target(
        "tag:Role",
        "batch",
        nodes.iter().map(|n| (n.as_str(), Duration::ZERO)),
    );
    let (object, _) = sent_to_targets(&sim, "tag:Role", "batch").await;
    let verifier = tokio::spawn(answer_writes(api, object.clone(), 1, None));
    run(&ctx, &object).await.unwrap();
    let (creates, ..) = verifier.await.unwrap();
    assert_eq!(creates, nodes, "in SSM's order, each once");
}

#[tokio::test]
async fn a_command_is_not_asked_again_on_its_own_echo_nor_walked_again_when_it_finishes() {
    // Targets resolving to two nodes: the first reconcile (running) lists them and creates
    // their children; once SSM says the run finished, the reconcile writes the final status
    // without listing thousands of nodes again (here two) before it.
    let (ctx, sim, api) = fixture(Fence::open()).await;
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(1))]);
    let nodes = ["i-0bbbbbbbbbbbbbbb1", "i-0bbbbbbbbbbbbbbb2"];
    sim.resolve_target("tag:Role", "web", nodes.map(|n| (n, Duration::ZERO)));
    let (object, command_id) = sent_to_targets(&sim, "tag:Role", "web").await;
    let ssm = aws_sdk_ssm::Client::new(&mock_api::sdk_config(&sim.endpoint()).await);
    let verifier = tokio::spawn(answer_writes(api, object.clone(), 1, None));
    run(&ctx, &object).await.unwrap();
    let (creates, _, written, api) = verifier.await.unwrap();
    assert_eq!(creates, nodes, "a child per node, made while the run ran");
    assert_ne!(written["status"]["status"], "Success", "still running");

    // The watch shows that status write at once and wakes the Command again: SSM was asked a
    // moment ago, so it is not asked again now (no echo loop of polls and writes).
    let polls = sim.calls("ListCommands");
    let echo = stored_with(&object, &written, "8");
    let silent = tokio::spawn(async move {
        let mut api = api;
        api.expect_silence().await;
        api
    });
    let action = run(&ctx, &echo).await.unwrap();
    let api = silent.await.unwrap();
    assert_eq!(
        sim.calls("ListCommands"),
        polls,
        "SSM not asked again within the interval"
    );
    assert!(
        action != Action::await_change(),
        "looked at again once the interval has passed: {action:?}"
    );

    // SSM finishes the run.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let listed = ssm
            .list_commands()
            .command_id(&command_id)
            .send()
            .await
            .unwrap();
        let status = listed.commands()[0]
            .status()
            .map(|s| s.as_str().to_string());
        if status.as_deref() == Some("Success") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SSM never finished the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let walks = sim.calls("ListCommandInvocations");
    let running = stored_with(&object, &written, "9");
    let verifier = tokio::spawn(answer_writes(api, running.clone(), 1, None));
    run(&ctx, &running).await.unwrap();
    let (creates, _, written, _) = verifier.await.unwrap();
    assert_eq!(written["status"]["status"], "Success");
    assert!(creates.is_empty(), "{creates:?}");
    assert_eq!(
        sim.calls("ListCommandInvocations"),
        walks,
        "every node has its child: SSM's node list is not read again"
    );
}

#[tokio::test]
async fn a_new_generation_waits_for_the_earlier_runs_cancel_and_says_so() {
    // Generation 2 arrives while generation 1's run still runs, and SSM throttles the
    // CancelCommand (each of its three tries through the budget): nothing is sent until the cancel went through, then
    // an Event says the earlier run was cancelled and generation 2 is sent.
    let retry = Duration::from_millis(100);
    let (ctx, sim, mut api) = fixture_polling(Fence::open(), retry, retry).await;
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(60))]);
    let first = sent_by_an_earlier_process(&sim, &[NODE]).await;
    let mut object = command(Some(CommandStatus {
        observed_generation: Some(1),
        command_id: Some(first.clone()),
        status: Some("InProgress".into()),
        send: Some(first_intent()),
        ..CommandStatus::default()
    }));
    object.metadata.generation = Some(2);
    object.metadata.finalizers = Some(vec![FINALIZER.into()]);

    sim.inject(ssm_sim::Fault::Throttle { count: 3 });
    let verifier = tokio::spawn(async move {
        api.expect_silence().await;
        api
    });
    let result = run(&ctx, &object).await;
    let api = verifier.await.unwrap();
    assert!(
        matches!(result, Err(ssm_operator::Error::Cancel { .. })),
        "the new generation waits for the cancel: {result:?}"
    );
    assert_eq!(sim.calls("SendCommand"), 1, "generation 2 not sent yet");

    // The retry: the cancel goes through, an Event says so, then the intent and the send.
    let verifier = tokio::spawn(answer_writes(api, object.clone(), 2, None));
    run(&ctx, &object).await.unwrap();
    let (_, events, adopted, _) = verifier.await.unwrap();
    assert!(
        events.contains(&"EarlierRunCancelled".to_string()),
        "{events:?}"
    );
    assert_eq!(sim.calls("SendCommand"), 2, "generation 2 sent once");
    assert_ne!(adopted["status"]["commandId"], first.as_str());
    assert!(sim.calls("CancelCommand") >= 2, "tried, then retried");
}

#[tokio::test]
async fn a_send_iam_refuses_stalls_as_access_denied_and_is_not_retried_at_once() {
    let (ctx, sim, api) = fixture(Fence::open()).await;
    let (action, stalled, event, mut api) = send_refused_by_iam(&ctx, &sim, api).await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(300)),
        "the rare re-check"
    );
    let conditions = &stalled.status.as_ref().unwrap().conditions;
    let stalled_condition = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(
        (
            stalled_condition.status.as_str(),
            stalled_condition.reason.as_str()
        ),
        ("True", "AccessDenied")
    );
    assert!(stalled_condition.message.contains("ssm:SendCommand"));
    assert_eq!(event["type"], "Warning");
    // The reconcile the write triggers does nothing until the re-check.
    let verifier = tokio::spawn(async move { api.expect_silence().await });
    let next = run(&ctx, &stalled).await.unwrap();
    verifier.await.unwrap();
    assert_ne!(
        next,
        Action::await_change(),
        "it comes back for the re-check"
    );
    assert_eq!(sim.calls("SendCommand"), 1);
}

#[tokio::test]
async fn commands_are_limited_across_namespaces_by_their_own_permits_and_never_block_invocations() {
    use ssm_operator::api::{CommandInvocation, CommandInvocationSpec};
    use ssm_operator::invocation::reconcile::{self as reconciler, Context};
    use ssm_operator::invocation::status::Settings;
    use ssm_operator::invocation::turns::WriteTurns;
    use ssm_operator::tracking::tracker::Tracker;

    // --max-concurrent-reconciles 1, as the operator wires it: one limit per kind, each
    // across all watched namespaces.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut api = ApiServer(handle);
    let sim = Simulator::start().await.unwrap();
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(60))]);
    let invocation_command = "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11";
    sim.add_command(
        ssm_sim::Command::new(invocation_command).invocation(
            ssm_sim::Invocation::new(NODE)
                .plugin(Plugin::succeeding("aws:runShellScript", Duration::ZERO)),
        ),
    );
    let sdk = mock_api::sdk_config(&sim.endpoint()).await;
    let metrics = Arc::new(Metrics::new());
    let ssm = Arc::new(Ssm::new(sdk, metrics.clone(), 1000.0));
    let intervals = PollIntervals {
        min: Duration::from_millis(200),
        max: Duration::from_secs(2),
    };
    let tracker = Arc::new(Tracker::new(
        ssm.clone(),
        intervals,
        Duration::from_secs(300),
        Duration::from_secs(30),
        metrics.clone(),
    ));
    let mut wakes = Box::pin(tracker.wakes(None));
    let rounds = tokio::spawn(tracker.clone().run());
    let invocations = Arc::new(Context {
        tracker: tracker.clone(),
        roles: Arc::new(Roles::disabled()),
        writer: Writer::new(
            client.clone(),
            Some("test".into()),
            metrics.clone(),
            Fence::open(),
        ),
        settings: Settings {
            max_output_chars: 4000,
            not_found_grace: Duration::from_secs(300),
            recheck_interval: Duration::from_secs(300),
            progress_after: Duration::from_secs(10),
        },
        intervals,
        metrics: metrics.clone(),
        turns: WriteTurns::new(1, metrics.clone(), move |woken| tracker.wake(woken)),
        ttl_after_finished: None,
    });
    let commands = Arc::new(CommandContext::new(
        client.clone(),
        ssm,
        Arc::new(Roles::disabled()),
        Writer::new(client, Some("test".into()), metrics.clone(), Fence::open()),
        Policy::new(true, &[]).unwrap(),
        intervals,
        Duration::from_secs(300),
        metrics,
        1,
    ));

    // A Command in "ops" holds the only Command permit while the API server holds its first
    // write open (as one waiting for SSM's budget, a throttled search or STS would).
    let object = command(None);
    let sending = tokio::spawn(reconcile(Arc::new(object.clone()), commands.clone()));
    let (finalizer, answer_finalizer) = api.next().await;
    assert_eq!(finalizer.uri().path(), PATH);

    // A Command in another namespace waits for it: one limit across namespaces.
    let mut other = command(None);
    other.metadata.namespace = Some("dev".into());
    other.metadata.uid = Some("7d1c2b3a-0000-4000-8000-000000000002".into());
    let waiting = tokio::spawn(reconcile(Arc::new(other), commands.clone()));
    api.expect_silence().await;

    // Meanwhile a CommandInvocation's status is written: its permits are its own.
    let mut invocation = CommandInvocation::new(
        "patch-web-1",
        CommandInvocationSpec {
            ttl_seconds_after_finished: None,
            command_id: invocation_command.into(),
            instance_id: NODE.into(),
            plugin_name: None,
            region: None,
        },
    );
    invocation.metadata.namespace = Some("ops".into());
    invocation.metadata.uid = Some("5c6f7a1e-0000-4000-8000-000000000001".into());
    invocation.metadata.generation = Some(1);
    invocation.metadata.resource_version = Some("100".into());
    invocation.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    let invocation = Arc::new(invocation);
    tokio::time::timeout(
        WAIT,
        reconciler::reconcile(invocation.clone(), invocations.clone()),
    )
    .await
    .expect("the registering reconcile does not wait for the Command's permit")
    .expect("registering reconcile");
    tokio::time::timeout(WAIT, futures::StreamExt::next(&mut wakes))
        .await
        .expect("the tracker should have woken the invocation");
    let writing = tokio::spawn(reconciler::reconcile(
        invocation.clone(),
        invocations.clone(),
    ));
    let (event, answer_event) = api.next().await;
    assert!(event.uri().path().ends_with("/events"), "{}", event.uri());
    answer_event.send_response(json_response(201, &json!({})));
    let (patch, answer_patch) = api.next().await;
    assert!(
        patch.uri().path().ends_with("/patch-web-1/status"),
        "{}",
        patch.uri()
    );
    let mut stored = serde_json::to_value(&*invocation).unwrap();
    stored["metadata"]["resourceVersion"] = json!("101");
    answer_patch.send_response(json_response(200, &stored));
    tokio::time::timeout(WAIT, writing)
        .await
        .expect("the invocation's write does not wait for the Command's permit")
        .unwrap()
        .expect("the invocation's status written");
    assert!(!waiting.is_finished(), "the other Command still waits");
    assert_eq!(sim.calls("SendCommand"), 0);

    // The first Command goes on and sends; only then does the other one start.
    let mut stored = object.clone();
    stored.metadata.finalizers = Some(vec![FINALIZER.into()]);
    stored.metadata.resource_version = Some("8".into());
    answer_finalizer.send_response(json_response(200, &serde_json::to_value(&stored).unwrap()));
    api.expect_event().await;
    api.expect_status(&stored, "8", 200).await;
    api.expect_event().await;
    api.expect_status(&stored, "81", 200).await;
    tokio::time::timeout(WAIT, sending)
        .await
        .expect("the Command reconcile finished")
        .unwrap()
        .expect("the Command sent");
    assert_eq!(sim.sent().len(), 1);
    let (patch, answer) = api.next().await;
    assert_eq!(
        (patch.method(), patch.uri().path()),
        (
            &Method::PATCH,
            "/apis/ssm.operator.dev/v1alpha1/namespaces/dev/commands/patch"
        )
    );
    answer.send_response(json_response(
        409,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
    ));
    let action = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the other Command's reconcile finished")
        .unwrap()
        .expect("reconciled");
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert_eq!(
        sim.sent().len(),
        1,
        "the lost compare-and-swap sent nothing"
    );
    rounds.abort();
}

#[tokio::test]
async fn a_send_refused_for_the_old_identity_is_made_again_once_the_namespace_role_changes() {
    let (ctx, sim, api) = fixture(Fence::open()).await;
    let (action, stalled, _, api) = send_refused_by_iam(&ctx, &sim, api).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    // The Command's watch has it cached (a second mock API server serves the watch).
    let (service, mut watch_api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let watched = ctx.watch(kube::Api::namespaced(
        Client::new(service, "default"),
        "ops",
    ));
    let store = watched.store.clone();
    let watching = tokio::spawn(futures::StreamExt::for_each(watched.stream, |_| async {}));
    let (list, send) = mock_api::next(&mut watch_api).await;
    assert_eq!(list.method(), Method::GET);
    send.send_response(json_response(
        200,
        &json!({"apiVersion": "ssm.operator.dev/v1alpha1", "kind": "CommandList",
                "metadata": {"resourceVersion": "811"}, "items": [stalled]}),
    ));
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("the watch listed")
        .unwrap();

    // An admin fixes the namespace's role annotation: the Command is woken at once ...
    let mut ops = Box::pin(ctx.wakes(Some("ops".into())));
    let mut dev = Box::pin(ctx.wakes(Some("dev".into())));
    ctx.role_changed("ops");
    let woken = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut ops))
        .await
        .expect("the Command should have been woken")
        .unwrap();
    assert_eq!(woken.name, "patch");
    assert!(
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut dev)).is_none(),
        "another namespace's controller is not woken"
    );
    // ... and sends again with a fresh intent (the same marker), without waiting the 300 s
    // re-check.
    let (intent, adopted) = send_again(&ctx, api, &stalled).await;
    assert_eq!(intent["status"]["send"]["marker"], marker(UID, 1));
    assert_eq!(sim.calls("SendCommand"), 2);
    assert_eq!(sim.sent().len(), 1, "the refused send created nothing");
    assert_eq!(
        adopted["status"]["commandId"],
        sim.sent()[0].command_id.as_str()
    );
    watching.abort();
}
