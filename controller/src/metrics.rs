//! The controller's Prometheus metrics, registered into a registry the caller owns (the binary
//! serves one on the admin port; tests make their own).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which controller a series belongs to (`team`, later `workspace` and `ciagent`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

/// A failed reconcile: which controller, and a fixed error category (never an object name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

/// Reconcile counters and durations.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `deskpod_controller_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 12))),
        };
        let sub = registry.sub_registry_with_prefix("deskpod_controller");
        sub.register("reconcile", "Reconciles run", metrics.reconciles.clone());
        sub.register("reconcile_errors", "Reconciles that failed, by error category", metrics.failures.clone());
        sub.register("reconcile_duration_seconds", "How long a reconcile took", metrics.duration.clone());
        metrics
    }

    /// Records one reconcile of `controller` that took `elapsed`.
    pub fn reconciled(&self, controller: &'static str, elapsed: Duration) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(elapsed.as_secs_f64());
    }

    /// Records a failed reconcile.
    pub fn failed(&self, controller: &'static str, category: &'static str) {
        self.failures.get_or_create(&FailureLabels { controller, category }).inc();
    }
}

/// Consecutive failures per object (keyed by `namespace/name` or name), for [`backoff_delay`].
#[derive(Debug, Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// Counts a failure of `key`; returns how many in a row and how long to wait.
    pub fn failed(&self, key: String) -> (u32, Duration) {
        let mut counts = self.0.lock().expect("backoff counts lock");
        let n = counts.entry(key).or_default();
        *n = n.saturating_add(1);
        (*n, backoff_delay(*n))
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.0.lock().expect("backoff counts lock").remove(key);
    }
}

/// How long to wait before retrying an object that failed `failures` times in a row: 5 s,
/// doubling, at most 5 minutes. Transient errors retry quickly; a stuck object does not spin.
pub fn backoff_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    Duration::from_secs(5).saturating_mul(1 << doublings).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_and_stops_at_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 5, 6, 7, 100, u32::MAX].map(|n| backoff_delay(n).as_secs()).to_vec();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn backoff_grows_per_object_and_resets_on_success() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("a".into()), (1, Duration::from_secs(5)));
        assert_eq!(backoff.failed("a".into()), (2, Duration::from_secs(10)));
        assert_eq!(backoff.failed("b".into()), (1, Duration::from_secs(5)), "counted per object");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a".into()), (1, Duration::from_secs(5)));
    }

    #[test]
    fn series_are_exposed_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reconciled("team", Duration::from_millis(30));
        metrics.failed("team", "apply");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"deskpod_controller_reconcile_total{controller="team"} 1"#), "{text}");
        assert!(
            text.contains(r#"deskpod_controller_reconcile_errors_total{controller="team",category="apply"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"deskpod_controller_reconcile_duration_seconds_count{controller="team"} 1"#), "{text}");
    }
}
