//! Reconciler tests: kube's `tower-test` mock plays the API server (the kube-rs controller
//! example's verifier pattern) and the project's SSM simulator answers the real `aws-sdk-ssm`
//! client over loopback, asked by the real tracker. Each test asserts which API calls the
//! reconciler makes and what they carry; a short timeout catches an unexpected or missing call.
//!
//! The flow under test: the first reconcile of a resource registers it with the tracker and
//! returns; the tracker's round asks SSM and wakes the resource; the next reconcile maps the
//! answer and writes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;

use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};
use ssm_operator::api::{CommandInvocation, CommandInvocationSpec, CommandInvocationStatus};
use ssm_operator::aws::roles::Roles;
use ssm_operator::aws::ssm::Ssm;
use ssm_operator::invocation::reconcile::{error_policy, reconcile, Context};
use ssm_operator::invocation::status::Settings;
use ssm_operator::invocation::turns::WriteTurns;
use ssm_operator::k8s::leader::Fence;
use ssm_operator::k8s::writer::Writer;
use ssm_operator::runtime::metrics::Metrics;
use ssm_operator::tracking::schedule::PollIntervals;
use ssm_operator::tracking::tracker::Tracker;
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};

const COMMAND_ID: &str = "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11";
const INSTANCE_ID: &str = "i-0123456789abcdef0";
const STATUS_PATH: &str =
    "/apis/ssm.operator.dev/v1alpha1/namespaces/ops/commandinvocations/patch-web-1/status";
mod mock_api;

const WAIT: Duration = Duration::from_secs(10);

use mock_api::{json_response, Handle};

/// Plays the API server: each `expect_*` takes the next request, checks it, and answers.
struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        mock_api::next(&mut self.0).await
    }

    /// A server-side-apply status patch; answers with the object carrying that status.
    async fn expect_status_patch(&mut self, object: &CommandInvocation) -> Value {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), STATUS_PATH);
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("fieldManager=ssm-operator"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body: Value = mock_api::body(request).await;
        let mut answer = serde_json::to_value(object).unwrap();
        answer["status"] = body["status"].clone();
        answer["metadata"]["resourceVersion"] = json!("101");
        send.send_response(json_response(200, &answer));
        body
    }

    /// An Event, created under a name that identifies the transition.
    async fn expect_event(&mut self) -> Value {
        let (request, send) = self.next().await;
        let path = request.uri().path().to_string();
        let events = "/apis/events.k8s.io/v1/namespaces/ops/events";
        assert_eq!((request.method(), path.as_str()), (&Method::POST, events));
        let body: Value = mock_api::body(request).await;
        send.send_response(json_response(201, &body));
        body
    }

    /// An Event that the API server refuses with `code`.
    async fn refuse_event(&mut self, code: u16) {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert!(
            request.uri().path().ends_with("/events"),
            "{}",
            request.uri()
        );
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "refused", "reason": "Refused", "code": code
        });
        send.send_response(json_response(code, &status));
    }

    /// A status patch that the API server refuses with `code`.
    async fn refuse_status_patch(&mut self, code: u16) {
        let (request, send) = self.next().await;
        assert_eq!(request.uri().path(), STATUS_PATH);
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "the server is on fire", "reason": "InternalError", "code": code
        });
        send.send_response(json_response(code, &status));
    }

    /// No call at all while the reconcile ran.
    async fn expect_silence(&mut self) {
        mock_api::expect_silence(&mut self.0, Duration::from_millis(200)).await;
    }
}

type Wakes = Pin<Box<dyn Stream<Item = ObjectRef<CommandInvocation>> + Send>>;

struct Fixture {
    ctx: Arc<Context>,
    sim: Simulator,
    wakes: tokio::sync::Mutex<Wakes>,
    rounds: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.rounds.abort();
    }
}

impl Fixture {
    /// Waits until the tracker wakes a resource (its SSM answer changed).
    async fn woken(&self) -> ObjectRef<CommandInvocation> {
        tokio::time::timeout(WAIT, self.wakes.lock().await.next())
            .await
            .expect("the tracker should have woken a resource")
            .expect("wake stream ended")
    }
}

async fn fixture() -> (Fixture, ApiServerVerifier) {
    fixture_with(Fence::open(), 16).await
}

/// The poll intervals of most fixtures.
const INTERVALS: PollIntervals = PollIntervals {
    min: Duration::from_millis(200),
    max: Duration::from_secs(2),
};

async fn fixture_with(fence: Fence, permits: usize) -> (Fixture, ApiServerVerifier) {
    fixture_full(fence, permits, INTERVALS).await
}

async fn fixture_full(
    fence: Fence,
    permits: usize,
    intervals: PollIntervals,
) -> (Fixture, ApiServerVerifier) {
    fixture_on(fence, permits, intervals, None, SETTINGS).await
}

/// The settings of most fixtures: `--progress-after 0s`, so that a resource's first progress
/// is written at once (the tests of the quiet time set the default, [`PROGRESS_AFTER`]).
const SETTINGS: Settings = Settings {
    max_output_chars: 4000,
    not_found_grace: Duration::from_secs(300),
    recheck_interval: Duration::from_secs(300),
    progress_after: Duration::ZERO,
};

/// `--progress-after`'s default.
const PROGRESS_AFTER: Duration = Duration::from_secs(10);

/// A fixture whose SSM is `endpoint` (the simulator when `None`), with `settings`.
async fn fixture_on(
    fence: Fence,
    permits: usize,
    intervals: PollIntervals,
    endpoint: Option<&str>,
    settings: Settings,
) -> (Fixture, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let sim = Simulator::start().await.unwrap();
    let sdk = mock_api::sdk_config(endpoint.unwrap_or(&sim.endpoint())).await;
    let metrics = Arc::new(Metrics::new());
    let ssm = Arc::new(Ssm::new(sdk, metrics.clone(), 1000.0));
    let tracker = Arc::new(Tracker::new(
        ssm,
        intervals,
        Duration::from_secs(300),
        Duration::from_secs(30),
        metrics.clone(),
    ));
    let wakes: Wakes = Box::pin(tracker.wakes(None));
    let rounds = tokio::spawn(tracker.clone().run());
    let ctx = Arc::new(Context {
        tracker: tracker.clone(),
        roles: Arc::new(Roles::disabled()),
        writer: Writer::new(client, Some("test".into()), metrics.clone(), fence),
        settings,
        intervals,
        metrics: metrics.clone(),
        turns: {
            let tracker = tracker.clone();
            WriteTurns::new(permits, metrics.clone(), move |woken| tracker.wake(woken))
        },
        ttl_after_finished: None,
    });
    let fixture = Fixture {
        ctx,
        sim,
        wakes: tokio::sync::Mutex::new(wakes),
        rounds,
    };
    (fixture, ApiServerVerifier(handle))
}

fn resource(generation: i64, status: Option<CommandInvocationStatus>) -> CommandInvocation {
    let mut object = CommandInvocation::new(
        "patch-web-1",
        CommandInvocationSpec {
            ttl_seconds_after_finished: None,
            command_id: COMMAND_ID.into(),
            instance_id: INSTANCE_ID.into(),
            plugin_name: None,
            region: None,
        },
    );
    object.metadata.namespace = Some("ops".into());
    object.metadata.uid = Some("5c6f7a1e-0000-4000-8000-000000000001".into());
    object.metadata.generation = Some(generation);
    object.metadata.resource_version = Some("100".into());
    object.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    object.status = status;
    object
}

fn command(plugin: Plugin) -> Command {
    Command::new(COMMAND_ID).invocation(Invocation::new(INSTANCE_ID).plugin(plugin))
}

async fn run(f: &Fixture, object: &CommandInvocation) -> Result<Action, ssm_operator::Error> {
    tokio::time::timeout(WAIT, reconcile(Arc::new(object.clone()), f.ctx.clone()))
        .await
        .expect("reconcile finished")
}

/// Registers `object` with the tracker (a first reconcile that writes nothing), waits until the
/// tracker has SSM's answer, and reconciles again while the verifier expects an Event and then a
/// status patch (the Event first, so that a crash between the two cannot lose it).
async fn run_expecting_patch_and_event(
    f: &Fixture,
    mut api: ApiServerVerifier,
    object: &CommandInvocation,
) -> (
    Result<Action, ssm_operator::Error>,
    Value,
    Value,
    ApiServerVerifier,
) {
    register(f, object).await;
    api.expect_silence().await;
    f.woken().await;
    answered_expecting_patch_and_event(f, api, object).await
}

/// The first reconcile of a resource the tracker has no answer for: nothing to write yet.
async fn register(f: &Fixture, object: &CommandInvocation) {
    let action = run(f, object).await.expect("registering reconcile");
    assert_eq!(action, Action::await_change(), "the tracker wakes it");
}

/// Reconciles `object`, whose answer the tracker has, expecting an Event and a status patch.
async fn answered_expecting_patch_and_event(
    f: &Fixture,
    mut api: ApiServerVerifier,
    object: &CommandInvocation,
) -> (
    Result<Action, ssm_operator::Error>,
    Value,
    Value,
    ApiServerVerifier,
) {
    let answer_with = object.clone();
    let verifier = tokio::spawn(async move {
        let event = api.expect_event().await;
        let patch = api.expect_status_patch(&answer_with).await;
        (patch, event, api)
    });
    let action = run(f, object).await;
    let (patch, event, api) = verifier.await.expect("verifier");
    (action, patch, event, api)
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn status_from(patch: &Value) -> CommandInvocationStatus {
    serde_json::from_value(patch["status"].clone()).unwrap()
}

#[tokio::test]
async fn first_answer_is_written_with_exactly_the_contract_fields_and_an_event() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(
        Plugin::new("aws:runShellScript").step(Duration::ZERO, Status::InProgress),
    ));
    let object = resource(1, None);
    let (action, patch, event, _api) = run_expecting_patch_and_event(&f, api, &object).await;
    let action = action.unwrap();
    assert_eq!(action, Action::await_change(), "the tracker wakes it");
    assert!(!f.ctx.tracker.is_empty(), "still tracked: not finished");

    assert_eq!(patch["apiVersion"], "ssm.operator.dev/v1alpha1");
    assert_eq!(patch["kind"], "CommandInvocation");
    let status = &patch["status"];
    let mut keys: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cloudWatchOutputConfig",
            "conditions",
            "documentName",
            "documentVersion",
            "executionStartDateTime",
            "lastPolledTime",
            "observedGeneration",
            "pluginName",
            "responseCode",
            "specHash",
            "status",
            "statusDetails",
        ],
        "{status:#}"
    );
    assert_eq!(status["status"], "InProgress");
    assert_eq!(status["statusDetails"], "In Progress");
    assert_eq!(status["responseCode"], -1);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Reconciling")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Finished")["status"], "False");
    assert_eq!(condition(status, "Stalled")["reason"], "InProgress");

    assert_eq!(event["reason"], "InProgress");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["name"], "patch-web-1");
    assert_eq!(event["reportingController"], "ssm-operator");
    assert_eq!(f.sim.calls("ListCommandInvocations"), 1, "one List page");
    assert_eq!(f.sim.calls("GetCommandInvocation"), 0, "List had it all");
}

#[tokio::test]
async fn the_same_answer_again_writes_nothing() {
    let (f, api) = fixture().await;
    f.sim
        .add_command(command(Plugin::new("aws:runShellScript")));
    let object = resource(1, None);
    let (_, patch, _, mut api) = run_expecting_patch_and_event(&f, api, &object).await;

    // A restarted operator (empty tracker) sees the written status and asks SSM again, which
    // repeats itself: nothing to write.
    let (f2, mut api2) = fixture().await;
    f2.sim
        .add_command(command(Plugin::new("aws:runShellScript")));
    let written = resource(1, Some(status_from(&patch)));
    register(&f2, &written).await;
    f2.woken().await;
    assert_eq!(run(&f2, &written).await.unwrap(), Action::await_change());
    assert_eq!(f2.sim.calls("ListCommandInvocations"), 1, "SSM was asked");
    api2.expect_silence().await;

    // The watch event caused by our own write: neither SSM nor the API is asked.
    let mut shown = written.clone();
    shown.metadata.resource_version = Some("101".into());
    let calls = f.sim.total_calls();
    assert_eq!(run(&f, &shown).await.unwrap(), Action::await_change());
    assert_eq!(f.sim.total_calls(), calls, "no extra SSM call");
    api.expect_silence().await;
}

/// `resource` created `age` ago, as stored before any write (with the schema's default
/// status).
fn unobserved(age: Duration) -> CommandInvocation {
    let mut object = resource(
        1,
        Some(CommandInvocationStatus {
            observed_generation: Some(-1),
            ..CommandInvocationStatus::default()
        }),
    );
    object.metadata.creation_timestamp = Some(Time(Timestamp::now() - age));
    object
}

/// [`unobserved`] as the child of a `Command`.
fn child(age: Duration) -> CommandInvocation {
    let mut object = unobserved(age);
    object.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "ssm.operator.dev/v1alpha1".into(),
        kind: "Command".into(),
        name: "patch-web".into(),
        uid: "5c6f7a1e-0000-4000-8000-00000000000c".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    object
}

/// A fixture on the simulator with the default `--progress-after` and `--not-found-grace`
/// `not_found_grace`.
async fn quiet_fixture(not_found_grace: Duration) -> (Fixture, ApiServerVerifier) {
    let settings = Settings {
        not_found_grace,
        progress_after: PROGRESS_AFTER,
        ..SETTINGS
    };
    fixture_on(Fence::open(), 16, INTERVALS, None, settings).await
}

/// Registers `object`, waits for the tracker's answer and reconciles it once more, expecting
/// no API call (its write held back); returns the seconds after which it looks again.
async fn held(
    f: &Fixture,
    mut api: ApiServerVerifier,
    object: &CommandInvocation,
) -> (f64, ApiServerVerifier) {
    register(f, object).await;
    f.woken().await;
    let action = run(f, object).await.unwrap();
    api.expect_silence().await;
    (requeue_secs(&action), api)
}

#[tokio::test]
async fn a_young_resource_writes_no_progress_but_its_final_answer_at_once() {
    // The node runs for 1.5 s: the first answer (InProgress) is not written, the resource
    // being younger than --progress-after; its end is written at once, as its first status
    // (one status write and one Event for the whole run), standalone or a Command's child.
    for young in [unobserved, child] {
        let (f, api) = quiet_fixture(Duration::from_secs(300)).await;
        let object = young(Duration::ZERO);
        f.sim.add_command(command(
            Plugin::new("aws:runShellScript")
                .step(Duration::ZERO, Status::InProgress)
                .step(Duration::from_millis(1500), Status::Success),
        ));
        let (secs, api) = held(&f, api, &object).await;
        assert!(
            (8.0..=10.0).contains(&secs),
            "looked at again once old enough: {secs} s"
        );

        f.woken().await;
        let (_, patch, event, _) = answered_expecting_patch_and_event(&f, api, &object).await;
        assert_eq!(patch["status"]["status"], "Success");
        assert_eq!(event["reason"], "Success");
    }
}

#[tokio::test]
async fn a_young_resources_invocation_not_found_is_looked_at_again_when_a_short_grace_runs_out() {
    // --not-found-grace 2 s, and SSM does not know the invocation: "not visible yet" is
    // progress, so the young resource writes nothing, but it is looked at again when the
    // grace runs out (to stall then), not only once its 10 s are over.
    let (f, api) = quiet_fixture(Duration::from_secs(2)).await;
    let (secs, _) = held(&f, api, &unobserved(Duration::ZERO)).await;
    assert!(
        (1.0..=2.2).contains(&secs),
        "looked at again after {secs} s"
    );
}

#[tokio::test]
async fn a_resource_older_than_progress_after_shows_its_progress() {
    for object in [
        child(Duration::from_secs(11)),
        unobserved(Duration::from_secs(11)),
    ] {
        let (f, api) = quiet_fixture(Duration::from_secs(300)).await;
        f.sim.add_command(command(
            Plugin::new("aws:runShellScript").step(Duration::ZERO, Status::InProgress),
        ));
        let (_, patch, event, _) = run_expecting_patch_and_event(&f, api, &object).await;
        assert_eq!(patch["status"]["status"], "InProgress");
        assert_eq!(event["reason"], "InProgress");
    }
}

#[tokio::test]
async fn a_finished_resource_is_never_polled_again() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let object = resource(1, None);
    let (action, patch, event, mut api) = run_expecting_patch_and_event(&f, api, &object).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(patch["status"]["status"], "Success");
    assert_eq!(patch["status"]["responseCode"], 0);
    assert_eq!(condition(&patch["status"], "Ready")["status"], "True");
    assert_eq!(condition(&patch["status"], "Finished")["status"], "True");
    assert_eq!(event["reason"], "Success");
    assert!(f.ctx.tracker.is_empty(), "no longer tracked");

    let mut finished = resource(1, Some(status_from(&patch)));
    finished.metadata.resource_version = Some("101".into());
    let calls = f.sim.total_calls();
    for _ in 0..3 {
        assert_eq!(run(&f, &finished).await.unwrap(), Action::await_change());
    }
    assert_eq!(f.sim.total_calls(), calls);
    assert!(f.ctx.tracker.is_empty());
    api.expect_silence().await;
}

#[tokio::test]
async fn a_spec_change_is_tracked_again_with_the_new_generation() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let (_, patch, _, api) = run_expecting_patch_and_event(&f, api, &resource(1, None)).await;
    let lists = f.sim.calls("ListCommandInvocations");

    let mut changed = resource(2, Some(status_from(&patch)));
    changed.metadata.resource_version = Some("101".into());
    changed.spec.plugin_name = Some("aws:runShellScript".into());
    // The finished generation was no longer tracked: the new one is asked about at once.
    let (action, patch, _, _api) = run_expecting_patch_and_event(&f, api, &changed).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(patch["status"]["observedGeneration"], 2);
    assert!(patch["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["observedGeneration"] == 2));
    assert_eq!(
        f.sim.calls("ListCommandInvocations"),
        lists + 1,
        "asked again"
    );
}

#[tokio::test]
async fn a_wrong_plugin_name_stalls_with_a_warning_and_stops_polling() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let mut object = resource(1, None);
    object.spec.plugin_name = Some("aws:runPowerShellScript".into());
    let (action, patch, event, _api) = run_expecting_patch_and_event(&f, api, &object).await;
    assert_eq!(action.unwrap(), Action::await_change());
    let status = &patch["status"];
    assert_eq!(condition(status, "Stalled")["status"], "True");
    assert_eq!(condition(status, "Stalled")["reason"], "InvalidPluginName");
    assert_eq!(condition(status, "Finished")["status"], "True");
    assert!(status.get("status").is_none(), "no SSM status was reported");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidPluginName");
    assert_eq!(
        f.sim.calls("GetCommandInvocation"),
        1,
        "List cannot judge a step name: SSM's own answer decides"
    );
    assert!(f.ctx.tracker.is_empty(), "no longer tracked");
}

#[tokio::test]
async fn an_event_the_api_server_could_not_take_yet_holds_the_status_back_until_a_retry() {
    let (f, mut api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let object = resource(1, None);
    register(&f, &object).await;
    f.woken().await;
    let verifier = tokio::spawn(async move {
        api.refuse_event(503).await;
        api.expect_silence().await;
        api
    });
    let error = run(&f, &object).await.unwrap_err();
    let api = verifier.await.unwrap();
    assert!(
        error
            .to_string()
            .contains("recording an Event for ops/patch-web-1"),
        "{error}"
    );
    assert_ne!(
        error_policy(Arc::new(object.clone()), &error, f.ctx.clone()),
        Action::await_change(),
        "retried with backoff"
    );
    // The retry records the Event under the same name, then writes the status.
    let (action, patch, event, _api) = answered_expecting_patch_and_event(&f, api, &object).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(patch["status"]["status"], "Success");
    assert_eq!(event["reason"], "Success");
    let metrics = f.ctx.metrics.encode().unwrap();
    assert!(
        metrics.contains("ssm_operator_reconcile_errors_total{error=\"record_event\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_event_the_api_server_refuses_for_good_does_not_hold_the_status_back() {
    let (f, mut api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let object = resource(1, None);
    register(&f, &object).await;
    f.woken().await;
    let answer_with = object.clone();
    let verifier = tokio::spawn(async move {
        api.refuse_event(403).await;
        api.expect_status_patch(&answer_with).await
    });
    let action = run(&f, &object).await.unwrap();
    let patch = verifier.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(patch["status"]["status"], "Success");
}

#[tokio::test]
async fn a_refused_status_write_fails_the_reconcile_and_is_retried_with_backoff() {
    let (f, mut api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let object = resource(1, None);
    register(&f, &object).await;
    f.woken().await;
    let verifier = tokio::spawn(async move {
        api.expect_event().await;
        api.refuse_status_patch(500).await;
        api
    });
    let error = run(&f, &object).await.unwrap_err();
    let mut api = verifier.await.unwrap();
    assert!(
        error
            .to_string()
            .contains("writing status of ops/patch-web-1"),
        "{error}"
    );
    let action = error_policy(Arc::new(object), &error, f.ctx.clone());
    assert_ne!(action, Action::await_change());
    api.expect_silence().await;
    let metrics = f.ctx.metrics.encode().unwrap();
    assert!(metrics.contains("ssm_operator_reconcile_errors_total{error=\"write_status\"} 1"));
}

#[tokio::test]
async fn a_requeue_that_runs_before_the_watch_shows_our_write_acts_on_the_write() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let object = resource(1, None);
    let (action, patch, event, mut api) = run_expecting_patch_and_event(&f, api, &object).await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert_eq!(event["reason"], "Success");

    // The cache still holds the object as it was before the write (resourceVersion 100, no
    // status): the operator must not track it again, write again (moving
    // lastTransitionTime) or record a second Success Event.
    let calls = f.sim.total_calls();
    assert_eq!(run(&f, &object).await.unwrap(), Action::await_change());
    assert!(f.ctx.tracker.is_empty(), "not tracked again");
    assert_eq!(f.sim.total_calls(), calls, "no second SSM call");
    api.expect_silence().await;

    // Once the watch shows the write, the cached object is used as it is.
    let mut shown = resource(1, Some(status_from(&patch)));
    shown.metadata.resource_version = Some("101".into());
    assert_eq!(run(&f, &shown).await.unwrap(), Action::await_change());
    assert_eq!(f.ctx.writer.pending_len(), 0, "the memo is dropped");
    api.expect_silence().await;
}

#[tokio::test]
async fn a_replica_that_does_not_hold_the_lease_writes_no_status_and_no_event() {
    // A fence for a Lease never seen (or held by another replica, or not renewed in time).
    let (f, mut api) = fixture_with(Fence::for_lease("test", Duration::from_secs(15)), 16).await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let object = resource(1, None);
    register(&f, &object).await;
    f.woken().await;
    let error = run(&f, &object).await.unwrap_err();
    assert!(matches!(error, ssm_operator::Error::Fenced), "{error}");
    api.expect_silence().await;
    let metrics = f.ctx.metrics.encode().unwrap();
    assert!(
        metrics.contains("ssm_operator_fenced_writes_total 2"),
        "the Event and the status write were refused; {metrics}"
    );
}

#[tokio::test]
async fn one_list_call_answers_every_node_of_a_command() {
    let (f, mut api) = fixture().await;
    let nodes = [
        "i-0123456789abcdef0",
        "i-0123456789abcdef1",
        "i-0123456789abcdef2",
    ];
    let mut command = Command::new(COMMAND_ID);
    for node in nodes {
        command = command.invocation(
            Invocation::new(node).plugin(Plugin::succeeding("aws:runShellScript", Duration::ZERO)),
        );
    }
    f.sim.add_command(command);
    let objects: Vec<CommandInvocation> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut object = resource(1, None);
            object.metadata.name = Some(format!("node-{i}"));
            object.metadata.uid = Some(format!("uid-{i}"));
            object.spec.instance_id = (*node).into();
            object
        })
        .collect();
    for object in &objects {
        register(&f, object).await;
    }
    let mut woken: Vec<String> = Vec::new();
    for _ in &objects {
        woken.push(f.woken().await.name);
    }
    woken.sort();
    assert_eq!(woken, ["node-0", "node-1", "node-2"]);
    assert_eq!(f.sim.calls("ListCommandInvocations"), 1);
    assert_eq!(f.sim.calls("GetCommandInvocation"), 0);
    api.expect_silence().await;
}

#[tokio::test]
async fn a_terminal_event_is_read_with_one_get_not_a_walk() {
    // Regular rounds far apart: only the first one happens during the test.
    let slow = PollIntervals {
        min: Duration::from_secs(60),
        max: Duration::from_secs(60),
    };
    let (f, mut api) = fixture_full(Fence::open(), 16, slow).await;
    f.sim.add_command(command(
        Plugin::new("aws:runShellScript")
            .step(Duration::ZERO, Status::InProgress)
            .step(Duration::from_millis(300), Status::Success),
    ));
    let object = resource(1, None);
    register(&f, &object).await;
    f.woken().await;
    assert_eq!(f.sim.calls("ListCommandInvocations"), 1);

    let hint = ssm_operator::aws::eventbridge::Hint {
        region: None,
        command_id: COMMAND_ID.into(),
        instance_id: Some(INSTANCE_ID.into()),
        status: "Success".into(),
    };
    // The event may arrive before SSM shows the change (it is a hint, not truth): hint again
    // until the read shows it, as repeated events would.
    let key = ssm_operator::aws::ssm::InvocationKey {
        region: None,
        command_id: COMMAND_ID.into(),
        instance_id: INSTANCE_ID.into(),
        plugin_name: None,
        role: None,
    };
    let uid = object.metadata.uid.clone().unwrap();
    let status = loop {
        f.ctx.tracker.hint(&hint);
        let next = tokio::time::timeout(Duration::from_millis(500), async {
            f.wakes.lock().await.next().await
        });
        if let Ok(Some(woken)) = next.await {
            let tracked = f
                .ctx
                .tracker
                .track(&uid, woken, &key, 1, std::time::Instant::now());
            let answer = tracked
                .answer
                .expect("answered")
                .result
                .clone()
                .expect("an invocation");
            if answer.status == "Success" {
                break answer.status;
            }
        }
        assert!(
            f.sim.calls("GetCommandInvocation") < 20,
            "the hinted read never showed Success"
        );
    };
    assert_eq!(status, "Success");
    assert_eq!(
        f.sim.calls("ListCommandInvocations"),
        1,
        "no walk for one hinted node"
    );
    assert!(f.sim.calls("GetCommandInvocation") >= 1);
    api.expect_silence().await;
}

/// One of `count` resources of one command, each on its own node, alternating between the
/// namespaces `ops` and `dev`.
fn fleet(count: usize) -> (Command, Vec<CommandInvocation>) {
    let mut command = Command::new(COMMAND_ID);
    let mut objects = Vec::new();
    for i in 0..count {
        let node = format!("i-0123456789abcde{i:02}");
        command = command.invocation(
            Invocation::new(&node).plugin(Plugin::succeeding("aws:runShellScript", Duration::ZERO)),
        );
        let mut object = resource(1, None);
        object.metadata.name = Some(format!("node-{i}"));
        object.metadata.namespace = Some(if i % 2 == 0 { "ops" } else { "dev" }.into());
        object.metadata.uid = Some(format!("uid-{i}"));
        object.spec.instance_id = node;
        objects.push(object);
    }
    (command, objects)
}

/// Plays the API server for `count` writes (Events and status patches), holding each request
/// open until `hold` passes without a new one: returns the most requests it held at once.
async fn serve_writes(
    api: &mut ApiServerVerifier,
    objects: &[CommandInvocation],
    count: usize,
    hold: Duration,
) -> usize {
    let stored: std::collections::HashMap<String, &CommandInvocation> = objects
        .iter()
        .map(|o| {
            let ns = o.metadata.namespace.as_deref().unwrap();
            let name = o.metadata.name.as_deref().unwrap();
            let path = format!(
                "/apis/ssm.operator.dev/v1alpha1/namespaces/{ns}/commandinvocations/{name}/status"
            );
            (path, o)
        })
        .collect();
    let mut held = std::collections::VecDeque::new();
    let (mut answered, mut most) = (0, 0);
    while answered < count {
        match tokio::time::timeout(hold, api.0.next_request()).await {
            Ok(Some(request)) => {
                held.push_back(request);
                most = most.max(held.len());
            }
            Ok(None) => panic!("mock service dropped"),
            Err(_) => {
                let (request, send) = held
                    .pop_front()
                    .unwrap_or_else(|| panic!("no write came; {answered} of {count} answered"));
                let path = request.uri().path().to_string();
                let method = request.method().clone();
                let body = mock_api::body(request).await;
                if method == Method::POST && path.ends_with("/events") {
                    send.send_response(json_response(201, &body));
                } else {
                    assert_eq!(method, Method::PATCH, "{path}");
                    let object = stored.get(&path).unwrap_or_else(|| panic!("{path}"));
                    let mut answer = serde_json::to_value(object).unwrap();
                    answer["status"] = body["status"].clone();
                    answer["metadata"]["resourceVersion"] = json!("101");
                    send.send_response(json_response(200, &answer));
                }
                answered += 1;
            }
        }
    }
    most
}

#[tokio::test]
async fn max_concurrent_reconciles_is_one_limit_across_namespaces_and_the_rest_take_turns() {
    // --max-concurrent-reconciles 2; six resources, three in each of two namespaces, all
    // answered by SSM at once, and an API server slow to take writes.
    let (f, mut api) = fixture_with(Fence::open(), 2).await;
    let (command, objects) = fleet(6);
    f.sim.add_command(command);
    for object in &objects {
        register(&f, object).await;
    }
    for _ in &objects {
        f.woken().await;
    }
    // What the controller does: reconcile each resource, and again whenever it is woken.
    let by_name: std::collections::HashMap<String, CommandInvocation> = objects
        .iter()
        .map(|o| (o.metadata.name.clone().unwrap(), o.clone()))
        .collect();
    let ctx = f.ctx.clone();
    let f = Arc::new(f);
    let controller = {
        let f = f.clone();
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for object in by_name.values() {
                running.spawn(reconcile(Arc::new(object.clone()), ctx.clone()));
            }
            for _ in 0..by_name.len() - 2 {
                let woken = f.woken().await;
                running.spawn(reconcile(
                    Arc::new(by_name[&woken.name].clone()),
                    ctx.clone(),
                ));
            }
            running.join_all().await
        })
    };
    // Each writing reconcile records an Event, then writes the status: 12 writes in all.
    let most = serve_writes(&mut api, &objects, 12, Duration::from_millis(300)).await;
    let actions = tokio::time::timeout(WAIT, controller)
        .await
        .expect("every resource was reconciled, and woken for its turn")
        .unwrap();
    assert_eq!(
        actions.len(),
        6 + 4,
        "four waited their turn and were woken for it"
    );
    for action in actions {
        assert_eq!(action.expect("no reconcile failed"), Action::await_change());
    }
    assert_eq!(
        most, 2,
        "the API server saw at most 2 of the operator's writes at once (and 2 did run at once)"
    );
    let metrics = f.ctx.metrics.encode().unwrap();
    assert!(
        metrics.contains("ssm_operator_status_writes_total 6"),
        "every resource got its status; {metrics}"
    );
    assert_eq!(f.ctx.turns.waiting(), 0);
    assert!(
        metrics.contains("ssm_operator_status_writes_waiting 0"),
        "the line is empty again; {metrics}"
    );
    api.expect_silence().await;
}

#[tokio::test]
async fn a_deleted_resource_is_forgotten_by_the_tracker_and_the_writer() {
    use ssm_operator::k8s::watch::Forget;

    let (f, mut api) = fixture().await;
    let (_, objects) = fleet(2);
    let mut command = Command::new(COMMAND_ID);
    for object in &objects {
        command = command
            .invocation(Invocation::new(&object.spec.instance_id).plugin(
                Plugin::new("aws:runShellScript").step(Duration::ZERO, Status::InProgress),
            ));
    }
    f.sim.add_command(command);
    for object in &objects {
        register(&f, object).await;
    }
    for _ in &objects {
        f.woken().await;
    }
    for object in &objects {
        let reconciled = tokio::spawn(reconcile(Arc::new(object.clone()), f.ctx.clone()));
        serve_writes(&mut api, &objects, 2, Duration::from_millis(100)).await;
        reconciled.await.unwrap().expect("InProgress written");
    }
    // Both still running: tracked, and their writes not yet shown by the watch.
    assert_eq!(f.ctx.tracker.len(), 2);
    assert_eq!(f.ctx.writer.pending_len(), 2);
    let gauge = |n: usize| format!("ssm_operator_poll_book_entries {n}\n");
    assert!(f.ctx.metrics.encode().unwrap().contains(&gauge(2)));
    // While tracked, rounds go on even without news: at least one in any window longer than
    // the 2 s the backoff grows to (so the silence below is not just a long backoff).
    let window = Duration::from_millis(2500);
    let calls = f.sim.total_calls();
    tokio::time::sleep(window).await;
    assert!(
        f.sim.total_calls() > calls,
        "tracked resources are asked about within {window:?}"
    );

    // A re-list that no longer shows uid-1 (deleted while the watch was down).
    f.ctx.retain(&["uid-0".to_string()].into());
    assert_eq!(f.ctx.tracker.len(), 1);
    assert_eq!(f.ctx.writer.pending_len(), 1);
    // The watch's Delete of uid-0.
    f.ctx.forget("uid-0");
    assert!(f.ctx.tracker.is_empty());
    assert_eq!(f.ctx.writer.pending_len(), 0);
    assert!(f.ctx.metrics.encode().unwrap().contains(&gauge(0)));
    // Nothing of theirs is asked any more: the command has no round left, over a window
    // that saw a round while they were tracked.
    let calls = f.sim.total_calls();
    tokio::time::sleep(window).await;
    assert_eq!(
        f.sim.total_calls(),
        calls,
        "no SSM call for deleted resources within {window:?}"
    );
    api.expect_silence().await;
}

#[tokio::test]
async fn a_ttl_only_change_of_a_finished_resource_moves_the_status_without_asking_ssm() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let (_, patch, _, mut api) = run_expecting_patch_and_event(&f, api, &resource(1, None)).await;
    let finished = status_from(&patch);
    assert!(finished.spec_hash.is_some(), "the fingerprint is written");
    let calls = f.sim.total_calls();

    let mut changed = resource(2, Some(finished.clone()));
    changed.metadata.resource_version = Some("101".into());
    changed.spec.ttl_seconds_after_finished = Some(3600);
    let answer_with = changed.clone();
    let verifier = tokio::spawn(async move {
        let patch = api.expect_status_patch(&answer_with).await;
        api.expect_silence().await;
        patch
    });
    let action = run(&f, &changed).await.unwrap();
    let patch = verifier.await.expect("verifier");
    assert_eq!(action, Action::await_change());
    let moved = status_from(&patch);
    assert_eq!(moved.observed_generation, Some(2));
    assert!(moved
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(2)));
    assert_eq!(
        moved.conditions,
        finished
            .conditions
            .iter()
            .cloned()
            .map(|mut c| {
                c.observed_generation = Some(2);
                c
            })
            .collect::<Vec<_>>(),
        "same conditions, same transition times"
    );
    assert_eq!(moved.status, finished.status);
    assert_eq!(f.sim.total_calls(), calls, "SSM was not asked");
}

#[tokio::test]
async fn an_expired_resource_is_deleted_with_its_uid_as_precondition() {
    let (f, mut api) = fixture().await;
    let mut expired = resource(1, None);
    expired.spec.ttl_seconds_after_finished = Some(0);
    let mut status = CommandInvocationStatus {
        status: Some("Success".into()),
        observed_generation: Some(1),
        ..CommandInvocationStatus::default()
    };
    status.conditions = ["Ready", "Reconciling", "Stalled", "Finished"]
        .into_iter()
        .map(
            |type_| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: type_.into(),
                status: if matches!(type_, "Ready" | "Finished") {
                    "True"
                } else {
                    "False"
                }
                .into(),
                reason: "Success".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::now()),
            },
        )
        .collect();
    expired.status = Some(status);
    let verifier = tokio::spawn(async move {
        let (request, send) = api.next().await;
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(
            request.uri().path(),
            "/apis/ssm.operator.dev/v1alpha1/namespaces/ops/commandinvocations/patch-web-1"
        );
        let body: Value = mock_api::body(request).await;
        // A newer object of the same name has another uid: the API server answers 409.
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "Precondition failed: UID in precondition: x, UID in object meta: y",
            "reason": "Conflict", "code": 409
        });
        send.send_response(json_response(409, &status));
        api.expect_silence().await;
        body
    });
    let action = run(&f, &expired)
        .await
        .expect("a replaced object is no error");
    let body = verifier.await.expect("verifier");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        body["preconditions"]["uid"],
        "5c6f7a1e-0000-4000-8000-000000000001"
    );
    assert_eq!(body["propagationPolicy"], "Background");
    assert_eq!(f.sim.total_calls(), 0, "expiry asks SSM nothing");
}

#[tokio::test]
async fn a_finished_resource_is_looked_at_again_exactly_when_its_ttl_runs_out() {
    let (f, api) = fixture().await;
    f.sim.add_command(command(Plugin::succeeding(
        "aws:runShellScript",
        Duration::ZERO,
    )));
    let (_, patch, _, mut api) = run_expecting_patch_and_event(&f, api, &resource(1, None)).await;
    let calls = f.sim.total_calls();
    let mut finished = resource(1, Some(status_from(&patch)));
    finished.spec.ttl_seconds_after_finished = Some(600);
    let action = run(&f, &finished).await.unwrap();
    api.expect_silence().await;
    assert_eq!(f.sim.total_calls(), calls, "no SSM call until then");
    // ≈ 600 s (minus the seconds since Finished turned True).
    let secs = requeue_secs(&action);
    assert!((590.0..=600.1).contains(&secs), "{action:?}");
}

/// The seconds after which `action` looks again (kube's `Action` shows it only in `Debug`).
fn requeue_secs(action: &Action) -> f64 {
    let wait = format!("{action:?}");
    wait.split("requeue_after: Some(")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a requeue: {wait}"))
}

/// Sum of the operator's `ssm_operator_ssm_calls_total` over every label.
fn ssm_calls(f: &Fixture) -> f64 {
    f.ctx
        .metrics
        .encode()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ssm_operator_ssm_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_region_whose_endpoint_never_resolves_stalls_as_ssm_unavailable_and_is_asked_rarely() {
    // `spec.region: xx-nowhere-9`: its endpoint's name never resolves (`.invalid` never does,
    // RFC 6761), as a region that does not exist. A few tries (SsmUnavailable, retrying),
    // then Stalled with SsmUnavailable naming the region, re-checked only rarely (300 s here).
    let intervals = PollIntervals {
        min: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    let (f, mut api) = fixture_on(
        Fence::open(),
        16,
        intervals,
        Some("http://ssm.xx-nowhere-9.invalid"),
        SETTINGS,
    )
    .await;
    let mut object = resource(1, None);
    object.spec.region = Some("xx-nowhere-9".into());
    register(&f, &object).await;
    let (statuses, mut written) = tokio::sync::mpsc::unbounded_channel();
    let stored = object.clone();
    let server = tokio::spawn(async move {
        while let Some((request, send)) = api.0.next_request().await {
            let method = request.method().clone();
            let body: Value = mock_api::body(request).await;
            if method == Method::POST {
                send.send_response(json_response(201, &body));
                continue;
            }
            let mut answer = serde_json::to_value(&stored).unwrap();
            answer["status"] = body["status"].clone();
            answer["metadata"]["resourceVersion"] = json!("101");
            send.send_response(json_response(200, &answer));
            let _ = statuses.send(body["status"].clone());
        }
    });
    let mut reasons = Vec::new();
    let stalled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            f.woken().await;
            run(&f, &object).await.expect("reconcile");
            while let Ok(status) = written.try_recv() {
                reasons.push(condition(&status, "Reconciling")["reason"].clone());
                if condition(&status, "Stalled")["status"] == "True" {
                    return status;
                }
            }
        }
    })
    .await
    .expect("Stalled within 60 s");
    assert!(
        reasons.iter().all(|r| r == "SsmUnavailable"),
        "retrying meanwhile: {reasons:?}"
    );
    let stall = condition(&stalled, "Stalled");
    assert_eq!(stall["reason"], "SsmUnavailable");
    let message = stall["message"].as_str().unwrap();
    assert!(message.contains("region xx-nowhere-9"), "{message}");
    assert_eq!(condition(&stalled, "Finished")["status"], "True");
    let calls = ssm_calls(&f);
    assert_eq!(calls, 3.0, "three tries, each with the SDK's own retries");
    // Re-checked rarely: nothing more within several poll intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ssm_calls(&f), calls, "not asked again before the re-check");
    server.abort();
}
