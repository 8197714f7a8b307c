//! Deskpod's web portal.
//!
//! [`app`] builds the router that `main` serves and that tests drive in-process, from one
//! [`AppState`]. What lives where:
//!
//! - [`store`]: the [`Store`] trait (users, API tokens, invites, revoked sessions, secrets, the
//!   audit log) and its SQLite implementation. PostgreSQL can implement the same trait later.
//! - [`auth`]: passwords, JWT sessions in the `deskpod_session` cookie, CSRF, the sign-in rate
//!   limit and the extractors handlers use: [`CurrentUser`], [`SessionForm`], [`PublicForm`].
//! - [`authz`]: pure authorization decisions over a user and their team [`Membership`]s.
//! - [`template_rules`]: what a WorkspaceTemplate must be to be saved; the admin form, the JSON
//!   API and both backends check it before writing one.
//! - [`membership`]: where memberships come from. Team roles live in Kubernetes Team objects (or
//!   the single-host backend), not in the database; backends implement [`MembershipSource`].
//! - [`account`], [`token`], [`invite`], [`audit`]: the identity operations pages and the API share.
//! - [`http`]: the pages (askama templates under `portal/templates/`) and the JSON API under
//!   `/api/v1/`, one module with its own `router()` each.
//!
//! Where later work plugs in:
//!
//! - **Workspace pages** (`/`, catalog, create, desktop view, team page): a module under `http/`
//!   with `router() -> Router<AppState>`, merged in [`http::app`]; the placeholder home page in
//!   `http/home.rs` is replaced then. Handlers take [`CurrentUser`] (redirects to `/signin`) and
//!   [`SessionForm`] for posts (CSRF checked), and decide with [`authz`].
//! - **JSON workspace API**: routes added to `http::api::router()` under `/api/v1/`, taking
//!   [`CurrentUser`] (bearer token or cookie + `X-CSRF-Token`) and checking a [`Scope`] with
//!   [`CurrentUser::require_scope`]; bodies through [`http::api::ApiJson`] so bad JSON is a 400 JSON.
//! - **Desktop websocket proxy and `/auth/verify`**: a module under `http/` using
//!   [`CurrentUser`] and [`authz::can_view_workspace`] with memberships from
//!   [`AppState::memberships`]; the backend's [`MembershipSource`] and an [`InviteHook`] (which
//!   adds the invitee to the Team and starts the invited template) are set on the [`AppState`].
#![forbid(unsafe_code)]

pub mod account;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod backend;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod invite;
pub mod membership;
pub mod metrics;
pub mod random;
pub mod serve;
pub mod state;
pub mod store;
pub mod template_rules;
pub mod token;

pub use auth::{Auth, CurrentUser, Keys, PublicForm, RemoteAddr, SessionForm};
pub use authz::{Membership, TeamRole};
pub use config::{Config, PublicUrl};
pub use error::{Error, Result};
pub use http::app;
pub use invite::{InviteHook, RedirectHome};
pub use membership::{MembershipSource, StaticMemberships};
pub use state::AppState;
pub use store::{SqliteStore, Store};
pub use token::Scope;
