//! Watched copies of the objects the controllers own, and writes that happen only when the
//! object differs from what is wanted.
//!
//! Every child kind is watched once (label-filtered), kept in a reflector [`Store`] and used both
//! to trigger reconciles and to read from. A reconcile then compares each rendered object with its
//! cached copy and applies only when something the controller sets differs ([`is_subset`]). A
//! converged workspace costs no API write at all, and a reconcile storm (every pod change touches
//! the team's quota) costs reads from memory, not writes to the API server.

use std::sync::Arc;

use futures::Stream;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::quantity;
use crate::{Error, FIELD_MANAGER, Result};

/// Watches the objects of one kind carrying `label` in all namespaces: the store to read them from
/// and the stream of changed objects to trigger reconciles with. The stream must be polled (hand
/// it to a `Controller`) for the store to fill.
pub fn watch_labelled<K>(client: &Client, label: &str) -> (Store<K>, impl Stream<Item = watcher::Result<K>> + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
{
    watch(client, watcher::Config::default().labels(label))
}

/// Watches every object of one kind, like [`watch_labelled`].
pub fn watch_all<K>(client: &Client) -> (Store<K>, impl Stream<Item = watcher::Result<K>> + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
{
    watch(client, watcher::Config::default())
}

/// Managed fields are dropped from the copies: they are the largest part of most objects and the
/// controller never reads them.
fn watch<K>(client: &Client, config: watcher::Config) -> (Store<K>, impl Stream<Item = watcher::Result<K>> + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// The cached copy of the object a rendered one names.
pub fn cached<K>(store: &Store<K>, desired: &K) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let name = desired.meta().name.as_deref().expect("rendered objects are named");
    let mut key = ObjectRef::new(name);
    if let Some(ns) = desired.meta().namespace.as_deref() {
        key = key.within(ns);
    }
    store.get(&key)
}

/// Applies `desired` (server-side apply, the controller's field manager) unless the cached copy
/// already has every field it sets. Returns the object as it now is.
pub async fn apply_if_changed<K>(client: &Client, store: &Store<K>, desired: &K) -> Result<Arc<K>>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::Scope: Scope,
{
    if let Some(current) = cached(store, desired)
        && is_subset(&to_value(desired), &to_value(&*current))
    {
        return Ok(current);
    }
    let name = desired.meta().name.as_deref().expect("rendered objects are named");
    let api = K::Scope::api::<K>(client, desired.meta().namespace.as_deref());
    let applied = api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await;
    applied.map(Arc::new).map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name: name.to_string(),
        source,
    })
}

/// The API of a kind, for an object of it: in its namespace, or cluster-wide.
pub trait Scope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: &Client, namespace: Option<&str>) -> Api<K>;
}

impl Scope for k8s_openapi::NamespaceResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: &Client, namespace: Option<&str>) -> Api<K> {
        Api::namespaced(client.clone(), namespace.expect("rendered namespaced objects carry their namespace"))
    }
}

impl Scope for k8s_openapi::ClusterResourceScope {
    fn api<K: Resource<Scope = Self, DynamicType = ()>>(client: &Client, _: Option<&str>) -> Api<K> {
        Api::all(client.clone())
    }
}

/// Deletes the named object of `api`; one that is already gone is fine.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(Error::Delete { kind: K::kind(&()).into_owned(), name: name.into(), source }),
    }
}

fn to_value<K: Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("Kubernetes objects serialize to JSON")
}

/// Whether `actual` already has every field of `desired` with the same value.
///
/// Objects: each key of `desired` is in `actual` with a matching value (the API server and other
/// controllers add fields; those are not ours to compare); an empty list or map matches a missing
/// key. To have a field removed, render it empty rather than leaving it out. Arrays: same length, element by
/// element. Strings: equal, or equal as Kubernetes quantities (`0.5` is stored as `500m`).
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, w)| match have.get(key) {
            Some(h) => is_subset(w, h),
            // The API server drops empty lists and maps: an empty one is what is wanted.
            None => is_empty(w),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (Value::String(want), Value::String(have)) => want == have || same_quantity(want, have),
        (want, have) => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity::parse(a), quantity::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// How long one wait on a store's readiness lasts before the waiter registers again.
const READY_SLICE: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits until `store` has listed once (its watch has been polled through the first list).
///
/// Use this, never `Store::wait_until_ready` directly: kube-runtime 5 keeps one waiting task per
/// store (its oneshot receiver remembers the last waker), so of several reconciles waiting at
/// once on a store that is still listing, only the last one polled is woken and the others would
/// wait forever, their objects never reconciled. Waiting in slices registers every waiter again;
/// once the store is ready, this returns at once.
pub async fn ready<K>(store: &Store<K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        if let Ok(result) = tokio::time::timeout(READY_SLICE, store.wait_until_ready()).await {
            return result.map_err(|_| Error::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn every_waiter_sees_the_store_become_ready() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { ready(&store).await })
            })
            .collect();
        // Every waiter is waiting before the list completes (this test's runtime has one thread:
        // yielding lets each spawned waiter run up to its wait).
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(waiters.iter().all(|w| !w.is_finished()), "ready before the list");
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for waiter in waiters {
            let done = tokio::time::timeout(std::time::Duration::from_secs(2), waiter).await;
            assert!(matches!(done, Ok(Ok(Ok(())))), "a waiter was never woken: {done:?}");
        }
    }

    #[rstest]
    #[case::same(json!({"a": 1}), json!({"a": 1}), true)]
    #[case::server_added_fields(json!({"spec": {"x": "y"}}), json!({"spec": {"x": "y", "z": 1}, "status": {}}), true)]
    #[case::changed_value(json!({"spec": {"x": "y"}}), json!({"spec": {"x": "w"}}), false)]
    #[case::missing_key(json!({"spec": {"x": "y"}}), json!({"spec": {}}), false)]
    #[case::canonical_quantity(json!({"hard": {"cpu": "0.5"}}), json!({"hard": {"cpu": "500m"}}), true)]
    #[case::binary_quantity(json!({"storage": "1Gi"}), json!({"storage": "1073741824"}), true)]
    #[case::different_quantity(json!({"cpu": "1"}), json!({"cpu": "1100m"}), false)]
    #[case::words_are_not_quantities(json!({"mode": "Prefix"}), json!({"mode": "Exact"}), false)]
    #[case::list_defaults(
        json!({"ports": [{"name": "vnc", "port": 6901}]}),
        json!({"ports": [{"name": "vnc", "port": 6901, "protocol": "TCP", "targetPort": 6901}]}),
        true
    )]
    #[case::list_longer(json!({"l": [1]}), json!({"l": [1, 2]}), false)]
    #[case::list_order(json!({"l": [1, 2]}), json!({"l": [2, 1]}), false)]
    #[case::empty_list_matches_absent(json!({"ownerReferences": []}), json!({"name": "x"}), true)]
    #[case::empty_list_wants_removal(json!({"ownerReferences": []}), json!({"ownerReferences": [{"uid": "u"}]}), false)]
    #[case::label_removed(json!({"labels": {"a": "1", "b": "2"}}), json!({"labels": {"a": "1"}}), false)]
    fn subset(#[case] desired: Value, #[case] actual: Value, #[case] expected: bool) {
        assert_eq!(is_subset(&desired, &actual), expected);
    }
}
