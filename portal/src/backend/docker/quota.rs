//! A team's quota on a Docker host, enforced by the backend itself (there is no ResourceQuota):
//! the number of workspaces, and the sum of the CPU and memory limits of the running ones. The
//! keys are the Kubernetes quota's, so the pages show both backends alike.

use std::collections::BTreeMap;

use deskpod_controller::api::{Team, TeamStatus};
use deskpod_controller::quantity::{self, Milli};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::container::Footprint;
use crate::backend::kubernetes::WORKSPACE_COUNT_QUOTA;

pub const CPU_QUOTA: &str = "limits.cpu";
pub const MEMORY_QUOTA: &str = "limits.memory";

/// What a team uses now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The limits of its running workspaces, summed.
    pub running: Footprint,
    /// Its workspaces, running or not.
    pub workspaces: i64,
}

/// What is asked of the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A new workspace that starts at once.
    Create(Footprint),
    /// A stopped workspace starting again.
    Start(Footprint),
}

/// Why the team cannot take `ask`, in words the user can act on; `Ok` when it can. Quotas the
/// team does not set do not limit it.
pub fn admit(team: &Team, usage: Usage, ask: Ask) -> Result<(), String> {
    let name = team.name_any();
    let quota = &team.spec.quota;
    let footprint = match ask {
        Ask::Create(footprint) => {
            if let Some(hard) = quota.workspaces
                && usage.workspaces >= i64::from(hard)
            {
                return Err(format!(
                    "team {name} has all {hard} of its workspaces in use; delete one, or ask an admin for a larger quota"
                ));
            }
            footprint
        }
        Ask::Start(footprint) => footprint,
    };
    let check = |what: &str, hard: &Option<Quantity>, used: Milli, wanted: Milli, show: fn(Milli) -> String| {
        let Some(hard) = hard else { return Ok(()) };
        let limit = quantity::parse_quantity(hard)
            .map_err(|e| format!("team {name}'s {what} quota is not a quantity ({e}); an admin must correct it"))?;
        if used.0 + wanted.0 > limit.0 {
            return Err(format!(
                "this workspace needs {} of {what}, but team {name}'s {what} budget is {} and running workspaces \
                 use {}; stop one, or ask an admin for a larger quota",
                show(wanted),
                hard.0,
                show(used)
            ));
        }
        Ok(())
    };
    check("memory", &quota.memory, usage.running.memory, footprint.memory, show_bytes)?;
    check("CPU", &quota.cpu, usage.running.cpu, footprint.cpu, show_cpu)
}

/// The team's status as the controller would write it: the quota's hard values and what is used.
pub fn status(team: &Team, usage: Usage) -> TeamStatus {
    let quota = &team.spec.quota;
    let mut hard = BTreeMap::new();
    let mut used = BTreeMap::new();
    if let Some(cpu) = &quota.cpu {
        hard.insert(CPU_QUOTA.to_owned(), cpu.clone());
        used.insert(CPU_QUOTA.to_owned(), Quantity(show_cpu(usage.running.cpu)));
    }
    if let Some(memory) = &quota.memory {
        hard.insert(MEMORY_QUOTA.to_owned(), memory.clone());
        used.insert(MEMORY_QUOTA.to_owned(), Quantity(show_bytes(usage.running.memory)));
    }
    if let Some(workspaces) = quota.workspaces {
        hard.insert(WORKSPACE_COUNT_QUOTA.to_owned(), Quantity(workspaces.to_string()));
        used.insert(WORKSPACE_COUNT_QUOTA.to_owned(), Quantity(usage.workspaces.to_string()));
    }
    TeamStatus { namespace: None, quota_hard: hard, quota_used: used, ..TeamStatus::default() }
}

/// Millicores as a quantity: `2`, `1500m`.
fn show_cpu(cpu: Milli) -> String {
    if cpu.0 % 1000 == 0 { (cpu.0 / 1000).to_string() } else { format!("{}m", cpu.0) }
}

/// Bytes (in thousandths) as a quantity in the largest binary unit that keeps it whole.
fn show_bytes(memory: Milli) -> String {
    let bytes = memory.0 / 1000;
    for (unit, size) in [("Gi", 1_i128 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes != 0 && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use deskpod_controller::api::{TeamQuota, TeamSpec};

    use super::*;

    fn team(memory: &str, workspaces: i32) -> Team {
        Team::new(
            "data",
            TeamSpec {
                quota: TeamQuota {
                    memory: Some(Quantity(memory.into())),
                    workspaces: Some(workspaces),
                    ..TeamQuota::default()
                },
                ..TeamSpec::default()
            },
        )
    }

    fn gib(n: i128) -> Footprint {
        Footprint { cpu: Milli(1000), memory: Milli(n * (1 << 30) * 1000) }
    }

    #[test]
    fn memory_is_the_sum_of_running_limits() {
        let team = team("6Gi", 10);
        let usage = Usage { running: gib(4), workspaces: 2 };
        assert_eq!(admit(&team, usage, Ask::Create(gib(2))), Ok(()));
        let refused = admit(&team, usage, Ask::Start(gib(3))).unwrap_err();
        assert_eq!(
            refused,
            "this workspace needs 3Gi of memory, but team data's memory budget is 6Gi and running workspaces use \
             4Gi; stop one, or ask an admin for a larger quota"
        );
    }

    #[test]
    fn the_count_limits_new_workspaces_only() {
        let team = team("100Gi", 2);
        let usage = Usage { running: Footprint::default(), workspaces: 2 };
        assert!(admit(&team, usage, Ask::Create(gib(1))).unwrap_err().contains("all 2 of its workspaces"));
        assert_eq!(admit(&team, usage, Ask::Start(gib(1))), Ok(()));
    }

    #[test]
    fn the_status_uses_the_kubernetes_quota_keys() {
        let status = status(&team("8Gi", 5), Usage { running: gib(3), workspaces: 4 });
        assert_eq!(status.quota_hard[MEMORY_QUOTA].0, "8Gi");
        assert_eq!(status.quota_used[MEMORY_QUOTA].0, "3Gi");
        assert_eq!(status.quota_used[WORKSPACE_COUNT_QUOTA].0, "4");
        assert!(!status.quota_hard.contains_key(CPU_QUOTA));
    }

    #[test]
    fn amounts_read_like_quantities() {
        assert_eq!(show_cpu(Milli(1500)), "1500m");
        assert_eq!(show_cpu(Milli(3000)), "3");
        assert_eq!(show_bytes(Milli(1536 * (1 << 20) * 1000)), "1536Mi");
        assert_eq!(show_bytes(Milli(0)), "0");
    }
}
