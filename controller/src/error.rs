//! The controller's error type: one variant per step that can fail, with what it was acting on.

/// Why a reconcile (or the controller itself) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply { kind: String, name: String, source: kube::Error },
    #[error("deleting {kind} {name}: {source}")]
    Delete { kind: String, name: String, source: kube::Error },
    #[error("listing: {0}")]
    List(kube::Error),
    /// A member cluster is not registered, cannot be connected to or does not answer.
    #[error("cluster {cluster}: {message}")]
    ClusterUnavailable { cluster: String, reason: &'static str, message: String },
    /// A watch ended before it listed once: the controller is shutting down.
    #[error("the controller is shutting down")]
    Shutdown,
}

impl Error {
    /// Every [`Error::category`], so the error counters can start at 0 for each.
    pub const CATEGORIES: [&str; 5] = ["apply", "delete", "list", "cluster_unavailable", "shutdown"];

    /// A fixed, low-cardinality name for metrics labels and logs (one of [`Self::CATEGORIES`]).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::List(_) => "list",
            Error::ClusterUnavailable { .. } => "cluster_unavailable",
            Error::Shutdown => "shutdown",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
