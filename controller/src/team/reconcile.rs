//! The Team reconciler: render the desired objects, apply them, mirror the quota into status.
//!
//! Level-triggered and idempotent: every run applies the complete desired state with one field
//! manager, so a controller killed at any point converges on its next run.
//!
//! A team placed on a member cluster (`spec.placement.cluster`) gets the same objects on that
//! member, through the member's client and watched copies (see [`crate::cluster`]), without owner
//! references (the Team is on another cluster). While the member is unknown or does not answer,
//! the Team says so (Ready False, UnknownCluster or ClusterUnavailable) and is retried with
//! backoff and as soon as the member's health changes; other teams are not held up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::stream::BoxStream;
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
use crate::cluster::{Member, Members};
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
    /// The watched copies on the cluster the controller runs in.
    children: Arc<Children>,
    /// Member clusters, for placed teams.
    members: Members,
    /// The watched copies on each member (cluster name → the connection they were made for).
    member_children: Mutex<HashMap<String, MemberChildren>>,
    /// Reconciles the Team a changed object on a member belongs to.
    triggers: UnboundedSender<ObjectRef<Team>>,
}

/// What Teams own on one member, watched through one connection to it.
struct MemberChildren {
    epoch: u64,
    children: Arc<Children>,
    /// Feeds the member's changes to the controller; stopped when replaced.
    forward: tokio::task::JoinHandle<()>,
}

impl Drop for MemberChildren {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

impl Context {
    /// The watched copies on `member`, started on first use (and again after a reconnect).
    fn member_children(&self, member: &Member) -> Arc<Children> {
        let mut all = self.member_children.lock().expect("member children");
        if let Some(found) = all.get(&member.name)
            && found.epoch == member.epoch
        {
            return found.children.clone();
        }
        let (children, changes) = Children::watch(&member.client);
        let children = Arc::new(children);
        let triggers = self.triggers.clone();
        let forward = tokio::spawn(changes.for_each(move |team| {
            let _ = triggers.unbounded_send(team);
            futures::future::ready(())
        }));
        all.insert(member.name.clone(), MemberChildren { epoch: member.epoch, children: children.clone(), forward });
        children
    }
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
    /// Watches what Teams own on `client`'s cluster: the copies, and the Teams whose objects
    /// changed (the stream must be polled for the copies to fill).
    fn watch(client: &Client) -> (Children, BoxStream<'static, ObjectRef<Team>>) {
        let (namespaces, namespace_changes) = watch_labelled(client, TEAM_LABEL);
        let (quotas, quota_changes) = watch_labelled(client, TEAM_LABEL);
        let (limit_ranges, limit_range_changes) = watch_labelled(client, TEAM_LABEL);
        let (service_accounts, service_account_changes) = watch_labelled(client, TEAM_LABEL);
        let (network_policies, network_policy_changes) = watch_labelled(client, TEAM_LABEL);
        let (roles, role_changes) = watch_labelled(client, TEAM_LABEL);
        let (role_bindings, role_binding_changes) = watch_labelled(client, TEAM_LABEL);
        let changes = futures::stream::select_all([
            teams_of::<Namespace>(namespace_changes),
            teams_of::<ResourceQuota>(quota_changes),
            teams_of::<LimitRange>(limit_range_changes),
            teams_of::<ServiceAccount>(service_account_changes),
            teams_of::<NetworkPolicy>(network_policy_changes),
            teams_of::<Role>(role_changes),
            teams_of::<RoleBinding>(role_binding_changes),
        ]);
        let children =
            Children { namespaces, quotas, limit_ranges, service_accounts, network_policies, roles, role_bindings };
        (children, changes.boxed())
    }

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

/// The Teams (by their label) of changed objects of one kind.
fn teams_of<K: Resource + Send + 'static>(
    changes: impl futures::Stream<Item = watcher::Result<K>> + Send + 'static,
) -> BoxStream<'static, ObjectRef<Team>> {
    changes
        .filter_map(|change| {
            futures::future::ready(match change {
                Ok(obj) => obj.team_label().map(ObjectRef::new),
                Err(error) => {
                    tracing::debug!(%error, "team children watch");
                    None
                }
            })
        })
        .boxed()
}

/// How long the calls of one reconcile of a placed team may take on its member before the
/// member counts as unavailable for that team.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Where a team's objects go: the cluster the controller runs in, or the member it is placed on.
struct Target {
    client: Client,
    children: Arc<Children>,
    /// On a member: the Team cannot own what is made there.
    cluster: Option<String>,
}

/// The cluster a team's objects go to, when it can be reached.
async fn target(team: &Team, ctx: &Context) -> Result<Target> {
    let Some(placement) = &team.spec.placement else {
        ctx.children.ready().await?;
        return Ok(Target { client: ctx.client.clone(), children: ctx.children.clone(), cluster: None });
    };
    let cluster = placement.cluster.clone();
    let unavailable = |reason, message| Error::ClusterUnavailable { cluster: cluster.clone(), reason, message };
    let Some(member) = ctx.members.get(&cluster) else {
        let message = format!("no Cluster {cluster:?} is connected (kubectl get clusters.deskpod.io {cluster})");
        return Err(unavailable("UnknownCluster", message));
    };
    if let Some((_, why)) = member.problem() {
        return Err(unavailable("ClusterUnavailable", format!("cluster {cluster:?} is not available: {why}")));
    }
    let children = ctx.member_children(&member);
    // Several teams' reconciles wait here at once after a reconnect: cache::ready wakes them all.
    match tokio::time::timeout(MEMBER_TIMEOUT, children.ready()).await {
        Ok(ready) => ready?,
        Err(_) => {
            let message = format!("cluster {cluster:?}: the team's objects there could not be listed");
            return Err(unavailable("ClusterUnavailable", message));
        }
    }
    Ok(Target { client: member.client.clone(), children, cluster: Some(cluster) })
}

/// Finalizer of Teams placed on a member cluster. Their namespace there has no owner the member's
/// garbage collector knows, so the controller deletes it when the Team goes.
pub const MEMBER_CLEANUP_FINALIZER: &str = "deskpod.io/member-cleanup";

fn has_cleanup_finalizer(team: &Team) -> bool {
    team.finalizers().iter().any(|f| f == MEMBER_CLEANUP_FINALIZER)
}

/// Sets the Team's finalizers to `finalizers`, guarded by its resourceVersion (a concurrent
/// change makes this fail and the reconcile run again).
async fn set_finalizers(ctx: &Context, team: &Team, finalizers: Vec<String>) -> Result<()> {
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": team.resource_version() } });
    Api::<Team>::all(ctx.client.clone())
        .patch(&team.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| Error::Apply { kind: "Team finalizers".into(), name: team.name_any(), source })?;
    Ok(())
}

/// A placed Team is going: its namespace on the member goes first (the rest is in it). Until the
/// member can be reached the Team stays, so nothing is left behind there.
async fn clean_up_member(team: &Team, ctx: &Context) -> Result<Action> {
    let cluster = team
        .spec
        .placement
        .as_ref()
        .map(|p| p.cluster.clone())
        .or_else(|| team.status.as_ref().and_then(|s| s.cluster.clone()))
        .unwrap_or_default();
    let unavailable = |reason, message| Error::ClusterUnavailable { cluster: cluster.clone(), reason, message };
    let Some(member) = ctx.members.get(&cluster) else {
        let message = format!("cannot remove the team's namespace: no Cluster {cluster:?} is connected");
        return Err(unavailable("UnknownCluster", message));
    };
    if let Some((_, why)) = member.problem() {
        let message = format!("cannot remove the team's namespace: cluster {cluster:?} is not available: {why}");
        return Err(unavailable("ClusterUnavailable", message));
    }
    let namespaces: Api<Namespace> = Api::all(member.client.clone());
    let ns = render::namespace_name(&team.name_any());
    match tokio::time::timeout(MEMBER_TIMEOUT, delete_if_present(&namespaces, &ns)).await {
        Ok(deleted) => deleted?,
        Err(_) => return Err(unavailable("ClusterUnavailable", format!("deleting {ns} took over {MEMBER_TIMEOUT:?}"))),
    }
    tracing::info!(team = %team.name_any(), %cluster, namespace = %ns, "team deleted: its namespace on the member goes too");
    let rest = team.finalizers().iter().filter(|f| *f != MEMBER_CLEANUP_FINALIZER).cloned().collect();
    set_finalizers(ctx, team, rest).await?;
    Ok(Action::await_change())
}

async fn reconcile_team(team: &Team, ctx: &Context) -> Result<Action> {
    if team.meta().deletion_timestamp.is_some() {
        if has_cleanup_finalizer(team) {
            return clean_up_member(team, ctx).await;
        }
        // Owner references take the namespace and everything in it away.
        return Ok(Action::await_change());
    }
    let now = now();
    let applied = match target(team, ctx).await {
        Ok(target) => match &target.cluster {
            None => apply_team(team, &target, &ctx.settings, &now).await,
            Some(_) if !has_cleanup_finalizer(team) => {
                // Before anything is made on the member (a team placed on a cluster that never
                // connected can go without it). The update brings the Team back here.
                let mut finalizers = team.finalizers().to_vec();
                finalizers.push(MEMBER_CLEANUP_FINALIZER.into());
                set_finalizers(ctx, team, finalizers).await?;
                return Ok(Action::await_change());
            }
            Some(cluster) => tokio::time::timeout(MEMBER_TIMEOUT, apply_team(team, &target, &ctx.settings, &now))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::ClusterUnavailable {
                        cluster: cluster.clone(),
                        reason: "ClusterUnavailable",
                        message: format!("cluster {cluster:?} did not answer within {MEMBER_TIMEOUT:?}"),
                    })
                }),
        },
        Err(error) => Err(error),
    };
    let quota = match applied {
        Ok(quota) => quota,
        Err(Error::ClusterUnavailable { cluster, reason, message }) => {
            // Said on the Team, then retried with backoff (and when the member's health changes).
            let ready = conditions::condition(
                previous_conditions(team),
                "Ready",
                false,
                reason,
                message.clone(),
                team.meta().generation,
                &now,
            );
            publish_transition(ctx, team, &ready).await;
            let previous = team.status.clone().unwrap_or_default();
            let status = TeamStatus {
                namespace: Some(render::namespace_name(&team.name_any())),
                cluster: Some(cluster.clone()),
                observed_generation: team.meta().generation,
                conditions: vec![ready],
                ..previous
            };
            write_status(ctx, team, status).await?;
            return Err(Error::ClusterUnavailable { cluster, reason, message });
        }
        Err(error) => return Err(error),
    };

    let ready = ready_condition(team, &quota, &now);
    publish_transition(ctx, team, &ready).await;
    let status = TeamStatus {
        namespace: Some(render::namespace_name(&team.name_any())),
        cluster: team.spec.placement.as_ref().map(|p| p.cluster.clone()),
        quota_hard: quota.status.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default(),
        quota_used: quota.status.as_ref().and_then(|s| s.used.clone()).unwrap_or_default(),
        observed_generation: team.meta().generation,
        conditions: vec![ready.clone()],
    };
    write_status(ctx, team, status).await?;
    Ok(next_look(team, &now))
}

/// Applies everything a team stands for on its cluster; returns its ResourceQuota as it now is.
async fn apply_team(team: &Team, target: &Target, settings: &TeamSettings, now: &Time) -> Result<Arc<ResourceQuota>> {
    let client = &target.client;
    let children = &target.children;
    let placed = target.cluster.is_some();
    let ns_name = render::namespace_name(&team.name_any());

    apply_if_changed(client, &children.namespaces, &unowned_if(placed, render::render_namespace(team))).await?;
    let quota =
        apply_if_changed(client, &children.quotas, &unowned_if(placed, render::render_resource_quota(team))).await?;
    apply_if_changed(client, &children.limit_ranges, &unowned_if(placed, render::render_limit_range(team))).await?;
    let account = unowned_if(placed, render::render_workspace_service_account(team));
    apply_if_changed(client, &children.service_accounts, &account).await?;
    let policies: Vec<NetworkPolicy> =
        render::render_network_policies(team, settings).into_iter().map(|p| unowned_if(placed, p)).collect();
    for policy in &policies {
        apply_if_changed(client, &children.network_policies, policy).await?;
    }
    delete_stale_network_policies(client, &children.network_policies, &ns_name, &policies).await?;
    for role in render::ROLES {
        apply_if_changed(client, &children.roles, &unowned_if(placed, render::render_role(team, role))).await?;
        let binding = unowned_if(placed, render::render_role_binding(team, role, now));
        apply_if_changed(client, &children.role_bindings, &binding).await?;
    }
    stop_workspaces_of_expired_members(client, team, &ns_name, now).await?;
    Ok(quota)
}

/// Without owner references when the object goes to a member cluster: the Team is not there to
/// own it, and the garbage collector removes objects whose owner it cannot find.
fn unowned_if<K: Resource>(placed: bool, mut obj: K) -> K {
    if placed {
        obj.meta_mut().owner_references = None;
    }
    obj
}

fn previous_conditions(team: &Team) -> &[Condition] {
    team.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default()
}

/// Writes the Team's status when it changed.
async fn write_status(ctx: &Context, team: &Team, status: TeamStatus) -> Result<()> {
    if team.status.as_ref() == Some(&status) {
        return Ok(());
    }
    Api::<Team>::all(ctx.client.clone())
        .patch_status(
            &team.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(json!({ "apiVersion": "deskpod.io/v1alpha1", "kind": "Team", "status": status })),
        )
        .await
        .map_err(|source| Error::Apply { kind: "Team status".into(), name: team.name_any(), source })?;
    Ok(())
}

/// Look again when the next member's access ends.
fn next_look(team: &Team, now: &Time) -> Action {
    match render::next_expiry(team, now) {
        Some(t) => Action::requeue(t.0.duration_since(now.0).unsigned_abs().min(Duration::from_secs(3600))),
        None => Action::await_change(),
    }
}

fn ready_condition(team: &Team, quota: &ResourceQuota, now: &Time) -> Condition {
    let previous = previous_conditions(team);
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

/// Runs the Team controller until the process is told to stop. Teams placed on a member cluster
/// report UnknownCluster (see [`run_with_members`]).
pub async fn run(client: Client, settings: TeamSettings, metrics: Metrics) {
    run_with_members(client, settings, Members::default(), metrics).await
}

/// Runs the Team controller, placing teams on the member clusters of `members`.
pub async fn run_with_members(client: Client, settings: TeamSettings, members: Members, metrics: Metrics) {
    let (children, child_changes) = Children::watch(&client);
    let (triggers, member_changes) = unbounded();
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    // Every pod that starts or stops changes the team's quota usage, which the Team mirrors in
    // its status. Debouncing turns a burst of such changes into one reconcile and one write.
    let config = kube::runtime::controller::Config::default().debounce(TEAM_DEBOUNCE);
    let controller = Controller::new(Api::<Team>::all(client.clone()), watcher::Config::default()).with_config(config);
    // A member that comes, goes, fails or recovers concerns the teams placed on it.
    let teams = controller.store();
    let changed_clusters = members.subscribe();
    let ctx = Arc::new(Context {
        client,
        settings,
        metrics,
        recorder,
        failures: Backoff::default(),
        children: Arc::new(children),
        members,
        member_children: Mutex::default(),
        triggers,
    });
    let cluster_changes = {
        let ctx = ctx.clone();
        changed_clusters.flat_map(move |cluster| {
            if ctx.members.get(&cluster).is_none() {
                // Disconnected: its watches stop (dropping the entry aborts them).
                ctx.member_children.lock().expect("member children").remove(&cluster);
            }
            let placed = teams
                .state()
                .into_iter()
                .filter(|t| t.spec.placement.as_ref().is_some_and(|p| p.cluster == cluster))
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>();
            futures::stream::iter(placed)
        })
    };
    controller
        .reconcile_on(child_changes)
        .reconcile_on(member_changes)
        .reconcile_on(cluster_changes)
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
