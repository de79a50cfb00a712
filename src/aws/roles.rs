//! Which role each namespace's SSM calls use (`--namespace-roles`): a metadata-only watch of
//! Namespaces. `ssm.operator.dev/role-arn` (and optionally `ssm.operator.dev/external-id`)
//! names the role; without the annotation the operator's own identity is used. Only cluster
//! admins can annotate Namespaces, which is what makes this safe to offer.
//!
//! A change takes effect without a restart: the namespace's tracked resources are woken, their
//! reconcile re-keys them, and their commands are asked at once with the new identity. No
//! resource is reconciled before the first list of Namespaces is in, so a namespace's calls are
//! never made with the operator's own identity by mistake.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::aws::sts::Role;
use crate::runtime::metrics::Metrics;

/// The Namespace annotation naming the role.
pub const ROLE_ARN: &str = "ssm.operator.dev/role-arn";
/// The Namespace annotation with the role's external id.
pub const EXTERNAL_ID: &str = "ssm.operator.dev/external-id";

/// The role per namespace, as last seen.
#[derive(Debug)]
pub struct Roles {
    enabled: bool,
    by_namespace: Mutex<HashMap<String, Role>>,
    synced: watch::Sender<bool>,
}

impl Roles {
    /// Without `--namespace-roles`: every call uses the operator's own identity.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            by_namespace: Mutex::new(HashMap::new()),
            synced: watch::Sender::new(true),
        }
    }

    /// With `--namespace-roles`: roles come from Namespace annotations once [`Roles::follow`]
    /// has listed them.
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            by_namespace: Mutex::new(HashMap::new()),
            synced: watch::Sender::new(false),
        }
    }

    /// The role for resources in `namespace`, if it names one.
    pub fn role_for(&self, namespace: &str) -> Option<Role> {
        if !self.enabled {
            return None;
        }
        self.by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .cloned()
    }

    /// Pure: the role a Namespace's annotations name (an empty ARN names none).
    pub fn role_of(namespace: &str, annotations: &BTreeMap<String, String>) -> Option<Role> {
        let arn = annotations.get(ROLE_ARN).map(|a| a.trim())?;
        (!arn.is_empty()).then(|| Role {
            namespace: namespace.to_string(),
            arn: arn.to_string(),
            external_id: annotations
                .get(EXTERNAL_ID)
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
        })
    }

    /// Records `namespace`'s role; true when it changed.
    pub fn observe(&self, namespace: &str, role: Option<Role>) -> bool {
        let mut roles = self
            .by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = roles.get(namespace) != role.as_ref();
        match role {
            Some(role) => roles.insert(namespace.to_string(), role),
            None => roles.remove(namespace),
        };
        changed
    }

    /// Completes once the roles are known (at once when disabled).
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Follows Namespace annotations until dropped; `changed` is called with each namespace
    /// whose role changed (the controller wakes its resources).
    pub async fn follow(
        self: Arc<Self>,
        client: Client,
        changed: impl Fn(&str) + Send + 'static,
        metrics: Arc<Metrics>,
    ) {
        if !self.enabled {
            return;
        }
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(ns) | Event::InitApply(ns)) => {
                    let name = ns.name_any();
                    let role = Self::role_of(&name, ns.annotations());
                    if self.observe(&name, role.clone()) {
                        info!(namespace = %name, role = ?role.as_ref().map(|r| &r.arn), "namespace role");
                        changed(&name);
                    }
                }
                Ok(Event::Delete(ns)) => {
                    self.observe(&ns.name_any(), None);
                }
                Ok(Event::InitDone) => {
                    self.synced.send_replace(true);
                }
                Ok(Event::Init) => {}
                Err(error) => {
                    metrics.watch_failed();
                    warn!(%error, "watching Namespaces for roles failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_annotations_name_the_role_and_its_external_id() {
        let role = Roles::role_of(
            "team-a",
            &annotations(&[
                (ROLE_ARN, "arn:aws:iam::111122223333:role/ssm-reader"),
                (EXTERNAL_ID, "team-a-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(role.arn, "arn:aws:iam::111122223333:role/ssm-reader");
        assert_eq!(role.external_id.as_deref(), Some("team-a-secret"));
        assert_eq!(role.namespace, "team-a");
        assert_eq!(Roles::role_of("b", &annotations(&[])), None);
        assert_eq!(Roles::role_of("b", &annotations(&[(ROLE_ARN, " ")])), None);
        assert_eq!(
            Roles::role_of("b", &annotations(&[(ROLE_ARN, "arn:x"), (EXTERNAL_ID, "")]))
                .unwrap()
                .external_id,
            None
        );
    }

    #[test]
    fn changes_are_reported_and_disabled_roles_are_never_used() {
        let roles = Roles::enabled();
        let role = Roles::role_of("a", &annotations(&[(ROLE_ARN, "arn:1")]));
        assert!(roles.observe("a", role.clone()));
        assert!(!roles.observe("a", role.clone()), "same role: no change");
        assert_eq!(roles.role_for("a"), role);
        assert!(roles.observe("a", None), "annotation removed");
        assert_eq!(roles.role_for("a"), None);
        let off = Roles::disabled();
        off.observe("a", role);
        assert_eq!(off.role_for("a"), None);
    }
}
