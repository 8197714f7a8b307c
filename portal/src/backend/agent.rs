//! CI agents as the portal sees them, whichever backend runs them: one job each (a command, or a
//! Jenkins inbound agent), queued per team when the team is full, never failed for lack of room.
//! The request is the controller's own [`CiAgentSpec`], so both backends read it alike.

use bytes::Bytes;
use deskpod_controller::api::CiAgentSpec;
use futures::stream::BoxStream;
use jiff::Timestamp;
use serde::Serialize;

use super::BackendResult;

/// Where an agent stands: the controller's phases.
pub use deskpod_controller::api::CiAgentPhase as AgentPhase;

/// Whether an agent in `phase` is done for good (Succeeded, Failed or TimedOut).
pub fn is_finished(phase: AgentPhase) -> bool {
    matches!(phase, AgentPhase::Succeeded | AgentPhase::Failed | AgentPhase::TimedOut)
}

/// A CI agent to start.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAgent {
    pub team: String,
    pub name: String,
    /// Who submitted it (e-mail address); they may follow and cancel it.
    pub owner: String,
    pub spec: CiAgentSpec,
}

/// A CI agent as its submitter sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub team: String,
    pub name: String,
    pub owner: String,
    /// The image it runs (or will).
    pub image: String,
    pub phase: AgentPhase,
    /// While Queued: 1 for the next agent of the team to start.
    pub queue_position: Option<u32>,
    /// The job's exit code, once it exited.
    pub exit_code: Option<i32>,
    /// What it is doing or waiting for, or why it failed.
    pub message: Option<String>,
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// What an agent's job writes (standard output and error, interleaved as written).
pub type LogStream = BoxStream<'static, BackendResult<Bytes>>;
