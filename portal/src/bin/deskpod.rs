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
    /// Run CI jobs in ephemeral agents.
    #[command(subcommand)]
    Agent(AgentCommand),
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

#[derive(Subcommand)]
enum AgentCommand {
    /// Run a command in a fresh agent of the team: waits in the team's queue while the team is
    /// full, prints the job's output as it comes, exits with the job's exit code (124 when it ran
    /// past its deadline, 125 when it could not run) and removes the agent. Ctrl-C cancels it.
    Run {
        #[arg(long)]
        team: String,
        /// The image to run (or --template).
        #[arg(long, required_unless_present = "template", conflicts_with = "template")]
        image: Option<String>,
        /// A workspace template whose image to run.
        #[arg(long)]
        template: Option<String>,
        /// The agent's name; one is made when not given.
        #[arg(long)]
        name: Option<String>,
        /// An environment variable for the job, NAME=VALUE; repeat for more.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Stop the job when it has run this long, e.g. 30m.
        #[arg(long)]
        deadline: Option<String>,
        /// The command and its arguments (after --); the image's own when left out.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// The team's agents you may see: phase, queue position, exit code.
    List {
        #[arg(long)]
        team: String,
    },
    /// Stop and remove an agent.
    Cancel { team: String, name: String },
}

/// The exit code of a job that ran past its deadline (as timeout(1) uses).
const TIMED_OUT: u8 = 124;
/// The exit code when the job could not run at all (as docker run uses).
const COULD_NOT_RUN: u8 = 125;

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Command::Agent(AgentCommand::Run { team, image, template, name, env, deadline, command }) = command {
        return match agent_run(AgentRun { team, image, template, name, env, deadline, command }).await {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("deskpod: {error}");
                ExitCode::from(COULD_NOT_RUN)
            }
        };
    }
    match run(command).await {
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
        Command::Agent(AgentCommand::List { team }) => {
            let list = api.call(Method::GET, &format!("/api/v1/agents?team={team}"), None).await?;
            let rows: Vec<Vec<String>> = list["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        text(&a["name"]),
                        text(&a["owner"]),
                        text(&a["phase"]),
                        text(&a["queuePosition"]),
                        text(&a["exitCode"]),
                        text(&a["image"]),
                    ]
                })
                .collect();
            Ok(table(&["NAME", "OWNER", "PHASE", "QUEUE", "EXIT", "IMAGE"], &rows))
        }
        Command::Agent(AgentCommand::Cancel { team, name }) => {
            api.call(Method::DELETE, &format!("/api/v1/agents/{team}/{name}"), None).await?;
            Ok(format!("agent {team}/{name} stopped and removed"))
        }
        Command::Agent(AgentCommand::Run { .. }) => unreachable!("handled in main"),
        Command::Invite { team, email, role, template, expires } => {
            let body = json!({ "team": team, "email": email, "role": role, "template": template, "access_expires_at": expires });
            let invite = api.call(Method::POST, "/api/v1/invites", Some(&body)).await?;
            Ok(format!("invite link (works once; send it privately): {}", text(&invite["url"])))
        }
    }
}

/// What `deskpod agent run` was asked.
struct AgentRun {
    team: String,
    image: Option<String>,
    template: Option<String>,
    name: Option<String>,
    env: Vec<String>,
    deadline: Option<String>,
    command: Vec<String>,
}

/// Submits the job, streams its output to standard output, and returns its exit code once it has
/// ended and the agent is removed.
async fn agent_run(run: AgentRun) -> ClientResult<u8> {
    use futures::StreamExt;
    use std::io::Write;
    let api = ApiClient::new(credentials()?)?;
    let mut env = serde_json::Map::new();
    for pair in &run.env {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("--env {pair:?}: write it as NAME=VALUE")))?;
        env.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    let mut body = json!({ "team": run.team, "env": env });
    for (key, value) in
        [("name", run.name), ("image", run.image), ("template", run.template), ("deadline", run.deadline)]
    {
        if let Some(value) = value {
            body[key] = Value::String(value);
        }
    }
    if !run.command.is_empty() {
        body["command"] = json!(run.command);
    }
    let agent = api.call(Method::POST, "/api/v1/agents", Some(&body)).await?;
    let name = text(&agent["name"]);
    let path = format!("/api/v1/agents/{}/{name}", run.team);
    if let Some(position) = agent["queuePosition"].as_u64() {
        eprintln!(
            "deskpod: agent {}/{name} is queued ({position} in the team's queue); it starts when the team has room",
            run.team
        );
    }

    let follow = async {
        let mut logs = api.stream(&format!("{path}/logs?follow=true")).await?;
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = logs.next().await {
            out.write_all(&chunk?).map_err(|e| ClientError::Usage(e.to_string()))?;
            out.flush().map_err(|e| ClientError::Usage(e.to_string()))?;
        }
        ClientResult::Ok(())
    };
    let interrupted = tokio::select! {
        followed = follow => {
            // No log (the node keeps none, or the stream broke) is no reason to lose the result.
            if let Err(error) = followed {
                eprintln!("deskpod: the job's output is not available: {error}");
            }
            false
        }
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        api.call(Method::DELETE, &path, None).await?;
        eprintln!("deskpod: interrupted; agent {}/{name} stopped and removed", run.team);
        return Ok(130);
    }
    // The log ends when the job does; the status says how.
    let finished = loop {
        let agent = api.call(Method::GET, &path, None).await?;
        if matches!(agent["phase"].as_str(), Some("Succeeded" | "Failed" | "TimedOut")) {
            break agent;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    api.call(Method::DELETE, &path, None).await?;
    let code = match (finished["phase"].as_str(), finished["exitCode"].as_i64()) {
        (Some("TimedOut"), _) => TIMED_OUT,
        (_, Some(code)) => u8::try_from(code.clamp(0, 255)).unwrap_or(1),
        _ => COULD_NOT_RUN,
    };
    if code != 0 {
        eprintln!("deskpod: agent {}/{name}: {} ({})", run.team, text(&finished["phase"]), text(&finished["message"]));
    }
    Ok(code)
}
