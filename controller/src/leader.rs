//! Leader election on a `coordination.k8s.io` Lease, so two controller replicas can run and only
//! one reconciles at a time.
//!
//! The holder renews the Lease every `renew_every`; another replica takes it over once
//! `renewTime + leaseDurationSeconds` has passed. Writes use the Lease's resourceVersion, so two
//! candidates racing for an expired Lease cannot both win. A leader that cannot renew before its
//! Lease would expire stops leading (the binary then exits and is restarted), as client-go does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// Where the Lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per replica, e.g. the pod name.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_every: Duration,
}

/// Whether `identity` may take or keep the Lease at `now`: nobody holds it, we hold it, or the
/// holder has not renewed it in time.
pub fn may_acquire(lease: Option<&Lease>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => return true,
        Some(holder) if holder == identity => return true,
        Some(_) => {}
    }
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return true;
    };
    renewed.0 + SignedDuration::from_secs(seconds.into()) < now
}

/// The Lease as we write it when we take or renew it.
fn held_lease(previous: Option<&Lease>, settings: &LeaseSettings, now: Timestamp) -> Lease {
    let spec = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(settings.identity.as_str());
    Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(settings.lease_duration.as_secs().try_into().unwrap_or(i32::MAX)),
            acquire_time: if ours { spec.acquire_time } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours && previous.is_some())),
            ..Default::default()
        }),
    }
}

/// One attempt to take or renew the Lease. `Ok(false)`: someone else holds it, or won a race.
pub async fn try_acquire(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&settings.name).await?;
    if !may_acquire(current.as_ref(), &settings.identity, now) {
        return Ok(false);
    }
    let lease = held_lease(current.as_ref(), settings, now);
    let written = match current {
        None => api.create(&PostParams::default(), &lease).await,
        Some(_) => api.replace(&settings.name, &PostParams::default(), &lease).await,
    };
    match written {
        Ok(_) => Ok(true),
        // Another candidate wrote first: the resourceVersion no longer matches, or it created it.
        Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if we hold it: no holder and a one-second duration, so a standby replica
/// takes over at its next attempt instead of waiting for the Lease to expire (client-go's
/// `ReleaseOnCancel`). `Ok(false)`: someone else holds it (or took it meanwhile).
pub async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let Some(current) = api.get_opt(&settings.name).await? else {
        return Ok(false);
    };
    let Some(spec) = current.spec.clone() else { return Ok(false) };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(false);
    }
    let released = Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            resource_version: current.metadata.resource_version.clone(),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..spec
        }),
    };
    match api.replace(&settings.name, &PostParams::default(), &released).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this replica holds the Lease, then runs `work` while renewing it. Returns when
/// `work` ends or `shutdown` completes, having released the Lease (see [`release`]), or with an
/// error when leadership is lost (renewal failed past the deadline).
pub async fn run_as_leader<F, S>(
    api: Api<Lease>,
    settings: LeaseSettings,
    work: F,
    shutdown: S,
) -> Result<(), LostLease>
where
    F: std::future::Future<Output = ()>,
    S: std::future::Future<Output = ()>,
{
    tokio::pin!(shutdown);
    tokio::select! {
        () = wait_to_lead(&api, &settings) => {}
        () = &mut shutdown => return Ok(()),
    }
    tracing::info!(identity = %settings.identity, lease = %settings.name, "leading");
    let renew = async {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(settings.renew_every).await;
            match try_acquire(&api, &settings).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => return LostLease("another replica holds the Lease".into()),
                Err(error) => tracing::warn!(%error, "leader election: renewal failed"),
            }
            if last_renewed.elapsed() >= settings.lease_duration {
                return LostLease(format!("not renewed for {:?}", settings.lease_duration));
            }
        }
    };
    // The controllers also stop on the signal by themselves (kube-runtime's shutdown_on_signal),
    // so `work` may end first: either way we are leaving, and give the Lease up.
    tokio::select! {
        () = work => {}
        lost = renew => return Err(lost),
        () = &mut shutdown => {}
    }
    match release(&api, &settings).await {
        Ok(true) => tracing::info!(identity = %settings.identity, "stopping: Lease released"),
        Ok(false) => tracing::info!("stopping: the Lease was no longer ours"),
        Err(error) => tracing::warn!(%error, "stopping: could not release the Lease; it expires by itself"),
    }
    Ok(())
}

/// Returns once this replica holds the Lease, retrying every `renew_every`.
async fn wait_to_lead(api: &Api<Lease>, settings: &LeaseSettings) {
    loop {
        match try_acquire(api, settings).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "leader election: cannot read or write the Lease"),
        }
        tokio::time::sleep(settings.renew_every).await;
    }
}

/// Leadership was lost; the caller should stop reconciling (the binary exits).
#[derive(Debug, thiserror::Error)]
#[error("lost leadership: {0}")]
pub struct LostLease(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn lease(holder: Option<&str>, renewed: &str, seconds: i32) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[rstest]
    #[case::no_lease(None, true)]
    #[case::nobody_holds_it(Some(lease(None, "2026-11-23T12:00:00Z", 15)), true)]
    #[case::we_hold_it(Some(lease(Some("me"), "2026-11-23T12:00:00Z", 15)), true)]
    #[case::held_and_fresh(Some(lease(Some("other"), "2026-11-23T12:00:00Z", 15)), false)]
    #[case::held_and_exactly_at_expiry(Some(lease(Some("other"), "2026-11-23T11:59:55Z", 15)), false)]
    #[case::held_but_expired(Some(lease(Some("other"), "2026-11-23T11:59:40Z", 15)), true)]
    fn who_may_take_the_lease(#[case] current: Option<Lease>, #[case] expected: bool) {
        let now: Timestamp = "2026-11-23T12:00:10Z".parse().unwrap();
        assert_eq!(may_acquire(current.as_ref(), "me", now), expected);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let settings = LeaseSettings {
            namespace: "deskpod-system".into(),
            name: "deskpod-controller".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let now: Timestamp = "2026-11-23T12:00:10Z".parse().unwrap();
        let taken = held_lease(Some(&lease(Some("other"), "2026-11-23T11:00:00Z", 15)), &settings, now);
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some("me"), Some(1)));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        let later: Timestamp = "2026-11-23T12:00:15Z".parse().unwrap();
        let renewed = held_lease(Some(&taken), &settings, later);
        let spec = renewed.spec.as_ref().unwrap();
        assert_eq!(spec.lease_transitions, Some(1), "renewing is not a transition");
        assert_eq!(spec.acquire_time, Some(MicroTime(now)), "acquire time kept");
        assert_eq!(spec.renew_time, Some(MicroTime(later)));
    }
}
