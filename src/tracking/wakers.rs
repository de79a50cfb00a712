//! Wake-ups for controllers' `reconcile_on`: one unbounded channel per controller, each
//! receiving the objects of the namespace it watches (or all, for a cluster-wide one).

use std::sync::{Mutex, PoisonError};

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use kube::Resource;
use tokio::sync::mpsc;

type Sender<K> = (Option<String>, mpsc::UnboundedSender<ObjectRef<K>>);

/// The controllers to wake for objects of kind `K`.
pub struct Wakers<K: Resource<DynamicType = ()>> {
    senders: Mutex<Vec<Sender<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for Wakers<K> {
    fn default() -> Self {
        Self {
            senders: Mutex::new(Vec::new()),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Wakers<K> {
    /// A new stream of the objects of `namespace` (`None`: all) to reconcile now.
    pub fn stream(&self, namespace: Option<String>) -> impl Stream<Item = ObjectRef<K>> + Send {
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((namespace, tx));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) })
    }

    /// Wakes `objects` in every controller that watches their namespace.
    pub fn wake(&self, objects: impl IntoIterator<Item = ObjectRef<K>>) {
        let senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        for object in objects {
            for (namespace, tx) in senders.iter() {
                if namespace.is_none() || *namespace == object.namespace {
                    let _ = tx.send(object.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CommandInvocation;
    use futures::{FutureExt, StreamExt};

    #[test]
    fn each_controller_gets_the_objects_of_its_namespace() {
        let wakers = Wakers::<CommandInvocation>::default();
        let mut ops = Box::pin(wakers.stream(Some("ops".into())));
        let mut all = Box::pin(wakers.stream(None));
        wakers.wake([
            ObjectRef::new("a").within("ops"),
            ObjectRef::new("b").within("dev"),
        ]);
        let next = |s: &mut std::pin::Pin<Box<_>>| {
            StreamExt::next(s)
                .now_or_never()
                .flatten()
                .map(|o: ObjectRef<CommandInvocation>| o.name)
        };
        assert_eq!(next(&mut ops).as_deref(), Some("a"));
        assert_eq!(next(&mut ops), None, "dev's object is not ops' business");
        assert_eq!(next(&mut all).as_deref(), Some("a"));
        assert_eq!(next(&mut all).as_deref(), Some("b"));
    }
}
