//! A client for a member cluster, from the kubeconfig in its Secret.

use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How long opening a connection to a member's API server may take. A member that is down or
/// cut off must cost its own teams a retry, never hold up anything else.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing a request to a member's API server may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a client from a kubeconfig (its current context), with short connect and write
/// timeouts. Reads keep kube's default (just under the watch timeout), so idle watches on the
/// member are not cut; calls that must be short are bounded where they are made.
///
/// The portal uses this too, so both reach a member the same way.
pub async fn client_from_kubeconfig(yaml: &str) -> Result<Client, String> {
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("unusable kubeconfig: {e}"))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    Client::try_from(config).map_err(|e| format!("building a client: {e}"))
}
