//! Kubernetes-style status conditions, kept stable across reconciles.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition of `type_`, keeping the previous `lastTransitionTime` when the status did not
/// change (so `kubectl describe` shows when it really changed, not when we last looked).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let t0 = at("2026-11-23T10:00:00Z");
        let t1 = at("2026-11-23T11:00:00Z");
        let first = condition(&[], "Ready", false, "QuotaPending", "x".into(), Some(1), &t0);
        assert_eq!(first.last_transition_time, t0);
        let same = condition(std::slice::from_ref(&first), "Ready", false, "QuotaPending", "y".into(), Some(2), &t1);
        assert_eq!(same.last_transition_time, t0, "still False: keeps its time");
        let flipped = condition(&[same], "Ready", true, "Reconciled", "z".into(), Some(2), &t1);
        assert_eq!((flipped.status.as_str(), flipped.last_transition_time), ("True", t1));
    }
}
