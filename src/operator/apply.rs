//! Writes. Objects the operator owns wholly are written with server-side apply under one field
//! manager (`capturefleet-operator`); status likewise, and only when it differs from what is
//! stored, so a steady fleet costs no writes. The two exceptions are compare-and-swap patches
//! guarded by a `resourceVersion` test (claiming a warm spare) and the one-field patch that
//! asks a Pod to stop (`activeDeadlineSeconds`).

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::error::Error;
use super::labels::FIELD_MANAGER;

/// Server-side apply a whole object we own.
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.name_any();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(Error::kube(format!("apply {} {name}", K::kind(&Default::default()))))
}

/// Create an object (fails with 409 if it exists).
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.name_any();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.create(&params, object)
        .await
        .map_err(Error::kube(format!("create {} {name}", K::kind(&Default::default()))))
}

/// Server-side apply a custom resource's status (`{apiVersion, kind, status}`).
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
    S: Serialize,
{
    let dt = Default::default();
    let body = json!({ "apiVersion": K::api_version(&dt), "kind": K::kind(&dt), "status": status });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
        .await
        .map(|_| ())
        .map_err(Error::kube(format!("update status of {} {name}", K::kind(&dt))))
}

/// Add or remove a finalizer with server-side apply: the operator owns just its finalizer entry
/// (finalizers merge as a set), never anything a user wrote.
pub async fn set_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str, present: bool) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let dt = Default::default();
    let finalizers: Vec<&str> = if present { vec![finalizer] } else { vec![] };
    let body = json!({ "apiVersion": K::api_version(&dt), "kind": K::kind(&dt), "metadata": { "name": name, "finalizers": finalizers } });
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
        .await
        .map(|_| ())
        .map_err(Error::kube(format!(
            "{} finalizer on {} {name}",
            if present { "add" } else { "remove" },
            K::kind(&dt)
        )))
}

/// Delete an object, optionally only if it is still the one we looked at (uid precondition).
/// A 404 is success.
pub async fn delete<K>(api: &Api<K>, name: &str, uid: Option<String>, grace_seconds: Option<u32>) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut params = DeleteParams::background();
    params.preconditions = uid.map(|uid| Preconditions {
        uid: Some(uid),
        resource_version: None,
    });
    params.grace_period_seconds = grace_seconds;
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("delete {} {name}", K::kind(&Default::default())))(
            e,
        )),
    }
}

/// A JSON patch with a `resourceVersion` test first: applied only if nobody changed the object
/// since we read it (compare-and-swap). Returns Ok(false) when someone did.
pub async fn compare_and_swap<K>(
    api: &Api<K>,
    name: &str,
    resource_version: &str,
    ops: Vec<serde_json::Value>,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut all = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version})];
    all.extend(ops);
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(all)).map_err(|e| Error::Invalid(e.to_string()))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.patch(name, &params, &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 || s.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(format!("patch {} {name}", K::kind(&Default::default())))(e)),
    }
}

/// Escape a key for a JSON pointer.
pub fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
