//! A team's queue of CI agents, read from the watched copies (no I/O).
//!
//! The queue is every agent of a team namespace that waits for a pod: not being deleted, not
//! finished, never given a pod. It is first come, first served: ordered by creation time, then
//! name (creation times have whole seconds, so agents submitted within a second go by name).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::render::{self, DesiredAgent};
use crate::api::{CiAgent, CiAgentPhase, Team};
use crate::quantity::{self, Milli};
use crate::team::render::{DEFAULT_CPU_REQUEST, DEFAULT_MEMORY_REQUEST};

/// Where an agent stands in its team's queue: earlier first.
pub fn queue_key(agent: &CiAgent) -> (Timestamp, String) {
    let created = agent.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::MAX);
    (created, agent.name_any())
}

/// Whether an agent is waiting for a pod as far as its own status tells: not being deleted, and
/// Queued (or not looked at yet). Starting or Running agents had a pod; finished ones are done.
pub fn is_waiting(agent: &CiAgent) -> bool {
    agent.metadata.deletion_timestamp.is_none() && agent.status.as_ref().is_none_or(|s| s.phase == CiAgentPhase::Queued)
}

/// The waiting agents of one namespace in queue order, leaving out those that have a pod
/// (`has_pod`, by the agent's name).
pub fn waiting_in_order(
    agents: impl IntoIterator<Item = Arc<CiAgent>>,
    namespace: &str,
    has_pod: impl Fn(&str) -> bool,
) -> Vec<Arc<CiAgent>> {
    let mut waiting: Vec<Arc<CiAgent>> = agents
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(namespace) && is_waiting(a) && !has_pod(&a.name_any()))
        .collect();
    waiting.sort_by_cached_key(|a| queue_key(a));
    waiting
}

/// The first agent of a namespace's queue, by status alone: the one to wake when capacity may have
/// freed (any agent of the team would do; its reconcile admits as many as fit).
pub fn head<'a>(agents: impl IntoIterator<Item = &'a Arc<CiAgent>>, namespace: &str) -> Option<&'a Arc<CiAgent>> {
    agents
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(namespace) && is_waiting(a))
        .min_by_key(|a| queue_key(a))
}

/// Agent pods that still run (or are about to): every pod not Succeeded or Failed, terminating
/// ones included, as they still hold their resources.
pub fn running_pods<'a>(pods: impl IntoIterator<Item = &'a Arc<Pod>>) -> usize {
    pods.into_iter().filter(|p| !render::pod_finished(p)).count()
}

/// Whether the team's ResourceQuota, as last seen, has room for all of `pods` besides `unseen`
/// pods created but not seen yet (which its status may not count yet). Only then are
/// pods created all at once, so that none of them is refused while a later one is admitted.
/// Resources the quota does not limit do not count; nor do those an agent pod does not use.
pub fn fits_with_margin<'a>(
    quota: Option<&ResourceQuota>,
    team: &Team,
    pods: impl IntoIterator<Item = &'a DesiredAgent>,
    unseen: usize,
) -> bool {
    let Some(hard) = quota.and_then(|q| q.spec.as_ref()).and_then(|s| s.hard.as_ref()) else {
        return true;
    };
    let used = quota.and_then(|q| q.status.as_ref()).and_then(|s| s.used.as_ref());
    let limits = &team.spec.limits;
    let default_cpu = limits.default_cpu_request.clone().unwrap_or_else(|| Quantity(DEFAULT_CPU_REQUEST.into()));
    let default_memory =
        limits.default_memory_request.clone().unwrap_or_else(|| Quantity(DEFAULT_MEMORY_REQUEST.into()));
    let milli = |q: &Quantity| quantity::parse_quantity(q).unwrap_or(Milli(i128::MAX / 4)).0;
    let pods: Vec<&DesiredAgent> = pods.into_iter().collect();
    // What one pod takes of each resource (a container without resources gets the LimitRange's
    // defaults, request and limit alike).
    let per_pod = |key: &str, d: &DesiredAgent| -> Option<i128> {
        let r = &d.resources;
        let pick = |own: &Option<Quantity>, default: &Quantity| milli(own.as_ref().unwrap_or(default));
        match key {
            "pods" | "count/pods" => Some(1000),
            "requests.cpu" | "cpu" => Some(pick(&r.cpu_request, &default_cpu)),
            "limits.cpu" => Some(pick(&r.cpu_limit, &default_cpu)),
            "requests.memory" | "memory" => Some(pick(&r.memory_request, &default_memory)),
            "limits.memory" => Some(pick(&r.memory_limit, &default_memory)),
            _ => None,
        }
    };
    hard.iter().all(|(key, limit)| {
        let Some(first) = pods.first() else { return true };
        if per_pod(key, first).is_none() {
            return true;
        }
        let wanted: i128 = pods.iter().filter_map(|d| per_pod(key, d)).sum::<i128>()
            + per_pod(key, first).unwrap_or_default() * unseen as i128;
        let used = used.and_then(|u| u.get(key)).map(milli).unwrap_or(0);
        wanted <= milli(limit) - used
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    fn agent(name: &str, created: &str, phase: Option<&str>) -> Arc<CiAgent> {
        let mut value = json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent",
            "metadata": { "name": name, "namespace": "team-a", "creationTimestamp": created },
            "spec": { "image": "x" }
        });
        if let Some(phase) = phase {
            value["status"] = json!({ "phase": phase });
        }
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn names(agents: &[Arc<CiAgent>]) -> Vec<String> {
        agents.iter().map(|a| a.name_any()).collect()
    }

    #[test]
    fn first_come_first_served_then_by_name() {
        let agents = vec![
            agent("c", "2026-01-01T10:00:01Z", None),
            agent("b", "2026-01-01T10:00:00Z", Some("Queued")),
            agent("a", "2026-01-01T10:00:01Z", None),
            agent("z", "2026-01-01T09:59:59Z", Some("Queued")),
        ];
        assert_eq!(names(&waiting_in_order(agents.clone(), "team-a", |_| false)), ["z", "b", "a", "c"]);
        assert_eq!(head(&agents, "team-a").map(|a| a.name_any()).as_deref(), Some("z"));
        assert!(head(&agents, "team-b").is_none(), "per namespace");
    }

    #[test]
    fn agents_with_a_pod_or_past_the_queue_do_not_wait() {
        let mut deleted = (*agent("gone", "2026-01-01T10:00:00Z", None)).clone();
        deleted.metadata.deletion_timestamp = Some(Time("2026-01-01T10:00:05Z".parse().unwrap()));
        let agents = vec![
            agent("queued", "2026-01-01T10:00:00Z", Some("Queued")),
            agent("new", "2026-01-01T10:00:00Z", None),
            agent("admitted", "2026-01-01T10:00:00Z", None),
            agent("running", "2026-01-01T10:00:00Z", Some("Running")),
            agent("starting", "2026-01-01T10:00:00Z", Some("Starting")),
            agent("done", "2026-01-01T10:00:00Z", Some("Succeeded")),
            agent("late", "2026-01-01T10:00:00Z", Some("TimedOut")),
            Arc::new(deleted),
        ];
        assert_eq!(names(&waiting_in_order(agents, "team-a", |n| n == "admitted")), ["new", "queued"]);
    }

    #[test]
    fn pods_are_created_at_once_only_when_the_quota_has_room_for_all() {
        let quota: ResourceQuota = serde_json::from_value(json!({
            "spec": { "hard": { "pods": "10", "requests.cpu": "4", "count/ciagents.deskpod.io": "1" } },
            "status": { "used": { "pods": "6", "requests.cpu": "1", "count/ciagents.deskpod.io": "1" } }
        }))
        .unwrap();
        let team = Team::new("a", Default::default());
        let agent: CiAgent = serde_json::from_value(json!({
            "apiVersion": "deskpod.io/v1alpha1", "kind": "CiAgent", "metadata": { "name": "x", "namespace": "team-a" },
            "spec": { "image": "x", "resources": { "cpuRequest": "500m" } }
        }))
        .unwrap();
        let d = render::validate(&agent, None, &team).unwrap();
        let fits = |n: usize, unseen: usize| fits_with_margin(Some(&quota), &team, std::iter::repeat_n(&d, n), unseen);
        assert!(fits(4, 0), "4 more pods, 2 more CPUs");
        assert!(!fits(5, 0), "the pods quota is full at 10");
        assert!(!fits(3, 2), "pods just created may not be counted yet");
        assert!(fits_with_margin(None, &team, std::iter::repeat_n(&d, 100), 0), "no quota, no limit");
    }

    #[test]
    fn finished_pods_free_their_place() {
        let pod = |phase: &str| -> Arc<Pod> {
            Arc::new(serde_json::from_value(json!({ "status": { "phase": phase } })).unwrap())
        };
        let pods = [pod("Pending"), pod("Running"), pod("Succeeded"), pod("Failed"), pod("Running")];
        assert_eq!(running_pods(&pods), 3);
    }
}
