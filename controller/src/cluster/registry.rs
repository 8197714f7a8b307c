//! The connections to member clusters, shared by the Cluster and Team controllers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::Client;

/// One connected member cluster.
pub struct Member {
    /// The Cluster's name.
    pub name: String,
    /// A client for the member's API server (see [`super::connect`]).
    pub client: Client,
    /// Distinguishes this connection from earlier ones to the same cluster (a changed
    /// kubeconfig): what was built on an old client is rebuilt.
    pub epoch: u64,
    /// Hash of the kubeconfig the client was built from.
    pub(super) fingerprint: u64,
    pub(super) state: Mutex<MemberState>,
}

/// What the last probe found, and what runs against the member.
#[derive(Default)]
pub(super) struct MemberState {
    /// `None`: healthy; else why not (a condition reason and message).
    pub problem: Option<(&'static str, String)>,
    /// The member's Kubernetes version, once known.
    pub version: Option<String>,
    /// The member's Workspace and CiAgent controllers, once its CRDs are installed.
    pub controllers: Option<tokio::task::JoinHandle<()>>,
}

impl Member {
    /// Whether the member answered its last probe (and has Deskpod's CRDs).
    pub fn healthy(&self) -> bool {
        self.state.lock().expect("member state").problem.is_none()
    }

    /// Why the member is not usable, as a condition reason and message; `None` when healthy.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        self.state.lock().expect("member state").problem.clone()
    }

    fn stop(&self) {
        if let Some(task) = self.state.lock().expect("member state").controllers.take() {
            task.abort();
        }
    }
}

/// The registry of member clusters. Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct Members(Arc<Shared>);

#[derive(Default)]
struct Shared {
    members: Mutex<HashMap<String, Arc<Member>>>,
    /// Told the name of a cluster whenever it is added, removed or its health changes.
    subscribers: Mutex<Vec<UnboundedSender<String>>>,
    epochs: AtomicU64,
}

impl Members {
    /// The connected member of this name.
    pub fn get(&self, name: &str) -> Option<Arc<Member>> {
        self.0.members.lock().expect("members").get(name).cloned()
    }

    /// Names of clusters as they are added, removed or change health.
    pub fn subscribe(&self) -> UnboundedReceiver<String> {
        let (tx, rx) = unbounded();
        self.0.subscribers.lock().expect("subscribers").push(tx);
        rx
    }

    /// Adds (or replaces) a member; what ran against a replaced one stops. It starts unhealthy
    /// until its first probe.
    pub(super) fn insert(&self, name: &str, client: Client, fingerprint: u64) -> Arc<Member> {
        let member = Arc::new(Member {
            name: name.to_string(),
            client,
            epoch: self.0.epochs.fetch_add(1, Ordering::Relaxed) + 1,
            fingerprint,
            state: Mutex::new(MemberState {
                problem: Some(("Connecting", "not probed yet".into())),
                ..Default::default()
            }),
        });
        let old = self.0.members.lock().expect("members").insert(name.to_string(), member.clone());
        if let Some(old) = old {
            old.stop();
        }
        self.notify(name);
        member
    }

    /// Forgets a member (its Cluster or Secret went away); what ran against it stops.
    pub(super) fn remove(&self, name: &str) {
        let old = self.0.members.lock().expect("members").remove(name);
        if let Some(old) = old {
            old.stop();
            self.notify(name);
        }
    }

    /// Names of every registered member.
    pub(super) fn names(&self) -> Vec<String> {
        self.0.members.lock().expect("members").keys().cloned().collect()
    }

    /// Records a probe's outcome; subscribers hear of it when the health changed.
    pub(super) fn record_probe(
        &self,
        member: &Member,
        problem: Option<(&'static str, String)>,
        version: Option<String>,
    ) {
        let changed = {
            let mut state = member.state.lock().expect("member state");
            let changed = state.problem.is_none() != problem.is_none();
            state.problem = problem;
            if version.is_some() {
                state.version = version;
            }
            changed
        };
        if changed {
            self.notify(&member.name);
        }
    }

    pub(super) fn notify(&self, name: &str) {
        self.0.subscribers.lock().expect("subscribers").retain(|tx| tx.unbounded_send(name.to_string()).is_ok());
    }
}
