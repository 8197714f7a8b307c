//! Server-side apply with the controller's one field manager: the only way reconcilers write the
//! objects they own, so repeated runs converge instead of piling up changes.

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FIELD_MANAGER, Result};

/// Applies a rendered namespaced object (it carries its namespace and name).
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let ns = obj.meta().namespace.as_deref().expect("rendered namespaced objects carry their namespace");
    let name = obj.meta().name.as_deref().expect("rendered objects are named");
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await.map_err(|source| {
        Error::Apply { kind: K::kind(&Default::default()).into_owned(), name: name.to_string(), source }
    })
}
