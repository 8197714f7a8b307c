//! The Team reconciler: render the desired objects, apply them, mirror the quota into status.
//!
//! Level-triggered and idempotent: every run applies the complete desired state with one field
//! manager, so a controller killed at any point converges on its next run.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::render::{self, TEAM_LABEL, TeamSettings};
use crate::api::{Team, TeamStatus, Workspace};
use crate::cache::{self, apply_if_changed, delete_if_present, watch_labelled};
use crate::metrics::{Backoff, Metrics};
use crate::{Error, FIELD_MANAGER, Result, conditions};

/// What the Team reconciler needs.
struct Context {
    client: Client,
    settings: TeamSettings,
    metrics: Metrics,
    /// Publishes Events on Teams (shown by `kubectl describe team`).
    recorder: Recorder,
    /// Consecutive failures per Team, for the backoff.
    failures: Backoff,
    children: Children,
}

/// The watched copies of what Teams own (label [`TEAM_LABEL`]).
struct Children {
    namespaces: Store<Namespace>,
    quotas: Store<ResourceQuota>,
    limit_ranges: Store<LimitRange>,
    service_accounts: Store<ServiceAccount>,
    network_policies: Store<NetworkPolicy>,
    roles: Store<Role>,
    role_bindings: Store<RoleBinding>,
}

impl Children {
    /// Reconciles read from the copies, so they wait until every watch has listed once.
    async fn ready(&self) -> Result<()> {
        tokio::try_join!(
            cache::ready(&self.namespaces),
            cache::ready(&self.quotas),
            cache::ready(&self.limit_ranges),
            cache::ready(&self.service_accounts),
            cache::ready(&self.network_policies),
            cache::ready(&self.roles),
            cache::ready(&self.role_bindings),
        )
        .map(drop)
        .map_err(|_| Error::Shutdown)
    }
}

/// How long the Team controller waits for a burst of changes to a team to end before reconciling.
const TEAM_DEBOUNCE: Duration = Duration::from_secs(1);

/// Label value of this controller's metrics.
const CONTROLLER: &str = "team";

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Reconciles one Team, recording how long it took.
#[tracing::instrument(skip_all, fields(team = %team.name_any()))]
async fn reconcile(team: Arc<Team>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = reconcile_team(&team, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&team.name_any());
    }
    result
}

async fn reconcile_team(team: &Team, ctx: &Context) -> Result<Action> {
    if team.meta().deletion_timestamp.is_some() {
        // Owner references take the namespace and everything in it away.
        return Ok(Action::await_change());
    }
    ctx.children.ready().await?;
    let client = &ctx.client;
    let children = &ctx.children;
    let now = now();
    let ns_name = render::namespace_name(&team.name_any());

    apply_if_changed(client, &children.namespaces, &render::render_namespace(team)).await?;
    let quota = apply_if_changed(client, &children.quotas, &render::render_resource_quota(team)).await?;
    apply_if_changed(client, &children.limit_ranges, &render::render_limit_range(team)).await?;
    apply_if_changed(client, &children.service_accounts, &render::render_workspace_service_account(team)).await?;
    let policies = render::render_network_policies(team, &ctx.settings);
    for policy in &policies {
        apply_if_changed(client, &children.network_policies, policy).await?;
    }
    delete_stale_network_policies(client, &children.network_policies, &ns_name, &policies).await?;
    for role in render::ROLES {
        apply_if_changed(client, &children.roles, &render::render_role(team, role)).await?;
        apply_if_changed(client, &children.role_bindings, &render::render_role_binding(team, role, &now)).await?;
    }
    stop_workspaces_of_expired_members(client, team, &ns_name, &now).await?;

    let ready = ready_condition(team, &quota, &now);
    publish_transition(ctx, team, &ready).await;
    let status = TeamStatus {
        namespace: Some(ns_name),
        quota_hard: quota.status.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default(),
        quota_used: quota.status.as_ref().and_then(|s| s.used.clone()).unwrap_or_default(),
        observed_generation: team.meta().generation,
        conditions: vec![ready.clone()],
    };
    if team.status.as_ref() == Some(&status) {
        return Ok(next_look(team, &now));
    }
    let teams: Api<Team> = Api::all(client.clone());
    teams
        .patch_status(
            &team.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(json!({ "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "status": status })),
        )
        .await
        .map_err(|source| Error::Apply { kind: "Team status".into(), name: team.name_any(), source })?;
    Ok(next_look(team, &now))
}

/// Look again when the next member's access ends.
fn next_look(team: &Team, now: &Time) -> Action {
    match render::next_expiry(team, now) {
        Some(t) => Action::requeue(t.0.duration_since(now.0).unsigned_abs().min(Duration::from_secs(3600))),
        None => Action::await_change(),
    }
}

fn ready_condition(team: &Team, quota: &ResourceQuota, now: &Time) -> Condition {
    let previous = team.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let uncounted = render::uncounted_quota_resources(quota);
    let (ready, reason, message) = if uncounted.is_empty() {
        (true, "Reconciled", "namespace, quota, limits, network policies and RBAC are in place".to_string())
    } else {
        // Until the quota controller has counted a resource, admission refuses to create it.
        (false, "QuotaPending", format!("waiting for the quota controller to count {}", uncounted.join(", ")))
    };
    conditions::condition(previous, "Ready", ready, reason, message, team.meta().generation, now)
}

/// Publishes an Event when the Ready condition changes (not on every reconcile), so
/// `kubectl describe team` tells the story: QuotaPending, then Reconciled.
async fn publish_transition(ctx: &Context, team: &Team, ready: &Condition) {
    let previous = team.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    if previous.is_some_and(|p| p.status == ready.status && p.reason == ready.reason) {
        return;
    }
    let event = Event {
        type_: if ready.status == "True" { EventType::Normal } else { EventType::Warning },
        reason: ready.reason.clone(),
        note: Some(ready.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &team.object_ref(&())).await {
        tracing::warn!(%error, "publishing an event failed");
    }
}

/// The egress policy exists only while the team has an allow-list.
async fn delete_stale_network_policies(
    client: &Client,
    cache: &Store<NetworkPolicy>,
    ns: &str,
    wanted: &[NetworkPolicy],
) -> Result<()> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let present = cache.state_filter(|p| p.namespace().as_deref() == Some(ns));
    for policy in present {
        let name = policy.name_any();
        if !wanted.iter().any(|w| w.metadata.name.as_deref() == Some(&name)) {
            delete_if_present(&api, &name).await?;
        }
    }
    Ok(())
}

/// A member whose access has ended keeps their workspaces (and home volumes) but not running ones.
async fn stop_workspaces_of_expired_members(client: &Client, team: &Team, ns: &str, now: &Time) -> Result<()> {
    let expired: Vec<&str> = team
        .spec
        .members
        .iter()
        .filter(|m| m.expires_at.as_ref().is_some_and(|t| t.0 <= now.0))
        .map(|m| m.user.as_str())
        .collect();
    if expired.is_empty() {
        return Ok(());
    }
    let api: Api<Workspace> = Api::namespaced(client.clone(), ns);
    for ws in api.list(&ListParams::default()).await.map_err(Error::List)? {
        if ws.spec.running && expired.contains(&ws.spec.owner.as_str()) {
            let name = ws.name_any();
            api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "running": false } })))
                .await
                .map_err(|source| Error::Apply { kind: "Workspace".into(), name, source })?;
        }
    }
    Ok(())
}

/// Bounded backoff for transient failures.
fn error_policy(team: Arc<Team>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.category());
    let (failures, delay) = ctx.failures.failed(team.name_any());
    tracing::warn!(team = %team.name_any(), %error, failures, retry_in = ?delay, "team reconcile failed");
    Action::requeue(delay)
}

/// Runs the Team controller until the process is told to stop.
pub async fn run(client: Client, settings: TeamSettings, metrics: Metrics) {
    let by_team_label = |obj: &dyn ResourceLabels| obj.team_label().map(ObjectRef::<Team>::new);
    let (namespaces, namespace_changes) = watch_labelled(&client, TEAM_LABEL);
    let (quotas, quota_changes) = watch_labelled(&client, TEAM_LABEL);
    let (limit_ranges, limit_range_changes) = watch_labelled(&client, TEAM_LABEL);
    let (service_accounts, service_account_changes) = watch_labelled(&client, TEAM_LABEL);
    let (network_policies, network_policy_changes) = watch_labelled(&client, TEAM_LABEL);
    let (roles, role_changes) = watch_labelled(&client, TEAM_LABEL);
    let (role_bindings, role_binding_changes) = watch_labelled(&client, TEAM_LABEL);
    let children =
        Children { namespaces, quotas, limit_ranges, service_accounts, network_policies, roles, role_bindings };
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        metrics,
        recorder,
        failures: Backoff::default(),
        children,
    });
    // Every pod that starts or stops changes the team's quota usage, which the Team mirrors in
    // its status. Debouncing turns a burst of such changes into one reconcile and one write.
    let config = kube::runtime::controller::Config::default().debounce(TEAM_DEBOUNCE);
    Controller::new(Api::<Team>::all(client), watcher::Config::default())
        .with_config(config)
        .watches_stream(namespace_changes, move |o: Namespace| by_team_label(&o))
        .watches_stream(quota_changes, move |o: ResourceQuota| by_team_label(&o))
        .watches_stream(limit_range_changes, move |o: LimitRange| by_team_label(&o))
        .watches_stream(service_account_changes, move |o: ServiceAccount| by_team_label(&o))
        .watches_stream(network_policy_changes, move |o: NetworkPolicy| by_team_label(&o))
        .watches_stream(role_changes, move |o: Role| by_team_label(&o))
        .watches_stream(role_binding_changes, move |o: RoleBinding| by_team_label(&o))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "team controller event");
            }
        })
        .await;
}

/// Reads the `deskpod.io/team` label of any object.
trait ResourceLabels {
    fn team_label(&self) -> Option<&str>;
}
impl<K: Resource> ResourceLabels for K {
    fn team_label(&self) -> Option<&str> {
        self.meta().labels.as_ref()?.get(TEAM_LABEL).map(String::as_str)
    }
}
