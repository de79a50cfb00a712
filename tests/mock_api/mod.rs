//! Shared by the reconciler tests: kube's `tower-test` mock as the API server (the kube-rs
//! controller example's verifier pattern), and the SDK configuration that reaches the SSM
//! simulator.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::Credentials;
use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

/// The test's end of the mock API server.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How long a reconcile may take to make its next API call.
const WAIT: Duration = Duration::from_secs(10);

/// The next request the reconciler makes, and where to answer it.
pub async fn next(
    handle: &mut Handle,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    tokio::time::timeout(WAIT, handle.next_request())
        .await
        .expect("the reconciler should have called the API server")
        .expect("mock service dropped")
}

/// Asserts that no API call comes within `window`.
pub async fn expect_silence(handle: &mut Handle, window: Duration) {
    let next = tokio::time::timeout(window, handle.next_request()).await;
    assert!(
        next.is_err(),
        "unexpected API call: {:?}",
        next.ok().flatten().map(|(r, _)| r.uri().clone())
    );
}

/// A request's JSON body.
pub async fn body(request: Request<Body>) -> Value {
    serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap()
}

/// A JSON answer with HTTP status `code`.
pub fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// The SDK configuration that reaches an SSM endpoint (region eu-west-1, static test keys).
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
}
