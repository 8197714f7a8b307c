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
    // Only where the YAML is wrong: a parser's message may quote the value it choked on, and a
    // kubeconfig holds credentials (this message goes to the Cluster's status).
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| match e {
        kube::config::KubeconfigError::Parse(parse) => match parse.location() {
            Some(at) => format!("not a kubeconfig: the YAML is invalid at line {}, column {}", at.line(), at.column()),
            None => "not a kubeconfig: the YAML is invalid".to_owned(),
        },
        _ => "not a kubeconfig".to_owned(),
    })?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("unusable kubeconfig: {e}"))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    Client::try_from(config).map_err(|e| format!("building a client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broken_kubeconfig_is_refused_without_quoting_it() {
        let broken = "apiVersion: v1\nkind: Config\nusers: s3cr3t-t0ken-value\n";
        let message = client_from_kubeconfig(broken).await.err().expect("refused");
        assert!(message.starts_with("not a kubeconfig"), "{message}");
        assert!(!message.contains("s3cr3t"), "the credential is quoted: {message}");
    }
}
