//! A client of the portal's JSON API (`/api/v1/`, described at `/api/openapi.json`), used by the
//! `deskpod` command. It authenticates with an API token (`Authorization: Bearer dpt_...`); the
//! token comes from the environment or the credentials file, never from the command line.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What went wrong talking to the portal, in words for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The portal answered with an error; its message (and the field it is about).
    #[error("{message}{}", field.as_deref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api { status: u16, message: String, field: Option<String> },
    #[error("cannot reach the portal at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{0}")]
    Usage(String),
}

pub type ClientResult<T> = Result<T, ClientError>;

/// Where the portal is and who calls it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The portal's address, such as `https://deskpod.example.com`.
    pub url: String,
    /// An API token (`dpt_...`).
    pub token: String,
}

impl Credentials {
    /// `$XDG_CONFIG_HOME/deskpod/credentials.json`, else `~/.config/deskpod/credentials.json`.
    pub fn default_path() -> ClientResult<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .ok_or_else(|| ClientError::Usage("neither XDG_CONFIG_HOME nor HOME is set".into()))?;
        Ok(base.join("deskpod").join("credentials.json"))
    }

    /// Saves the credentials, readable by the user only (the file holds a token).
    pub fn save(&self, path: &std::path::Path) -> ClientResult<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| ClientError::Usage(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
        let text = serde_json::to_string_pretty(self).expect("credentials serialize");
        file.write_all(text.as_bytes()).map_err(io)
    }

    /// Reads saved credentials.
    pub fn load(path: &std::path::Path) -> ClientResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Usage(format!("no saved credentials at {} ({e}); run `deskpod login` first", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))
    }
}

/// The portal's JSON API.
pub struct ApiClient {
    credentials: Credentials,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    /// A client for `credentials`; `https://` URLs are checked against the system's roots.
    pub fn new(credentials: Credentials) -> ClientResult<Self> {
        let url = credentials.url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::Usage(format!("{url:?} is not an http:// or https:// URL")));
        }
        if !credentials.token.starts_with("dpt_") {
            return Err(ClientError::Usage("that is not a Deskpod API token (they start with dpt_)".into()));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| ClientError::Usage(format!("loading the system's certificate roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { credentials: Credentials { url, ..credentials }, http })
    }

    /// Sends a request and returns the JSON answer (`null` for 204).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> ClientResult<Value> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| self.unreachable(e.to_string()))?.to_bytes();
        let value: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"].as_str().map(String::from).unwrap_or_else(|| format!("HTTP {status}"));
        let field = value["field"].as_str().map(String::from);
        Err(ClientError::Api { status: status.as_u16(), message, field })
    }

    /// Sends a GET and returns the answer's body as it arrives (a log that is still being
    /// written); an error status is read whole and returned as [`ClientError::Api`].
    pub async fn stream(&self, path: &str) -> ClientResult<impl futures::Stream<Item = ClientResult<Bytes>> + use<'_>> {
        let response = self.send(Method::GET, path, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|e| self.unreachable(e.to_string()))?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = value["error"].as_str().map(String::from).unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ClientError::Api { status: status.as_u16(), message, field: None });
        }
        let body = http_body_util::BodyStream::new(response.into_body());
        Ok(futures::StreamExt::filter_map(body, move |frame| {
            std::future::ready(match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(self.unreachable(e.to_string()))),
            })
        }))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> ClientResult<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.credentials.url);
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.credentials.token))
            .map_err(|_| ClientError::Usage("the token holds characters a header cannot".into()))?;
        let mut request = hyper::Request::builder().method(method).uri(&url).header(AUTHORIZATION, bearer);
        let payload = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body).expect("JSON serializes"))
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(payload)).map_err(|e| ClientError::Usage(format!("{url}: {e}")))?;
        self.http.request(request).await.map_err(|e| self.unreachable(e.to_string()))
    }

    fn unreachable(&self, detail: String) -> ClientError {
        ClientError::Unreachable { url: self.credentials.url.clone(), detail }
    }
}

/// A table for the terminal: a header row and rows, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let rows =
            vec![vec!["platform".to_string(), "dev".into(), "Running".into()], vec!["a".into(), "b".into(), "".into()]];
        assert_eq!(
            table(&["TEAM", "NAME", "PHASE"], &rows),
            "TEAM      NAME  PHASE\nplatform  dev   Running\na         b"
        );
    }

    #[test]
    fn only_api_tokens_and_http_urls_are_accepted() {
        let creds = |url: &str, token: &str| Credentials { url: url.into(), token: token.into() };
        assert!(ApiClient::new(creds("http://127.0.0.1:8080/", "dpt_x")).is_ok());
        assert!(matches!(ApiClient::new(creds("ftp://x", "dpt_x")), Err(ClientError::Usage(_))));
        assert!(matches!(ApiClient::new(creds("http://x", "password")), Err(ClientError::Usage(_))));
    }

    #[test]
    fn saved_credentials_are_private_to_the_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("deskpod-cli-{}", std::process::id()));
        let path = dir.join("credentials.json");
        let saved = Credentials { url: "http://127.0.0.1:8080".into(), token: "dpt_secret".into() };
        saved.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Credentials::load(&path).unwrap(), saved);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
