//! CI agents on Kubernetes: a `CiAgent` object in the team's namespace per job, which
//! deskpod-controller queues and runs as a pod (see the controller's `agent` module). The portal
//! writes the object, reads its status, streams its pod's log and deletes it.
//!
//! Who submitted an agent is the annotation [`OWNER_ANNOTATION`] (and the owner-hash label, to
//! list one person's agents); the controller does not use either.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use deskpod_controller::api::{CiAgent, CiAgentStatus};
use deskpod_controller::workspace::render::{OWNER_HASH_LABEL, owner_hash};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, ObjectMeta, PostParams};

use super::agent::{AgentPhase, AgentView, LogStream, NewAgent};
use super::kubernetes::{KubernetesBackend, team_namespace};
use super::{BackendError, BackendResult};

/// Annotation on a CiAgent naming who submitted it.
pub const OWNER_ANNOTATION: &str = "deskpod.io/owner";
/// How often a log follower looks whether a queued agent's pod has started.
const LOG_WAIT_POLL: Duration = Duration::from_millis(200);
/// How long a log follower waits for a queued agent to start.
const LOG_WAIT_LIMIT: Duration = Duration::from_secs(24 * 3600);

fn unavailable(what: &str, error: kube::Error) -> BackendError {
    tracing::error!(%error, "Kubernetes API: {what} failed");
    BackendError::Unavailable(format!("the Kubernetes API failed while {what}"))
}

fn not_found(team: &str, name: &str) -> BackendError {
    BackendError::NotFound(format!("there is no CI agent {name} in team {team}"))
}

/// A CiAgent as the portal shows it.
pub fn agent_view(team: &str, agent: &CiAgent) -> AgentView {
    let status: CiAgentStatus = agent.status.clone().unwrap_or_default();
    let image = agent
        .spec
        .image
        .clone()
        .or_else(|| agent.spec.template.as_ref().map(|t| format!("template {t}")))
        .unwrap_or_else(|| "deskpod/ci-agent:latest".into());
    AgentView {
        team: team.to_owned(),
        name: agent.name_any(),
        owner: agent.annotations().get(OWNER_ANNOTATION).cloned().unwrap_or_default(),
        image,
        phase: status.phase,
        queue_position: status.queue_position.and_then(|p| u32::try_from(p).ok()),
        exit_code: status.exit_code,
        message: status.message,
        created_at: agent.metadata.creation_timestamp.as_ref().map(|t| t.0),
        started_at: status.started_at.map(|t| t.0),
        finished_at: status.finished_at.map(|t| t.0),
    }
}

impl KubernetesBackend {
    async fn agents_api(&self, team: &str) -> BackendResult<Api<CiAgent>> {
        Ok(Api::namespaced(self.team_client(team).await?, &team_namespace(team)))
    }

    pub(super) async fn submit_agent(&self, new: NewAgent) -> BackendResult<AgentView> {
        super::views::validate_workspace_name(&new.name)
            .map_err(|e| BackendError::Invalid(e.replace("workspace", "CI agent")))?;
        let mut agent = CiAgent::new(&new.name, new.spec);
        agent.metadata = ObjectMeta {
            name: Some(new.name.clone()),
            namespace: Some(team_namespace(&new.team)),
            labels: Some(BTreeMap::from([(OWNER_HASH_LABEL.to_owned(), owner_hash(&new.owner))])),
            annotations: Some(BTreeMap::from([(OWNER_ANNOTATION.to_owned(), new.owner.clone())])),
            ..ObjectMeta::default()
        };
        // The team's ResourceQuota counts CiAgents (its queue's length); a create at the same
        // moment as another one in the team can get a conflict about the quota: retried.
        let api = self.agents_api(&new.team).await?;
        let mut attempts = 1;
        let created = loop {
            match api.create(&PostParams::default(), &agent).await {
                Err(kube::Error::Api(status)) if status.is_conflict() && attempts < 5 => attempts += 1,
                result => break result,
            }
        };
        match created {
            Ok(created) => Ok(agent_view(&new.team, &created)),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Err(BackendError::Conflict(format!(
                "team {} already has a CI agent named {}; pick another name",
                new.team, new.name
            ))),
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                Err(BackendError::NotFound(format!("team {} does not exist (or its namespace is not ready)", new.team)))
            }
            Err(kube::Error::Api(status)) if status.is_invalid() || status.is_forbidden() => {
                Err(BackendError::Invalid(status.message))
            }
            Err(e) => Err(unavailable("submitting a CI agent", e)),
        }
    }

    pub(super) async fn list_agents(&self, team: &str) -> BackendResult<Vec<AgentView>> {
        let list = match self.agents_api(team).await?.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(status)) if status.is_not_found() => vec![],
            Err(e) => return Err(unavailable("listing CI agents", e)),
        };
        let mut views: Vec<AgentView> = list.iter().map(|a| agent_view(team, a)).collect();
        views.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
        Ok(views)
    }

    pub(super) async fn get_agent(&self, team: &str, name: &str) -> BackendResult<Option<CiAgent>> {
        if super::views::validate_workspace_name(name).is_err() {
            return Ok(None);
        }
        self.agents_api(team).await?.get_opt(name).await.map_err(|e| unavailable("reading a CI agent", e))
    }

    pub(super) async fn agent_log_stream(&self, team: &str, name: &str, follow: bool) -> BackendResult<LogStream> {
        let deadline = tokio::time::Instant::now() + LOG_WAIT_LIMIT;
        let pod = loop {
            let agent = self.get_agent(team, name).await?.ok_or_else(|| not_found(team, name))?;
            let status = agent.status.unwrap_or_default();
            let waiting = matches!(status.phase, AgentPhase::Queued | AgentPhase::Starting);
            match status.pod_name {
                Some(pod) if !waiting => break pod,
                _ if !follow || tokio::time::Instant::now() > deadline => {
                    return Ok(futures::stream::empty().boxed());
                }
                _ => tokio::time::sleep(LOG_WAIT_POLL).await,
            }
        };
        let params = LogParams { follow, ..LogParams::default() };
        let pods: Api<Pod> = Api::namespaced(self.team_client(team).await?, &team_namespace(team));
        let reader = match pods.log_stream(&pod, &params).await {
            Ok(reader) => reader,
            // The pod went with its finished agent's TTL, or never ran anywhere that keeps logs.
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 400 => {
                return Ok(futures::stream::empty().boxed());
            }
            Err(e) => return Err(unavailable("reading a CI agent's log", e)),
        };
        let lines = reader.lines().map(|line| match line {
            Ok(line) => Ok(Bytes::from(format!("{line}\n"))),
            Err(error) => Err(BackendError::Unavailable(format!("the CI agent's log broke off: {error}"))),
        });
        Ok(lines.boxed())
    }

    pub(super) async fn remove_agent(&self, team: &str, name: &str) -> BackendResult<()> {
        if super::views::validate_workspace_name(name).is_err() {
            return Err(not_found(team, name));
        }
        match self.agents_api(team).await?.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(not_found(team, name)),
            Err(e) => Err(unavailable("deleting a CI agent", e)),
        }
    }
}
