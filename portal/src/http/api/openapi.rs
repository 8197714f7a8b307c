//! `GET /api/openapi.json`: the JSON API described as OpenAPI 3.1, for the `deskpod` client and
//! anyone scripting against the portal. It is written by hand next to the routes; a test asks
//! the real router for every operation listed here, so an endpoint cannot be documented without
//! existing.

use axum::Json;
use axum::routing::get;
use axum::{Router, response::IntoResponse};
use serde_json::{Value, json};

use crate::state::AppState;

/// The route serving the document (public: it holds no data, only the API's shape).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(document()).into_response() }))
}

/// One operation: a summary, the scope it needs, and optionally a request body schema.
fn operation(summary: &str, scope: Option<&str>, body: Option<Value>) -> Value {
    let mut op = json!({
        "summary": summary,
        "security": [{ "bearer": [] }, { "session": [] }],
        "responses": {
            "200": { "description": "OK" },
            "400": { "$ref": "#/components/responses/Error" },
            "401": { "$ref": "#/components/responses/Error" },
            "403": { "$ref": "#/components/responses/Error" },
            "404": { "$ref": "#/components/responses/Error" }
        }
    });
    if let Some(scope) = scope {
        op["x-deskpod-scope"] = json!(scope);
    }
    if let Some(schema) = body {
        op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    }
    op
}

fn path_params(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({ "name": n, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect(),
    )
}

/// The OpenAPI document.
pub fn document() -> Value {
    let workspace_path = path_params(&["team", "name"]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Deskpod portal API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Authenticate with `Authorization: Bearer dpt_...` (an API token, limited to its scopes) \
                            or the session cookie plus `X-CSRF-Token` on requests that change state. Errors are \
                            `{\"error\": \"...\", \"field\": \"...\"}`."
        },
        "paths": {
            "/api/v1/me": { "get": operation("The signed-in user and their team memberships", None, None) },
            "/api/v1/tokens": {
                "get": operation("My API tokens (never their secrets)", None, None),
                "post": operation("Create an API token; the secret is in this response only", Some("tokens:write"), Some(json!({
                    "type": "object", "additionalProperties": false, "required": ["name", "scopes"],
                    "properties": {
                        "name": { "type": "string", "maxLength": 64 },
                        "scopes": { "type": "array", "items": { "type": "string",
                            "enum": ["workspaces:read", "workspaces:write", "invites:write", "tokens:write", "audit:read", "admin:write", "agents:run"] } },
                        "expires_in_days": { "type": "integer", "minimum": 1, "maximum": 365 }
                    }
                })))
            },
            "/api/v1/tokens/{id}": {
                "parameters": path_params(&["id"]),
                "delete": operation("Revoke one of my API tokens", Some("tokens:write"), None)
            },
            "/api/v1/invites": {
                "post": operation("Invite someone to a team (team leads); returns the one-time link", Some("invites:write"), Some(json!({
                    "type": "object", "additionalProperties": false, "required": ["email", "team", "role"],
                    "properties": {
                        "email": { "type": "string", "format": "email" },
                        "team": { "type": "string" },
                        "role": { "type": "string", "enum": ["contractor", "engineer"] },
                        "template": { "type": "string", "description": "the workspace template started for them" },
                        "access_expires_at": { "type": "string", "format": "date-time", "description": "required for contractors" },
                        "link_valid_hours": { "type": "integer", "minimum": 1, "maximum": 720 }
                    }
                })))
            },
            "/api/v1/audit": {
                "get": with_query(
                    operation("The audit log, newest first (admins)", Some("audit:read"), None),
                    "limit",
                    json!({ "type": "integer", "minimum": 1 })
                )
            },
            "/api/v1/workspaces": {
                "get": with_query(
                    operation("Workspaces I may see, with phase, stage and the reason when blocked", Some("workspaces:read"), None),
                    "team",
                    json!({ "type": "string" })
                ),
                "post": operation("Create a workspace", Some("workspaces:write"), Some(json!({
                    "type": "object", "additionalProperties": false, "required": ["team", "name", "template"],
                    "properties": {
                        "team": { "type": "string" },
                        "name": { "type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 40 },
                        "template": { "type": "string" }
                    }
                })))
            },
            "/api/v1/workspaces/events": { "get": events_operation() },
            "/api/v1/workspaces/{team}/{name}": {
                "parameters": workspace_path.clone(),
                "get": operation("One workspace", Some("workspaces:read"), None),
                "delete": operation("Delete a workspace (its home goes by its reclaim policy)", Some("workspaces:write"), None)
            },
            "/api/v1/workspaces/{team}/{name}/start": {
                "parameters": workspace_path.clone(),
                "post": operation("Start a workspace on its home volume", Some("workspaces:write"), None)
            },
            "/api/v1/workspaces/{team}/{name}/stop": {
                "parameters": workspace_path,
                "post": operation("Stop a workspace; the home volume stays", Some("workspaces:write"), None)
            },
            "/api/v1/templates": { "get": operation("The template catalog", Some("workspaces:read"), None) },
            "/api/v1/admin/teams": {
                "get": operation("Every team with its members and quota in use (admins)", Some("admin:write"), None)
            },
            "/api/v1/admin/teams/{team}": {
                "parameters": path_params(&["team"]),
                "get": operation("A team's spec (admins)", Some("admin:write"), None),
                "put": operation(
                    "Create or replace a team (admins); a spec the backend refuses is a 400 with its message",
                    Some("admin:write"),
                    Some(json!({ "type": "object", "description": "a Team's spec as the CRD has it: displayName, quota                         (cpu, memory, storage, workspaces, ciAgents, ...), limits, members (user, role, expiresAt),                         allowLeadAccess, network" }))
                )
            },
            "/api/v1/admin/templates": {
                "get": operation("Every template with its spec (admins)", Some("admin:write"), None)
            },
            "/api/v1/admin/templates/{name}": {
                "parameters": path_params(&["name"]),
                "get": operation("A template's spec (admins)", Some("admin:write"), None),
                "put": operation(
                    "Create or replace a template (admins); a spec the backend refuses is a 400 with its message",
                    Some("admin:write"),
                    Some(json!({ "type": "object", "required": ["displayName", "image"], "description": "a                         WorkspaceTemplate's spec as the CRD has it: displayName, description, image, protocol                         (novnc, kasm), port, resources (cpuRequest, cpuLimit, memoryRequest, memoryLimit), homeSize,                         shmSize, idleTimeout, ..." }))
                ),
                "delete": operation("Delete a template (admins); 409 while workspaces use it", Some("admin:write"), None)
            },
            "/api/v1/teams/{team}": {
                "parameters": path_params(&["team"]),
                "get": operation("A team: members, quota used and hard", Some("workspaces:read"), None)
            },
            "/api/v1/agents": {
                "get": with_query(
                    operation("A team's CI agents I may see, in queue order", Some("agents:run"), None),
                    "team",
                    json!({ "type": "string" })
                ),
                "post": operation("Submit a CI job; it waits in the team's queue while the team is full", Some("agents:run"), Some(json!({
                    "type": "object", "additionalProperties": false, "required": ["team"],
                    "properties": {
                        "team": { "type": "string" },
                        "name": { "type": "string", "pattern": "^[a-z]([a-z0-9-]*[a-z0-9])?$", "maxLength": 40 },
                        "image": { "type": "string", "description": "exactly one of image and template" },
                        "template": { "type": "string" },
                        "command": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                        "args": { "type": "array", "items": { "type": "string" } },
                        "env": { "type": "object", "additionalProperties": { "type": "string" } },
                        "deadline": { "type": "string", "description": "a duration such as 30m" },
                        "ttlAfterFinished": { "type": "string", "description": "a duration such as 1h" }
                    }
                })))
            },
            "/api/v1/agents/{team}/{name}": {
                "parameters": path_params(&["team", "name"]),
                "get": operation("One CI agent: phase, queue position, exit code", Some("agents:run"), None),
                "delete": operation("Cancel (stop) and remove a CI agent", Some("agents:run"), None)
            },
            "/api/v1/agents/{team}/{name}/logs": {
                "parameters": path_params(&["team", "name"]),
                "get": with_query(
                    operation("The job's output (text/plain); with follow=true, streamed until it ends", Some("agents:run"), None),
                    "follow",
                    json!({ "type": "boolean" })
                )
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "an API token, dpt_..." },
                "session": { "type": "apiKey", "in": "cookie", "name": "deskpod_session" }
            },
            "responses": {
                "Error": {
                    "description": "What went wrong, for people",
                    "content": { "application/json": { "schema": {
                        "type": "object", "required": ["error"],
                        "properties": { "error": { "type": "string" }, "field": { "type": "string" } }
                    } } }
                }
            }
        }
    })
}

/// The live status stream: server-sent events rather than one JSON answer.
fn events_operation() -> Value {
    let mut op = operation(
        "Live status of my workspaces as server-sent events: `event: workspace` (a workspace as \
         GET /api/v1/workspaces shows it; first for each, then whenever it changes), `event: removed` \
         (`{\"team\", \"name\"}`), and a `:heartbeat` comment every 15 s. The stream ends when the session does.",
        Some("workspaces:read"),
        None,
    );
    op["responses"]["200"] = json!({
        "description": "An endless stream of events",
        "content": { "text/event-stream": { "schema": { "type": "string" } } }
    });
    op
}

/// `op` with an optional query parameter.
fn with_query(mut op: Value, name: &str, schema: Value) -> Value {
    op["parameters"] = json!([{ "name": name, "in": "query", "required": false, "schema": schema }]);
    op
}
