//! `deskpod`: Deskpod from the terminal, through the portal's JSON API.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deskpod_portal::client::{ApiClient, ClientError, ClientResult, Credentials, table};
use hyper::Method;
use serde_json::{Value, json};

const ENVIRONMENT_HELP: &str = "\
The portal and the API token come from DESKPOD_URL and DESKPOD_TOKEN when both are set, else from
the file `deskpod login` writes ($XDG_CONFIG_HOME/deskpod/credentials.json, mode 0600). Tokens are
never taken from the command line (it shows in `ps` and shell history). Create one on the portal's
`API tokens` page or with POST /api/v1/tokens.";

#[derive(Parser)]
#[command(name = "deskpod", version, about = "Deskpod from the terminal", after_help = ENVIRONMENT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Save the portal's URL and an API token (read from standard input) for later commands.
    Login {
        /// The portal, such as https://deskpod.example.com.
        url: String,
    },
    /// The signed-in user and their teams.
    Whoami,
    /// The template catalog.
    Templates,
    /// List, create, start, stop and delete workspaces.
    #[command(subcommand)]
    Workspaces(WorkspaceCommand),
    /// Invite someone to a team (team leads): prints the one-time link.
    Invite {
        #[arg(long)]
        team: String,
        #[arg(long)]
        email: String,
        /// contractor or engineer.
        #[arg(long, default_value = "contractor")]
        role: String,
        /// The template of the desktop that starts for them.
        #[arg(long)]
        template: Option<String>,
        /// When their access ends (RFC 3339, such as 2026-12-31T00:00:00Z); required for contractors.
        #[arg(long)]
        expires: Option<String>,
    },
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Workspaces you may see, with their phase and what they wait for.
    List {
        #[arg(long)]
        team: Option<String>,
    },
    /// Create (and start) a workspace.
    Create {
        team: String,
        name: String,
        #[arg(long)]
        template: String,
    },
    /// Start a stopped workspace on its home volume.
    Start { team: String, name: String },
    /// Stop a workspace; its home volume stays.
    Stop { team: String, name: String },
    /// Delete a workspace.
    Delete { team: String, name: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("deskpod: {error}");
            ExitCode::FAILURE
        }
    }
}

fn credentials() -> ClientResult<Credentials> {
    match (std::env::var("DESKPOD_URL"), std::env::var("DESKPOD_TOKEN")) {
        (Ok(url), Ok(token)) => Ok(Credentials { url, token }),
        _ => Credentials::load(&Credentials::default_path()?),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn run(command: Command) -> ClientResult<String> {
    if let Command::Login { url } = &command {
        eprintln!("API token (dpt_...), then Enter:");
        let mut token = String::new();
        std::io::stdin().lock().read_line(&mut token).map_err(|e| ClientError::Usage(e.to_string()))?;
        let credentials = Credentials { url: url.clone(), token: token.trim().to_string() };
        let me = ApiClient::new(credentials.clone())?.call(Method::GET, "/api/v1/me", None).await?;
        let path = Credentials::default_path()?;
        credentials.save(&path)?;
        return Ok(format!("signed in as {}; saved to {}", text(&me["id"]), path.display()));
    }
    let api = ApiClient::new(credentials()?)?;
    let workspace_path = |team: &str, name: &str| format!("/api/v1/workspaces/{team}/{name}");
    match command {
        Command::Login { .. } => unreachable!("handled above"),
        Command::Whoami => {
            let me = api.call(Method::GET, "/api/v1/me", None).await?;
            Ok(serde_json::to_string_pretty(&me).expect("JSON prints"))
        }
        Command::Templates => {
            let list = api.call(Method::GET, "/api/v1/templates", None).await?;
            let rows: Vec<Vec<String>> = list["templates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| vec![text(&t["name"]), text(&t["displayName"]), text(&t["description"])])
                .collect();
            Ok(table(&["NAME", "DISPLAY NAME", "DESCRIPTION"], &rows))
        }
        Command::Workspaces(WorkspaceCommand::List { team }) => {
            let path = match team {
                Some(team) => format!("/api/v1/workspaces?team={team}"),
                None => "/api/v1/workspaces".into(),
            };
            let list = api.call(Method::GET, &path, None).await?;
            let rows: Vec<Vec<String>> = list["workspaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    vec![
                        text(&w["team"]),
                        text(&w["name"]),
                        text(&w["template"]),
                        text(&w["phase"]),
                        text(&w["message"]),
                    ]
                })
                .collect();
            Ok(table(&["TEAM", "NAME", "TEMPLATE", "PHASE", "MESSAGE"], &rows))
        }
        Command::Workspaces(WorkspaceCommand::Create { team, name, template }) => {
            let body = json!({ "team": team, "name": name, "template": template });
            let created = api.call(Method::POST, "/api/v1/workspaces", Some(&body)).await?;
            Ok(format!("workspace {team}/{name} created ({})", text(&created["phase"])))
        }
        Command::Workspaces(WorkspaceCommand::Start { team, name }) => {
            api.call(Method::POST, &format!("{}/start", workspace_path(&team, &name)), None).await?;
            Ok(format!("workspace {team}/{name} starting"))
        }
        Command::Workspaces(WorkspaceCommand::Stop { team, name }) => {
            api.call(Method::POST, &format!("{}/stop", workspace_path(&team, &name)), None).await?;
            Ok(format!("workspace {team}/{name} stopping; its home volume stays"))
        }
        Command::Workspaces(WorkspaceCommand::Delete { team, name }) => {
            api.call(Method::DELETE, &workspace_path(&team, &name), None).await?;
            Ok(format!("workspace {team}/{name} deleted"))
        }
        Command::Invite { team, email, role, template, expires } => {
            let body = json!({ "team": team, "email": email, "role": role, "template": template, "access_expires_at": expires });
            let invite = api.call(Method::POST, "/api/v1/invites", Some(&body)).await?;
            Ok(format!("invite link (works once; send it privately): {}", text(&invite["url"])))
        }
    }
}
