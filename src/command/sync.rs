//! A `Command`'s children in step with SSM: one child `CommandInvocation` per node of the run
//! (the named instance ids, or the nodes SSM lists for targets), and none of an earlier run.
//! Creates and deletes go through the fenced [`Writer`](crate::k8s::writer::Writer).

use std::collections::HashSet;

use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::api::{Command, CommandInvocation};
use crate::aws::ssm::Scope;
use crate::command::children::{self, COMMAND_LABEL};
use crate::command::context::Context;
use crate::Error;

/// Creates the children SSM's nodes call for: the named instance ids, or the nodes SSM lists
/// for targets (asked only while fewer children are known than SSM counts targets, and once
/// more when the run has finished).
pub(super) async fn sync_children(
    object: &Command,
    ctx: &Context,
    scope: &Scope,
    command_id: &str,
    target_count: i32,
    finished: bool,
) -> Result<(), Error> {
    let uid = object.uid().unwrap_or_default();
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<CommandInvocation> = Api::namespaced(ctx.client.clone(), &namespace);
    let known = ctx.memo(&uid, |m| {
        m.children
            .as_ref()
            .filter(|(id, _)| id == command_id)
            .map(|(_, nodes)| nodes.clone())
    });
    let mut known = match known {
        Some(known) => known,
        None => existing_children(object, ctx, &api, command_id).await?,
    };
    let enough = usize::try_from(target_count).unwrap_or(0) <= known.len();
    if enough && !finished {
        ctx.memo(&uid, |m| m.children = Some((command_id.to_string(), known)));
        return Ok(());
    }
    // Named nodes are the invocations SSM makes; only targets need SSM's list.
    let named = object
        .spec
        .instance_ids
        .clone()
        .filter(|ids| !ids.is_empty());
    let listed = match named {
        Some(ids) => Ok(ids),
        None => ctx.ssm.command_nodes(scope, command_id).await,
    };
    let nodes = match listed {
        Ok(nodes) => nodes,
        // The run's final status is written only once every child exists.
        Err(source) if finished => {
            return Err(Error::ListNodes {
                command_id: command_id.to_string(),
                source,
            })
        }
        Err(error) => {
            warn!(%error, "could not list the command's nodes; children follow later");
            ctx.memo(&uid, |m| m.children = Some((command_id.to_string(), known)));
            return Ok(());
        }
    };
    for node in nodes {
        if known.contains(&node) {
            continue;
        }
        let child = children::child(object, command_id, &node);
        let name = child.name_any();
        match ctx.writer.create_child(&child).await {
            Ok(()) => info!(child = %name, "child CommandInvocation created"),
            Err(Error::CreateChild {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 => {
                // Ours from an earlier attempt, or someone else's (a child of a deleted
                // Command of the same name not yet collected): only ours counts.
                let existing = api
                    .get_opt(&name)
                    .await
                    .map_err(|source| Error::ReadChild {
                        name: name.clone(),
                        source,
                    })?;
                let ours = existing.is_some_and(|c| {
                    c.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && o.uid == uid)
                });
                if !ours {
                    warn!(child = %name, "a CommandInvocation of that name belongs to something else; trying again later");
                    continue;
                }
            }
            Err(Error::CreateChild {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 403 => {
                // Sending was turned off (the chart drops create on commandinvocations):
                // the status goes on without this child.
                warn!(child = %name, message = %status.message, "may not create the child");
                continue;
            }
            Err(error) => return Err(error),
        }
        known.insert(node);
    }
    ctx.memo(&uid, |m| m.children = Some((command_id.to_string(), known)));
    Ok(())
}

/// The nodes of `command_id` that already have a child; children of any other run are
/// deleted (a new generation's run replaces the old one's).
pub(super) async fn existing_children(
    object: &Command,
    ctx: &Context,
    api: &Api<CommandInvocation>,
    command_id: &str,
) -> Result<HashSet<String>, Error> {
    let selector = format!(
        "{COMMAND_LABEL}={}",
        children::label_value(&object.name_any())
    );
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListChildren {
            selector: selector.clone(),
            source,
        })?;
    let uid = object.uid().unwrap_or_default();
    let namespace = object.namespace().unwrap_or_default();
    let mut nodes = HashSet::new();
    for child in listed {
        let ours = child.owner_references().iter().any(|o| o.uid == uid);
        if !ours {
            continue;
        }
        if child.spec.command_id == command_id {
            nodes.insert(child.spec.instance_id.clone());
        } else {
            let name = child.name_any();
            ctx.writer.delete_child(&namespace, &name).await?;
            info!(child = %name, "child of an earlier run deleted");
        }
    }
    Ok(nodes)
}
