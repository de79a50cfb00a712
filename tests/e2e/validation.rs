//! Bad specs are refused by the API server itself (HTTP 422 naming the field), and unknown
//! fields are pruned, before the operator ever sees them.

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::Api;
use serde_json::{json, Value};
use ssm_operator::api::CommandInvocation;
use testbed::TestCluster;

use crate::support::{World, COMMAND_ID, INSTANCE_ID};

async fn create_raw(world: &World, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
    let resource = ApiResource::erase::<CommandInvocation>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(world.client.clone(), &world.namespace, &resource);
    let object = DynamicObject::new(name, &resource).data(json!({ "spec": spec }));
    api.create(&PostParams::default(), &object).await
}

pub async fn bad_specs_are_refused_by_the_api_server(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "validation").await;
    let cases = [
        (
            "short-command",
            json!({"commandId": "abc", "instanceId": INSTANCE_ID}),
            "spec.commandId",
        ),
        (
            "long-command",
            json!({"commandId": format!("{COMMAND_ID}x"), "instanceId": INSTANCE_ID}),
            "spec.commandId",
        ),
        (
            "bad-instance",
            json!({"commandId": COMMAND_ID, "instanceId": "web-1"}),
            "spec.instanceId",
        ),
        (
            "short-instance",
            json!({"commandId": COMMAND_ID, "instanceId": "i-123"}),
            "spec.instanceId",
        ),
        (
            "short-plugin",
            json!({"commandId": COMMAND_ID, "instanceId": INSTANCE_ID, "pluginName": "aws"}),
            "spec.pluginName",
        ),
        (
            "bad-region",
            json!({"commandId": COMMAND_ID, "instanceId": INSTANCE_ID, "region": "Europe"}),
            "spec.region",
        ),
        (
            "no-instance",
            json!({"commandId": COMMAND_ID}),
            "spec.instanceId",
        ),
        (
            "no-command",
            json!({"instanceId": INSTANCE_ID}),
            "spec.commandId",
        ),
    ];
    for (name, spec, field) in cases {
        match create_raw(&world, name, spec).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {status:?}");
                assert!(
                    status.message.contains(field),
                    "{name}: message should name {field}: {}",
                    status.message
                );
            }
            other => panic!("{name}: expected HTTP 422, got {other:?}"),
        }
    }

    // Valid forms, including a hybrid node id and a region, are accepted.
    for (name, spec) in [
        (
            "hybrid",
            json!({"commandId": COMMAND_ID, "instanceId": "mi-0123456789abcdef0", "region": "us-gov-west-1"}),
        ),
        (
            "short-ec2",
            json!({"commandId": COMMAND_ID, "instanceId": "i-01234567", "pluginName": "step"}),
        ),
    ] {
        create_raw(&world, name, spec)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // Unknown fields are pruned, not stored.
    let created = create_raw(
        &world,
        "extra-field",
        json!({"commandId": COMMAND_ID, "instanceId": INSTANCE_ID, "timeout": "5m"}),
    )
    .await
    .expect("created");
    assert!(
        created.data["spec"].get("timeout").is_none(),
        "{:?}",
        created.data
    );
}
