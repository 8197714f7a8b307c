//! CiAgent → one ephemeral pod per CI job, admitted from its team's FIFO queue when the team has
//! room, removed with the agent after its TTL.

pub mod queue;
pub mod reconcile;
pub mod render;
#[cfg(test)]
mod render_tests;
