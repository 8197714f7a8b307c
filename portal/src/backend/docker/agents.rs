//! CI agents in single-host mode: each job a container `deskpod-<instance>-agent.<team>.<name>` on
//! the team's network, run to completion, its output kept as the container's log until the agent
//! is deleted or its TTL passes.
//!
//! **The queue.** A team runs at most `quota.ciAgents` agents at once (no limit when unset); the
//! others wait `Queued`, first come first served (the order they were recorded in), and hold
//! `quota.ciAgentQueue` places at most (a submission beyond that is refused, never failed later).
//! Whenever an agent of the team ends or is deleted, the next ones start at once. The decision
//! which agents start is made under the backend's admission lock, so the team never runs more than
//! its quota admits.
//!
//! **A job** runs the spec's image (or its template's) with `command` as the entry point and
//! `args`, as uid 1000 with no capabilities and no privilege escalation, with the spec's (or
//! template's) CPU and memory limits. Its exit code decides Succeeded (0) or Failed; past its
//! `deadline` (counted from the start) it is killed and TimedOut. A job whose container is lost
//! (the engine restarted) is Failed with that reason by the reconciler.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions};
use bytes::Bytes;
use deskpod_controller::api::{CiAgentSpec, Team};
use deskpod_controller::quantity;
use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;

use super::db::{AgentRow, AgentUpdate};
use super::{Inner, docker_failed, is_status, store_failed};
use crate::backend::agent::{AgentPhase, AgentView, LogStream, NewAgent, is_finished};
use crate::backend::views::validate_workspace_name;
use crate::backend::{BackendError, BackendResult};

/// CPU and memory of a job whose spec and template set none.
const DEFAULT_CPU: &str = "1";
const DEFAULT_MEMORY: &str = "1Gi";
/// How long a finished agent and its log are kept when its spec does not say.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// How often a log follower looks whether a queued agent has started.
const LOG_WAIT_POLL: Duration = Duration::from_millis(50);
/// The image a Jenkins inbound agent runs when the spec names none.
const CI_AGENT_IMAGE: &str = "deskpod/ci-agent:latest";

use AgentPhase::{Failed, Queued, Running, Starting, Succeeded, TimedOut};

/// The agent's container: the job as asked, unprivileged, limited, on the team's network, kept
/// after it exits (for its log and exit code).
pub fn agent_container(
    names: &super::container::Names,
    row: &AgentRow,
    cpu_milli: i128,
    memory_bytes: i128,
) -> Result<ContainerCreateBody, String> {
    let spec = &row.spec;
    let env = spec.env.iter().map(|var| format!("{}={}", var.name, var.value)).collect();
    Ok(ContainerCreateBody {
        image: Some(row.image.clone()),
        entrypoint: spec.command.clone(),
        cmd: if spec.command.is_some() || !spec.args.is_empty() { Some(spec.args.clone()) } else { None },
        env: Some(env),
        user: Some("1000:1000".into()),
        labels: Some(names.agent_labels(&row.team, &row.name)),
        host_config: Some(HostConfig {
            memory: Some(i64::try_from(memory_bytes).map_err(|_| "the memory limit is too large")?),
            memory_swap: Some(i64::try_from(memory_bytes).map_err(|_| "the memory limit is too large")?),
            nano_cpus: Some(i64::try_from(cpu_milli * 1_000_000).map_err(|_| "the CPU limit is too large")?),
            pids_limit: Some(super::container::PIDS_LIMIT),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            network_mode: Some(names.network(&row.team)),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    })
}

fn duration(raw: &Option<String>, what: &str) -> BackendResult<Option<Duration>> {
    raw.as_deref()
        .map(|raw| {
            deskpod_controller::duration::parse(raw)
                .map_err(|e| BackendError::Invalid(format!("the {what} {raw:?} is not a duration: {e}")))
        })
        .transpose()
}

/// The view of `row`, whose queue position among `queued` (the team's queued agents in order) is
/// its place there.
fn view(row: &AgentRow, queued: &[&AgentRow]) -> AgentView {
    let queue_position = (row.phase == Queued)
        .then(|| queued.iter().position(|q| q.name == row.name).map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX)))
        .flatten();
    let message = match (row.phase, queue_position) {
        (Queued, Some(position)) => Some(format!("waiting for team capacity: {position} in the team's queue")),
        _ => row.message.clone(),
    };
    AgentView {
        team: row.team.clone(),
        name: row.name.clone(),
        owner: row.owner.clone(),
        image: row.image.clone(),
        phase: row.phase,
        queue_position,
        exit_code: row.exit_code,
        message,
        created_at: Some(row.created_at),
        started_at: row.started_at,
        finished_at: row.finished_at,
    }
}

/// Views of a team's agents (in queue order) with their queue positions.
fn views(rows: &[AgentRow]) -> Vec<AgentView> {
    let queued: Vec<&AgentRow> = rows.iter().filter(|r| r.phase == Queued).collect();
    rows.iter().map(|row| view(row, &queued)).collect()
}

impl Inner {
    pub(super) async fn create_agent(self: &Arc<Self>, new: NewAgent) -> BackendResult<AgentView> {
        validate_workspace_name(&new.name).map_err(|e| BackendError::Invalid(e.replace("workspace", "CI agent")))?;
        let team = self
            .db
            .team(&new.team)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| BackendError::NotFound(format!("team {} does not exist", new.team)))?;
        let image = self.agent_image(&new.spec).await?;
        duration(&new.spec.deadline, "deadline")?;
        duration(&new.spec.ttl_after_finished, "ttlAfterFinished")?;
        self.agent_limits(&new.spec, &team).await?;
        let row = AgentRow {
            seq: 0,
            team: new.team.clone(),
            name: new.name.clone(),
            owner: new.owner.clone(),
            spec: new.spec,
            image,
            phase: Queued,
            exit_code: None,
            message: None,
            created_at: Timestamp::now(),
            started_at: None,
            finished_at: None,
        };
        {
            let _decision = self.admission.lock().await;
            let rows = self.db.agents(Some(&new.team)).await.map_err(store_failed)?;
            if rows.iter().any(|r| r.name == new.name) {
                return Err(BackendError::Conflict(format!(
                    "team {} already has a CI agent named {}; pick another name",
                    new.team, new.name
                )));
            }
            let waiting = rows.iter().filter(|r| r.phase == Queued).count();
            if let Some(places) = team.spec.quota.ci_agent_queue
                && waiting >= usize::try_from(places).unwrap_or(0)
            {
                return Err(BackendError::Invalid(format!(
                    "team {}'s CI queue is full ({waiting} agents wait, it holds {places}); try again when some have \
                     started, or ask an admin for a longer queue",
                    new.team
                )));
            }
            self.db.insert_agent(&row).await.map_err(store_failed)?;
        }
        self.schedule_agents(&new.team).await;
        let rows = self.db.agents(Some(&new.team)).await.map_err(store_failed)?;
        views(&rows)
            .into_iter()
            .find(|v| v.name == new.name)
            .ok_or_else(|| BackendError::NotFound(format!("the CI agent {} went away at once", new.name)))
    }

    /// The image an agent runs: its own, its template's, or the CI agent image for Jenkins.
    async fn agent_image(&self, spec: &CiAgentSpec) -> BackendResult<String> {
        if spec.jenkins.is_some() {
            return Err(BackendError::Invalid(format!(
                "Jenkins inbound mode reads its secret from a Kubernetes Secret; in single-host mode run {CI_AGENT_IMAGE} \
                 with the environment variables JENKINS_URL, JENKINS_SECRET and JENKINS_AGENT_NAME instead"
            )));
        }
        match (&spec.image, &spec.template) {
            (Some(image), None) if !image.trim().is_empty() => Ok(image.clone()),
            (None, Some(template)) => {
                let found = self.db.template(template).await.map_err(store_failed)?.ok_or_else(|| {
                    BackendError::Invalid(format!(
                        "template {template:?} does not exist; the catalog lists those that do"
                    ))
                })?;
                Ok(found.spec.image)
            }
            _ => Err(BackendError::Invalid("set exactly one of image or template".into())),
        }
    }

    /// The job's CPU (millicores) and memory (bytes): its own limits, else its requests, else
    /// Deskpod's defaults; never above the team's per-workload maximums.
    async fn agent_limits(&self, spec: &CiAgentSpec, team: &Team) -> BackendResult<(i128, i128)> {
        let own = spec.resources.clone().unwrap_or_default();
        let pick = |limit: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                    request: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                    default: &str,
                    what: &str| {
            let raw = limit.as_ref().or(request.as_ref()).map_or(default, |q| q.0.as_str());
            quantity::parse(raw).map(|m| m.0).map_err(|e| BackendError::Invalid(format!("{what}: {e}")))
        };
        let cpu = pick(&own.cpu_limit, &own.cpu_request, DEFAULT_CPU, "CPU")?;
        let memory = pick(&own.memory_limit, &own.memory_request, DEFAULT_MEMORY, "memory")? / 1000;
        let team_name = team.metadata.name.as_deref().unwrap_or_default();
        let over =
            |what: &str, max: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>, value: i128| match max
                .as_ref()
                .map(|m| (m, quantity::parse(&m.0)))
            {
                Some((max, Ok(limit))) if value > limit.0 => Err(BackendError::Invalid(format!(
                    "the job's {what} is above team {team_name}'s maximum of {}",
                    max.0
                ))),
                _ => Ok(()),
            };
        over("CPU", &team.spec.limits.max_cpu, cpu)?;
        over("memory", &team.spec.limits.max_memory, memory * 1000)?;
        Ok((cpu, memory))
    }

    pub(super) async fn agents(&self, team: &str) -> BackendResult<Vec<AgentView>> {
        let rows = self.db.agents(Some(team)).await.map_err(store_failed)?;
        Ok(views(&rows))
    }

    pub(super) async fn agent(&self, team: &str, name: &str) -> BackendResult<Option<AgentView>> {
        let rows = self.db.agents(Some(team)).await.map_err(store_failed)?;
        Ok(views(&rows).into_iter().find(|v| v.name == name))
    }

    /// Starts the team's queued agents the team has room for, oldest first.
    /// (A boxed future with a stated `Send`: starting an agent schedules again when it ends.)
    pub(super) fn schedule_agents<'a>(self: &'a Arc<Self>, team: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let starting = {
                let _decision = self.admission.lock().await;
                let (team_object, rows) = match (self.db.team(team).await, self.db.agents(Some(team)).await) {
                    (Ok(team_object), Ok(rows)) => (team_object, rows),
                    (Err(error), _) | (_, Err(error)) => {
                        return tracing::warn!(%team, %error, "scheduling CI agents: reading the database failed");
                    }
                };
                let limit = team_object.and_then(|t| t.spec.quota.ci_agents).map(|n| usize::try_from(n).unwrap_or(0));
                let running = rows.iter().filter(|r| matches!(r.phase, Starting | Running)).count();
                let room = limit.map_or(usize::MAX, |limit| limit.saturating_sub(running));
                let mut starting = Vec::new();
                for row in rows.into_iter().filter(|r| r.phase == Queued).take(room) {
                    match self.db.move_agent(team, &row.name, &[Queued], Starting, AgentUpdate::default()).await {
                        Ok(true) => starting.push(row),
                        Ok(false) => {}
                        Err(error) => tracing::warn!(%team, agent = %row.name, %error, "could not start a CI agent"),
                    }
                }
                starting
            };
            for row in starting {
                let inner = Arc::clone(self);
                tokio::spawn(async move { inner.run_agent(row).await });
            }
        })
    }

    /// Runs one agent's job to its end and records how it ended; then lets the next ones start.
    async fn run_agent(self: Arc<Self>, row: AgentRow) {
        let (team, name) = (row.team.clone(), row.name.clone());
        let key = (team.clone(), name.clone());
        self.job_waiters.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone());
        let ended = match self.start_agent_container(&row).await {
            Ok(container) => {
                let update = AgentUpdate { started_at: Some(Timestamp::now()), ..AgentUpdate::default() };
                match self.db.move_agent(&team, &name, &[Starting], Running, update).await {
                    Ok(true) => Some(self.wait_for_job(&row, &container).await),
                    // Deleted meanwhile: its container goes with it.
                    _ => None,
                }
            }
            Err(error) => Some((Failed, AgentUpdate { message: Some(error.to_string()), ..AgentUpdate::default() })),
        };
        if let Some((phase, mut update)) = ended {
            update.finished_at = Some(Timestamp::now());
            if let Err(error) = self.db.move_agent(&team, &name, &[Starting, Running], phase, update).await {
                tracing::warn!(%team, agent = %name, %error, "could not record how a CI agent ended");
            }
        }
        self.job_waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        self.agent_changed.notify_waiters();
        self.schedule_agents(&team).await;
    }

    async fn start_agent_container(&self, row: &AgentRow) -> BackendResult<String> {
        let team = self
            .db
            .team(&row.team)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| BackendError::NotFound(format!("team {} does not exist", row.team)))?;
        let (cpu, memory) = self.agent_limits(&row.spec, &team).await?;
        self.ensure_network(&row.team).await?;
        let body = agent_container(&self.names, row, cpu, memory).map_err(BackendError::Invalid)?;
        let container = self.names.agent(&row.team, &row.name);
        let options = CreateContainerOptions { name: Some(container.clone()), ..CreateContainerOptions::default() };
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) if is_status(&e, 404) => {
                return Err(BackendError::Invalid(format!("the image {} is not on this host", row.image)));
            }
            Err(e) => return Err(docker_failed("creating a CI agent's container", e)),
        }
        match self.docker.start_container(&container, None).await {
            Ok(()) => Ok(container),
            Err(e) if is_status(&e, 304) => Ok(container),
            Err(e) => Err(docker_failed("starting a CI agent's container", e)),
        }
    }

    /// Waits for the job's container to exit, or kills it at its deadline.
    async fn wait_for_job(&self, row: &AgentRow, container: &str) -> (AgentPhase, AgentUpdate) {
        let deadline = duration(&row.spec.deadline, "deadline").ok().flatten();
        let options = WaitContainerOptions { condition: "not-running".into() };
        let mut wait = self.docker.wait_container(container, Some(options));
        let exited = async {
            match wait.next().await {
                Some(Ok(response)) => Ok(response.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the engine stopped answering".to_owned()),
            }
        };
        let outcome = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, exited).await.ok(),
            None => Some(exited.await),
        };
        match outcome {
            None => {
                let _ = self
                    .docker
                    .kill_container(container, None::<bollard::query_parameters::KillContainerOptions>)
                    .await;
                let deadline = row.spec.deadline.clone().unwrap_or_default();
                (
                    TimedOut,
                    AgentUpdate {
                        message: Some(format!("stopped: ran past its deadline of {deadline}")),
                        ..AgentUpdate::default()
                    },
                )
            }
            Some(Ok(code)) => {
                let code = i32::try_from(code).unwrap_or(i32::MAX);
                let phase = if code == 0 { Succeeded } else { Failed };
                let message = (code != 0).then(|| format!("the job exited with code {code}"));
                (phase, AgentUpdate { exit_code: Some(code), message, ..AgentUpdate::default() })
            }
            Some(Err(error)) => {
                (Failed, AgentUpdate { message: Some(format!("lost the job: {error}")), ..AgentUpdate::default() })
            }
        }
    }

    pub(super) async fn agent_logs(self: &Arc<Self>, team: &str, name: &str, follow: bool) -> BackendResult<LogStream> {
        // A queued agent has no output yet: a follower waits for it to start.
        loop {
            let Some(row) = self.db.agent(team, name).await.map_err(store_failed)? else {
                return Err(BackendError::NotFound(format!("there is no CI agent {name} in team {team}")));
            };
            match row.phase {
                Queued | Starting if follow => {
                    let changed = self.agent_changed.notified();
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(LOG_WAIT_POLL) => {}
                    }
                }
                Queued | Starting => return Ok(futures::stream::empty().boxed()),
                _ => break,
            }
        }
        let options = LogsOptions { follow, stdout: true, stderr: true, ..LogsOptions::default() };
        let container = self.names.agent(team, name);
        let logs = self.docker.logs(&container, Some(options)).map(|chunk| match chunk {
            Ok(LogOutput::StdOut { message } | LogOutput::StdErr { message } | LogOutput::Console { message }) => {
                Ok(message)
            }
            Ok(LogOutput::StdIn { .. }) => Ok(Bytes::new()),
            Err(e) if is_status(&e, 404) => Ok(Bytes::new()),
            Err(e) => Err(docker_failed("reading a CI agent's log", e)),
        });
        Ok(logs.boxed())
    }

    pub(super) async fn delete_agent(self: &Arc<Self>, team: &str, name: &str) -> BackendResult<()> {
        if self.db.agent(team, name).await.map_err(store_failed)?.is_none() {
            return Err(BackendError::NotFound(format!("there is no CI agent {name} in team {team}")));
        }
        self.remove_agent_container(team, name).await?;
        self.db.remove_agent(team, name).await.map_err(store_failed)?;
        self.agent_changed.notify_waiters();
        self.schedule_agents(team).await;
        Ok(())
    }

    async fn remove_agent_container(&self, team: &str, name: &str) -> BackendResult<()> {
        let options = RemoveContainerOptions { force: true, ..RemoveContainerOptions::default() };
        match self.docker.remove_container(&self.names.agent(team, name), Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(docker_failed("removing a CI agent's container", e)),
        }
    }

    /// The reconciler's part for agents: a job whose container is gone is Failed, one nobody
    /// waits for (the portal restarted) is waited for again, finished agents past their TTL are
    /// removed, and queues move.
    pub(super) async fn reconcile_agents(self: &Arc<Self>) {
        let rows = match self.db.agents(None).await {
            Ok(rows) => rows,
            Err(error) => return tracing::warn!(%error, "reconciler: reading CI agents failed"),
        };
        let now = Timestamp::now();
        let mut teams = Vec::new();
        for row in rows {
            if !teams.contains(&row.team) {
                teams.push(row.team.clone());
            }
            if is_finished(row.phase) {
                let ttl = duration(&row.spec.ttl_after_finished, "ttl").ok().flatten().unwrap_or(DEFAULT_TTL);
                let finished = row.finished_at.unwrap_or(row.created_at);
                if Duration::try_from(now.duration_since(finished)).is_ok_and(|age| age > ttl) {
                    let removed = self.remove_agent_container(&row.team, &row.name).await;
                    if removed.is_ok() {
                        let _ = self.db.remove_agent(&row.team, &row.name).await;
                    }
                }
                continue;
            }
            if row.phase != Running {
                continue;
            }
            let key = (row.team.clone(), row.name.clone());
            let first = self.job_waiters.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone());
            if first {
                // Nobody in this process waits for it (the portal restarted): wait again; a
                // container that is gone fails the job with that reason.
                let inner = Arc::clone(self);
                tokio::spawn(async move {
                    let container = inner.names.agent(&row.team, &row.name);
                    let (phase, mut update) = match inner.docker.inspect_container(&container, None).await {
                        Err(e) if is_status(&e, 404) => (
                            Failed,
                            AgentUpdate { message: Some("the job's container was lost".into()), ..Default::default() },
                        ),
                        _ => inner.wait_for_job(&row, &container).await,
                    };
                    update.finished_at = Some(Timestamp::now());
                    let _ = inner.db.move_agent(&row.team, &row.name, &[Running], phase, update).await;
                    inner.job_waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                    inner.agent_changed.notify_waiters();
                    inner.schedule_agents(&row.team).await;
                });
            }
        }
        for team in teams {
            self.schedule_agents(&team).await;
        }
    }
}
