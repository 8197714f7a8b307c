//! Two controller replicas compete for one Lease on the real API server: one leads, and the other
//! takes over only after the leader stops renewing, or at once when the leader shuts down.

use std::time::Duration;

use deskpod_controller::leader::{LeaseSettings, run_as_leader};
use deskpod_testsupport::TestCluster;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio::sync::oneshot;

fn settings(namespace: &str, identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: namespace.into(),
        name: "deskpod-controller".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
    }
}

/// Starts a replica that reports on `leading` once it leads, then works until aborted.
fn replica(api: Api<Lease>, settings: LeaseSettings) -> (tokio::task::JoinHandle<()>, oneshot::Receiver<()>) {
    let (leading, led) = oneshot::channel();
    let task = tokio::spawn(async move {
        let work = async move {
            let _ = leading.send(());
            std::future::pending::<()>().await
        };
        let _ = run_as_leader(api, settings, work, std::future::pending()).await;
    });
    (task, led)
}

#[tokio::test]
async fn only_one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let ns = TestCluster::shared().namespace("lease").await.expect("test namespace");
    let api: Api<Lease> = ns.api();

    let (a, a_led) = replica(api.clone(), settings(&ns.name, "replica-a"));
    tokio::time::timeout(Duration::from_secs(10), a_led).await.expect("a leads").expect("a reports");
    let (b, mut b_led) = replica(api.clone(), settings(&ns.name, "replica-b"));

    // While a renews, b must not lead: watch for two full lease durations.
    assert!(tokio::time::timeout(Duration::from_secs(6), &mut b_led).await.is_err(), "b led while a was renewing");
    let lease = api.get("deskpod-controller").await.expect("lease");
    assert_eq!(lease.spec.as_ref().unwrap().holder_identity.as_deref(), Some("replica-a"));

    // a stops (as a crashed pod would); b takes over once a's lease expires.
    a.abort();
    tokio::time::timeout(Duration::from_secs(10), b_led).await.expect("b takes over").expect("b reports");
    let spec = api.get("deskpod-controller").await.expect("lease").spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    b.abort();
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_the_lease_over_at_once() {
    let ns = TestCluster::shared().namespace("lease-release").await.expect("test namespace");
    let api: Api<Lease> = ns.api();
    // Long leases: a takeover before 60 s can only come from the release.
    let long = |identity: &str| LeaseSettings {
        lease_duration: Duration::from_secs(60),
        renew_every: Duration::from_millis(300),
        ..settings(&ns.name, identity)
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (leading, a_led) = oneshot::channel();
    let a = tokio::spawn({
        let (api, settings) = (api.clone(), long("replica-a"));
        async move {
            let work = async move {
                let _ = leading.send(());
                std::future::pending::<()>().await
            };
            run_as_leader(api, settings, work, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    tokio::time::timeout(Duration::from_secs(10), a_led).await.expect("a leads").expect("a reports");
    let (b, b_led) = replica(api.clone(), long("replica-b"));

    stop.send(()).expect("a is running");
    let ended = tokio::time::timeout(Duration::from_secs(10), a).await.expect("a returns on shutdown");
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    tokio::time::timeout(Duration::from_secs(5), b_led).await.expect("b takes over at once").expect("b reports");
    let spec = api.get("deskpod-controller").await.expect("lease").spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_duration_seconds, Some(60), "b's own duration again");
    b.abort();
}
