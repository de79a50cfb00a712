//! The STS simulator through aws-config's `AssumeRoleProvider` (which drives the real
//! `aws-sdk-sts` client), and the SSM simulator's record of which access key signed what.

use std::time::{Duration, SystemTime};

use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::{BehaviorVersion, Credentials, ProvideCredentials, Region};
use aws_sdk_ssm::error::DisplayErrorContext;
use aws_sdk_ssm::Client;
use ssm_sim::{Simulator, StsSimulator};

use crate::common::{client, sdk_config};

const ROLE: &str = "arn:aws:iam::111122223333:role/ssm-reader";
const OTHER_ROLE: &str = "arn:aws:iam::444455556666:role/not-trusted";

/// A configuration signing with static keys `source_akid`, asking `sts` for roles.
async fn base(sts: &StsSimulator, source_akid: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new(
            source_akid,
            "source-secret",
            None,
            None,
            "ssm-sim-tests",
        ))
        .endpoint_url(sts.endpoint())
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

async fn provider(sts: &StsSimulator, role: &str, external_id: Option<&str>) -> AssumeRoleProvider {
    let mut builder = AssumeRoleProvider::builder(role)
        .session_name("ssm-operator-team-a")
        .configure(&base(sts, "AKIDSOURCE").await);
    if let Some(id) = external_id {
        builder = builder.external_id(id);
    }
    builder.build().await
}

/// An SSM client for `sim` whose credentials are `role` assumed through `sts`.
async fn ssm_as_role(sim: &Simulator, sts: &StsSimulator, role: &str) -> Client {
    let roles = provider(sts, role, None).await;
    let config = sdk_config(
        &sim.endpoint(),
        roles,
        RetryConfig::disabled(),
        Duration::from_secs(10),
    );
    Client::new(&config)
}

#[tokio::test]
async fn an_allowed_role_is_assumed_with_a_new_key_each_time() {
    let sts = StsSimulator::start().await.unwrap();
    sts.allow_role(ROLE, Some("team-a-secret"));
    let roles = provider(&sts, ROLE, Some("team-a-secret")).await;

    let first = roles.provide_credentials().await.expect("assumed");
    assert!(
        first.access_key_id().starts_with("ASIASSMREADE"),
        "{}",
        first.access_key_id()
    );
    assert!(first.session_token().is_some_and(|t| !t.is_empty()));
    assert!(!first.secret_access_key().is_empty());
    // One hour by default (the Expiration is in whole seconds).
    let left = first
        .expiry()
        .expect("expiry")
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(3590) && left <= Duration::from_secs(3600),
        "{left:?}"
    );

    // The provider does not cache: every call is a new AssumeRole with a new key.
    let second = roles.provide_credentials().await.expect("assumed again");
    assert_ne!(first.access_key_id(), second.access_key_id());
    let assumed = sts.assumed();
    assert_eq!(assumed.len(), 2);
    assert_eq!(
        assumed[0],
        (
            ROLE.to_string(),
            "ssm-operator-team-a".to_string(),
            Some("team-a-secret".to_string()),
            first.access_key_id().to_string()
        )
    );
    assert_eq!(assumed[1].3, second.access_key_id());
    assert!(sts.refused().is_empty());
    assert_eq!(sts.calls(), 2);
    sts.shutdown().await;
}

#[tokio::test]
async fn other_roles_and_wrong_external_ids_are_access_denied() {
    let sts = StsSimulator::start().await.unwrap();
    sts.allow_role(ROLE, Some("team-a-secret"));
    for (role, external_id) in [(OTHER_ROLE, None), (ROLE, None), (ROLE, Some("guessed"))] {
        let err = provider(&sts, role, external_id)
            .await
            .provide_credentials()
            .await
            .expect_err("refused");
        let text = DisplayErrorContext(&err).to_string();
        assert!(text.contains("AccessDenied"), "{text}");
        assert!(
            text.contains(&format!(
                "User: arn:aws:iam::000000000000:user/AKIDSOURCE is not authorized to perform: \
                 sts:AssumeRole on resource: {role}"
            )),
            "{text}"
        );
    }
    assert!(sts.assumed().is_empty());
    let refused = sts.refused();
    assert_eq!(refused.len(), 3);
    assert_eq!(
        refused[2],
        (
            ROLE.to_string(),
            "ssm-operator-team-a".to_string(),
            Some("guessed".to_string())
        )
    );

    // Allowed later (say, the trust policy was fixed): granted from then on.
    sts.allow_role(OTHER_ROLE, None);
    let creds = provider(&sts, OTHER_ROLE, None)
        .await
        .provide_credentials()
        .await
        .expect("allowed now");
    assert!(creds.access_key_id().starts_with("ASIANOTTRUST"));
    sts.revoke_role(OTHER_ROLE);
    assert!(provider(&sts, OTHER_ROLE, None)
        .await
        .provide_credentials()
        .await
        .is_err());
}

#[tokio::test]
async fn the_lifetime_is_the_one_set() {
    let sts = StsSimulator::start().await.unwrap();
    sts.allow_role(ROLE, None);
    sts.set_lifetime(Duration::from_secs(20));
    let creds = provider(&sts, ROLE, None)
        .await
        .provide_credentials()
        .await
        .unwrap();
    let left = creds
        .expiry()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(18) && left <= Duration::from_secs(20),
        "{left:?}"
    );
}

#[tokio::test]
async fn ssm_requests_record_the_access_key_that_signed_them() {
    let sim = Simulator::start().await.unwrap();
    let sts = StsSimulator::start().await.unwrap();
    sts.allow_role(ROLE, None);
    let as_role = ssm_as_role(&sim, &sts, ROLE).await;
    let own = client(&sim);

    as_role.list_commands().send().await.unwrap();
    as_role
        .list_command_invocations()
        .command_id("4f5a6b7c-8d9e-4fa0-b1c2-d3e4f5a6b7c8")
        .send()
        .await
        .unwrap();
    own.list_commands().send().await.unwrap();

    // The SDK's identity cache kept the role's first credentials for both calls.
    let assumed = sts.assumed();
    assert_eq!(assumed.len(), 1, "{assumed:?}");
    let role_key = assumed[0].3.clone();
    assert_eq!(sim.signers(), [role_key.clone(), "AKIDSSMSIMTEST".into()]);
    assert_eq!(sim.calls_signed_by(&role_key), 2);
    assert_eq!(sim.calls_signed_by("AKIDSSMSIMTEST"), 1);
    assert_eq!(sim.calls_signed_by("AKIDNOBODY"), 0);
    assert_eq!(
        sim.operation_calls_signed_by("ListCommandInvocations", &role_key),
        1
    );
    assert_eq!(
        sim.operation_calls_signed_by("ListCommandInvocations", "AKIDSSMSIMTEST"),
        0
    );
    assert_eq!(sim.total_calls(), 3);
}

#[tokio::test]
async fn credentials_close_to_expiry_are_assumed_again() {
    let sim = Simulator::start().await.unwrap();
    let sts = StsSimulator::start().await.unwrap();
    sts.allow_role(ROLE, None);
    // Shorter than the identity cache's refresh buffer (10 s): every call assumes again.
    sts.set_lifetime(Duration::from_secs(5));
    let as_role = ssm_as_role(&sim, &sts, ROLE).await;
    for _ in 0..3 {
        as_role.list_commands().send().await.unwrap();
    }
    let keys: Vec<String> = sts.assumed().into_iter().map(|a| a.3).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(sim.signers(), keys);
    assert!(keys.iter().all(|k| sim.calls_signed_by(k) == 1));
}
