//! The Cluster reconciler: connect to each member with the kubeconfig in its Secret, install
//! Deskpod's namespaced CRDs there, start its Workspace and CiAgent controllers, and probe its
//! API server every [`ClusterSettings::probe_interval`].
//!
//! Level-triggered: every run (a change of the Cluster or its Secret, or the next probe) looks at
//! what the registry holds and fixes what differs. The status is written only when something in
//! it other than the probe time changed, so a healthy member costs one `/version` request per
//! interval and no writes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::json;

use super::connect;
use super::registry::{Member, Members};
use crate::api::{CiAgent, Cluster, ClusterStatus, Workspace};
use crate::metrics::{Backoff, Metrics};
use crate::{Error, FIELD_MANAGER, Result, conditions};

/// Label value of this controller's metrics.
const CONTROLLER: &str = "cluster";

/// Starts what runs against one member (its Workspace and CiAgent controllers), given the
/// member's name and client; the future runs until aborted.
pub type MemberControllers = Arc<dyn Fn(String, Client) -> BoxFuture<'static, ()> + Send + Sync>;

/// How member clusters are reached and watched.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The namespace holding the members' kubeconfig Secrets; the only one whose Secrets the
    /// Cluster controller reads.
    pub secret_namespace: String,
    /// How often each member's API server is probed.
    pub probe_interval: Duration,
    /// How long a probe (and installing the CRDs) may take before the member counts as down.
    pub probe_timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            secret_namespace: "deskpod-system".into(),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
        }
    }
}

struct Context {
    client: Client,
    settings: ClusterSettings,
    members: Members,
    start: MemberControllers,
    secrets: Store<Secret>,
    metrics: Metrics,
    failures: Backoff,
}

/// What a look at a member found.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// `None`: the member answered; else a condition reason and message.
    pub problem: Option<(&'static str, String)>,
    /// The member's version, when it answered now or before.
    pub version: Option<String>,
}

/// The status a probe leads to. The probe time moves only when something else changed, so an
/// unchanged status is not written.
pub fn cluster_status(cluster: &Cluster, probe: &Probe, now: &Time) -> ClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let (ready, reason, message) = match &probe.problem {
        None => (true, "Reachable", "the API server answers and has Deskpod's CRDs".to_string()),
        Some((reason, message)) => (false, *reason, message.clone()),
    };
    let generation = cluster.meta().generation;
    let ready = conditions::condition(&previous.conditions, "Ready", ready, reason, message, generation, now);
    let mut status = ClusterStatus {
        conditions: vec![ready],
        kubernetes_version: probe.version.clone().or(previous.kubernetes_version.clone()),
        last_probe_time: previous.last_probe_time.clone(),
        observed_generation: generation,
    };
    if status != previous {
        status.last_probe_time = Some(now.clone());
    }
    status
}

fn fingerprint(kubeconfig: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    kubeconfig.hash(&mut hasher);
    hasher.finish()
}

#[tracing::instrument(skip_all, fields(cluster = %cluster.name_any()))]
async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_cluster(&cluster, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&cluster.name_any());
    }
    result
}

async fn reconcile_cluster(cluster: &Cluster, ctx: &Context) -> Result<Action> {
    let name = cluster.name_any();
    if cluster.meta().deletion_timestamp.is_some() {
        ctx.members.remove(&name);
        return Ok(Action::await_change());
    }
    let probe = match connect(cluster, ctx).await {
        Ok(member) => probe(member, ctx).await,
        Err(problem) => {
            ctx.members.remove(&name);
            Probe { problem: Some(problem), version: None }
        }
    };
    if let Some(member) = ctx.members.get(&name) {
        ctx.members.record_probe(&member, probe.problem.clone(), probe.version.clone());
    }
    let status = cluster_status(cluster, &probe, &Time(k8s_openapi::jiff::Timestamp::now()));
    if cluster.status.as_ref() != Some(&status) {
        Api::<Cluster>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(json!({ "apiVersion": "deskpod.io/v1alpha1", "kind": "Cluster", "status": status })),
            )
            .await
            .map_err(|source| Error::Apply { kind: "Cluster status".into(), name: name.clone(), source })?;
    }
    Ok(Action::requeue(ctx.settings.probe_interval))
}

/// The registered member for this Cluster, connected anew when its kubeconfig changed.
async fn connect(cluster: &Cluster, ctx: &Context) -> std::result::Result<Arc<Member>, (&'static str, String)> {
    let name = cluster.name_any();
    let reference = &cluster.spec.kubeconfig_secret;
    let ns = &ctx.settings.secret_namespace;
    let Some(secret) = ctx.secrets.get(&ObjectRef::new(&reference.name).within(ns)) else {
        return Err(("SecretNotFound", format!("no Secret {ns}/{} (see spec.kubeconfigSecret)", reference.name)));
    };
    let Some(data) = secret.data.as_ref().and_then(|d| d.get(&reference.key)) else {
        return Err(("InvalidKubeconfig", format!("Secret {ns}/{} has no key {:?}", reference.name, reference.key)));
    };
    let fingerprint = fingerprint(&data.0);
    if let Some(member) = ctx.members.get(&name)
        && member.fingerprint == fingerprint
    {
        return Ok(member);
    }
    let text = std::str::from_utf8(&data.0).map_err(|_| ("InvalidKubeconfig", "the kubeconfig is not UTF-8".into()))?;
    let client = connect::client_from_kubeconfig(text).await.map_err(|message| ("InvalidKubeconfig", message))?;
    tracing::info!(cluster = %name, "connected to a member cluster");
    Ok(ctx.members.insert(&name, client, fingerprint))
}

/// Asks the member's API server for its version; on the first answer (and the first after an
/// outage) installs the CRDs and starts the member's controllers.
async fn probe(member: Arc<Member>, ctx: &Context) -> Probe {
    let timeout = ctx.settings.probe_timeout;
    let version = match tokio::time::timeout(timeout, member.client.apiserver_version()).await {
        Ok(Ok(info)) => info.git_version,
        Ok(Err(error)) => {
            return Probe { problem: Some(("Unreachable", format!("probing /version: {error}"))), version: None };
        }
        Err(_) => {
            let message = format!("the API server did not answer /version within {timeout:?}");
            return Probe { problem: Some(("Unreachable", message)), version: None };
        }
    };
    let member = if member.problem().is_some_and(|(reason, _)| reason == "Unreachable") {
        // Back after an outage. A restarted API server has forgotten the resource versions the
        // watches would resume from, and each watch would find that out only after its backoff
        // (up to 30 s, grown during the outage). Everything on the member is watched anew instead:
        // a fresh connection entry whose controllers list from scratch.
        tracing::info!(cluster = %member.name, "member answers again: watching it anew");
        ctx.members.insert(&member.name, member.client.clone(), member.fingerprint)
    } else {
        member
    };
    let started = member.state.lock().expect("member state").controllers.is_some();
    if !started {
        match tokio::time::timeout(timeout * 3, install_crds(&member.client)).await {
            Ok(Ok(())) => {
                let task = tokio::spawn((ctx.start)(member.name.clone(), member.client.clone()));
                member.state.lock().expect("member state").controllers = Some(task);
                tracing::info!(cluster = %member.name, %version, "member ready: CRDs installed, controllers started");
            }
            Ok(Err(error)) => {
                return Probe { problem: Some(("CRDInstallFailed", error.to_string())), version: Some(version) };
            }
            Err(_) => {
                let message = "installing the CRDs took too long".to_string();
                return Probe { problem: Some(("CRDInstallFailed", message)), version: Some(version) };
            }
        }
    }
    Probe { problem: None, version: Some(version) }
}

/// Server-side applies the CRDs whose objects live on a member (Workspace, CiAgent), so a member
/// needs nothing installed beforehand and gets the controller's schema when it is upgraded.
async fn install_crds(client: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Workspace::crd(), CiAgent::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .map_err(|source| Error::Apply { kind: "CustomResourceDefinition".into(), name, source })?;
    }
    Ok(())
}

fn error_policy(cluster: Arc<Cluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    let (failures, delay) = ctx.failures.failed(cluster.name_any());
    tracing::warn!(cluster = %cluster.name_any(), %error, failures, retry_in = ?delay, "cluster reconcile failed");
    Action::requeue(delay.min(ctx.settings.probe_interval))
}

/// Runs the Cluster controller until the process is told to stop. `start` runs the controllers
/// of one member; `members` is shared with the Team controller.
pub async fn run(
    client: Client,
    settings: ClusterSettings,
    members: Members,
    start: MemberControllers,
    metrics: Metrics,
) {
    let (secrets, writer) = reflector::store();
    let secret_changes =
        watcher(Api::<Secret>::namespaced(client.clone(), &settings.secret_namespace), Default::default())
            .default_backoff()
            .modify(|s: &mut Secret| s.metadata.managed_fields = None)
            .reflect(writer)
            .touched_objects();
    let controller = Controller::new(Api::<Cluster>::all(client.clone()), watcher::Config::default());
    let clusters = controller.store();
    // A Secret's change concerns the Clusters that name it.
    let naming = {
        let clusters = clusters.clone();
        move |secret: Secret| {
            let name = secret.name_any();
            clusters
                .state()
                .into_iter()
                .filter(|c| c.spec.kubeconfig_secret.name == name)
                .map(|c| ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        }
    };
    // A deleted Cluster is never reconciled again: its connection is dropped here.
    let sweep = {
        let members = members.clone();
        let interval = settings.probe_interval;
        async move {
            loop {
                tokio::time::sleep(interval).await;
                if clusters.wait_until_ready().await.is_err() {
                    return;
                }
                for name in members.names() {
                    if clusters.get(&ObjectRef::new(&name)).is_none() {
                        tracing::info!(cluster = %name, "Cluster deleted: disconnecting");
                        members.remove(&name);
                    }
                }
            }
        }
    };
    let sweeper = tokio::spawn(sweep);
    let ctx = Arc::new(Context { client, settings, members, start, secrets, metrics, failures: Backoff::default() });
    controller
        .watches_stream(secret_changes, naming)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "cluster controller event");
            }
        })
        .await;
    sweeper.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClusterSpec, KubeconfigSecretRef};

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn cluster(status: Option<ClusterStatus>) -> Cluster {
        let mut c = Cluster::new(
            "east",
            ClusterSpec { kubeconfig_secret: KubeconfigSecretRef { name: "east".into(), key: "kubeconfig".into() } },
        );
        c.metadata.generation = Some(1);
        c.status = status;
        c
    }

    #[test]
    fn an_unchanged_probe_changes_nothing_to_write() {
        let up = Probe { problem: None, version: Some("v1.37.2".into()) };
        let first = cluster_status(&cluster(None), &up, &at("2026-11-24T03:00:00Z"));
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(first.last_probe_time, Some(at("2026-11-24T03:00:00Z")));
        let again = cluster_status(&cluster(Some(first.clone())), &up, &at("2026-11-24T03:00:05Z"));
        assert_eq!(again, first, "same probe, same status: nothing is written");
    }

    #[test]
    fn a_member_that_stops_answering_keeps_its_last_version() {
        let up = Probe { problem: None, version: Some("v1.37.2".into()) };
        let before = cluster_status(&cluster(None), &up, &at("2026-11-24T03:00:00Z"));
        let down = Probe { problem: Some(("Unreachable", "connection refused".into())), version: None };
        let after = cluster_status(&cluster(Some(before)), &down, &at("2026-11-24T03:00:05Z"));
        let ready = &after.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Unreachable"));
        assert_eq!(ready.last_transition_time, at("2026-11-24T03:00:05Z"));
        assert_eq!(after.kubernetes_version.as_deref(), Some("v1.37.2"));
        assert_eq!(after.last_probe_time, Some(at("2026-11-24T03:00:05Z")));
    }
}
