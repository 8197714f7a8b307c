//! [`Store`] on an embedded SQLite database, compiled into the binary (rusqlite's `bundled`).
//!
//! One connection behind a mutex, used from `spawn_blocking` so no query runs on the async
//! runtime's threads. The schema is versioned with `PRAGMA user_version`: [`MIGRATIONS`]`[i]`
//! takes the database from version `i` to `i + 1`, each in its own transaction, so reopening a
//! database applies only what is missing. File databases use WAL and are created readable by
//! their owner only (they hold the session signing key).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    ApiToken, AuditEntry, AuditRecord, AuditRetention, GlobalRole, Invite, InviteAccount, InviteRole, NewApiToken,
    NewInvite, NewUser, Outcome, SecretHash, Store, User,
};
use crate::error::{Error, Result};
use crate::token::Scope;

/// Schema migrations, applied in order; never edit one that has shipped, append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY,             -- e-mail address, lower-cased
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    password_hash TEXT,                         -- argon2id PHC string
    created_at    INTEGER NOT NULL,             -- Unix seconds, like every time below
    disabled      INTEGER NOT NULL DEFAULT 0,
    expires_at    INTEGER
) STRICT;

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,                -- space-separated
    secret_sha256 BLOB NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER
) STRICT;
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

CREATE TABLE invites (
    id                TEXT PRIMARY KEY,
    token_sha256      BLOB NOT NULL UNIQUE,
    email             TEXT NOT NULL,
    team              TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('contractor', 'engineer')),
    template          TEXT,
    access_expires_at INTEGER,
    link_expires_at   INTEGER NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    used_at           INTEGER
) STRICT;

CREATE TABLE revoked_sessions (
    jti        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    object      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    remote_addr TEXT
) STRICT;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    r#"
-- Single-host mode (backend/docker): teams, templates and workspaces. Teams and templates are
-- the controller's Team and WorkspaceTemplate objects as JSON, the same types the Kubernetes
-- backend reads from the API server.
CREATE TABLE docker_teams (
    name   TEXT PRIMARY KEY,
    object TEXT NOT NULL
) STRICT;

CREATE TABLE docker_templates (
    name   TEXT PRIMARY KEY,
    object TEXT NOT NULL
) STRICT;

CREATE TABLE docker_workspaces (
    team         TEXT NOT NULL,
    name         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    template     TEXT NOT NULL,
    running      INTEGER NOT NULL,             -- what the owner wants
    vnc_password TEXT NOT NULL,                -- never logged, never sent to a browser
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,                      -- the last start asked for
    last_input   INTEGER,                      -- keyboard or pointer input, for idle culling
    deleting     INTEGER NOT NULL DEFAULT 0,   -- deletion asked for, container or volume left
    failure      TEXT,                         -- why the last start failed
    PRIMARY KEY (team, name)
) STRICT;
"#,
    r#"
-- Single-host CI agents (backend/docker/agents.rs): the controller's CiAgentSpec as JSON and what
-- became of the job. seq orders each team's queue (first come, first served).
CREATE TABLE docker_agents (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    team        TEXT NOT NULL,
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    image       TEXT NOT NULL,
    phase       TEXT NOT NULL CHECK (phase IN ('Queued', 'Starting', 'Running', 'Succeeded', 'Failed', 'TimedOut')),
    exit_code   INTEGER,
    message     TEXT,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    UNIQUE (team, name)
) STRICT;
"#,
    r#"
-- Audit retention (AuditRetention): the oldest entries may be removed, by the retention pass only.
-- It writes the newest id it removes to audit_prune for the length of its transaction; any other
-- delete, and every update, is still refused.
CREATE TABLE audit_prune (
    upto INTEGER NOT NULL
) STRICT;
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.id > COALESCE((SELECT MAX(upto) FROM audit_prune), 0)
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only; only the retention removes its oldest entries'); END;
"#,
];

/// The SQLite [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date;
    /// `:memory:` gives a private in-memory database.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path)).await?
    }

    /// [`SqliteStore::open`] for callers outside the async runtime.
    pub fn open_blocking(path: &Path) -> Result<Self> {
        let opening = |source: rusqlite::Error| Error::Store { step: "opening the database", source: source.into() };
        let mut conn = if path == Path::new(":memory:") {
            Connection::open_in_memory().map_err(opening)?
        } else {
            create_owner_only(path)?;
            let conn = Connection::open(path).map_err(opening)?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(opening)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(journal_mode = %mode, "SQLite did not switch to WAL");
            }
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(opening)?;
            conn
        };
        conn.pragma_update(None, "foreign_keys", true).map_err(opening)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(opening)?;
        migrate(&mut conn)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::open_blocking(Path::new(":memory:"))
    }

    /// Runs `f` on the connection in a blocking task; a failure is reported as `step`. The
    /// single-host backend keeps its tables in the same database through this.
    pub(crate) fn run<T, F>(&self, step: &'static str, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || {
                // A panic while holding the lock rolled its transaction back; the connection is fine.
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut conn)
            })
            .await?;
            result.map_err(|source| store_error(step, source))
        })
    }
}

/// Creates the database file readable and writable by its owner only, if it does not exist.
fn create_owner_only(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Store { step: "creating the database file", source: e.into() }),
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let failed = |source: rusqlite::Error| Error::Store { step: "migrating the schema", source: source.into() };
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(failed)?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Store {
            step: "migrating the schema",
            source: format!(
                "the database has schema version {version}, newer than this portal's {}; use a newer portal",
                MIGRATIONS.len()
            )
            .into(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", schema_version(index + 1)).map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    Ok(())
}

fn schema_version(applied: usize) -> i64 {
    i64::try_from(applied).expect("fewer migrations than i64::MAX")
}

fn store_error(step: &'static str, source: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(failure, _) = &source
        && (failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
    {
        return Error::Conflict { field: None, message: format!("{step}: it already exists") };
    }
    Error::Store { step, source: source.into() }
}

fn seconds(at: Timestamp) -> i64 {
    at.as_second()
}

fn timestamp(row: &Row<'_>, index: usize) -> rusqlite::Result<Timestamp> {
    let seconds: i64 = row.get(index)?;
    Timestamp::from_second(seconds)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Integer, e.into()))
}

fn optional_timestamp(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<Timestamp>> {
    match row.get::<_, Option<i64>>(index)? {
        None => Ok(None),
        Some(_) => timestamp(row, index).map(Some),
    }
}

fn parsed<T>(row: &Row<'_>, index: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let raw: String = row.get(index)?;
    parse(&raw).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown value {raw:?}").into(),
        )
    })
}

const USER_COLUMNS: &str = "id, display_name, role, password_hash, created_at, disabled, expires_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        display_name: row.get(1)?,
        role: parsed(row, 2, GlobalRole::parse)?,
        password_hash: row.get(3)?,
        created_at: timestamp(row, 4)?,
        disabled: row.get(5)?,
        expires_at: optional_timestamp(row, 6)?,
    })
}

const TOKEN_COLUMNS: &str = "id, user_id, name, scopes, created_at, expires_at, revoked_at";

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<ApiToken> {
    let scopes: String = row.get(3)?;
    Ok(ApiToken {
        id: row.get(0)?,
        user_id: row.get(1)?,
        name: row.get(2)?,
        // A scope this version does not know grants nothing.
        scopes: scopes.split_whitespace().filter_map(Scope::parse).collect(),
        created_at: timestamp(row, 4)?,
        expires_at: timestamp(row, 5)?,
        revoked_at: optional_timestamp(row, 6)?,
    })
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
}

const INVITE_COLUMNS: &str =
    "id, email, team, role, template, access_expires_at, link_expires_at, created_by, created_at, used_at";

fn invite_from_row(row: &Row<'_>) -> rusqlite::Result<Invite> {
    Ok(Invite {
        id: row.get(0)?,
        email: row.get(1)?,
        team: row.get(2)?,
        role: parsed(row, 3, InviteRole::parse)?,
        template: row.get(4)?,
        access_expires_at: optional_timestamp(row, 5)?,
        link_expires_at: timestamp(row, 6)?,
        created_by: row.get(7)?,
        created_at: timestamp(row, 8)?,
        used_at: optional_timestamp(row, 9)?,
    })
}

fn insert_user(conn: &Connection, user: &NewUser, now: Timestamp) -> rusqlite::Result<User> {
    conn.execute(
        "INSERT INTO users (id, display_name, role, password_hash, created_at, disabled, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
        params![
            user.id,
            user.display_name,
            user.role.as_str(),
            user.password_hash,
            seconds(now),
            user.expires_at.map(seconds)
        ],
    )?;
    conn.query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"), [&user.id], user_from_row)
}

impl Store for SqliteStore {
    fn create_user(&self, user: NewUser) -> BoxFuture<'_, Result<User>> {
        let created = self.run("creating a user", move |conn| insert_user(conn, &user, Timestamp::now()));
        Box::pin(async move {
            created.await.map_err(|e| match e {
                Error::Conflict { .. } => Error::Conflict {
                    field: Some("email"),
                    message: "an account with this e-mail already exists".into(),
                },
                other => other,
            })
        })
    }

    fn user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<User>>> {
        let id = id.to_owned();
        self.run("reading a user", move |conn| {
            conn.query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"), [id], user_from_row).optional()
        })
    }

    fn set_password_hash<'a>(&'a self, id: &'a str, hash: String) -> BoxFuture<'a, Result<()>> {
        let id = id.to_owned();
        let changed = self.run("setting a password", move |conn| {
            conn.execute("UPDATE users SET password_hash = ?1 WHERE id = ?2", params![hash, id])
        });
        Box::pin(async move { found(changed.await?, "no such user") })
    }

    fn set_disabled<'a>(&'a self, id: &'a str, disabled: bool) -> BoxFuture<'a, Result<()>> {
        let id = id.to_owned();
        let changed = self.run("disabling a user", move |conn| {
            conn.execute("UPDATE users SET disabled = ?1 WHERE id = ?2", params![disabled, id])
        });
        Box::pin(async move { found(changed.await?, "no such user") })
    }

    fn has_admin(&self) -> BoxFuture<'_, Result<bool>> {
        self.run("looking for an admin", |conn| {
            conn.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')", [], |row| row.get(0))
        })
    }

    fn create_token(&self, token: NewApiToken) -> BoxFuture<'_, Result<ApiToken>> {
        self.run("creating an API token", move |conn| {
            conn.execute(
                "INSERT INTO api_tokens (id, user_id, name, scopes, secret_sha256, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    token.id,
                    token.user_id,
                    token.name,
                    scopes_text(&token.scopes),
                    token.secret_hash,
                    seconds(Timestamp::now()),
                    seconds(token.expires_at)
                ],
            )?;
            conn.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"),
                [&token.id],
                token_from_row,
            )
        })
    }

    fn token_by_secret_hash<'a>(&'a self, hash: &'a SecretHash) -> BoxFuture<'a, Result<Option<ApiToken>>> {
        let hash = *hash;
        self.run("reading an API token", move |conn| {
            conn.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_sha256 = ?1"),
                [hash],
                token_from_row,
            )
            .optional()
        })
    }

    fn tokens_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<ApiToken>>> {
        let user_id = user_id.to_owned();
        self.run("listing API tokens", move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ?1 ORDER BY created_at DESC, rowid DESC"
            ))?;
            statement.query_map([user_id], token_from_row)?.collect()
        })
    }

    fn revoke_token<'a>(&'a self, user_id: &'a str, id: &'a str, at: Timestamp) -> BoxFuture<'a, Result<bool>> {
        let (user_id, id) = (user_id.to_owned(), id.to_owned());
        self.run("revoking an API token", move |conn| {
            conn.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2 AND user_id = ?3",
                params![seconds(at), id, user_id],
            )
            .map(|changed| changed > 0)
        })
    }

    fn create_invite(&self, invite: NewInvite) -> BoxFuture<'_, Result<Invite>> {
        self.run("creating an invite", move |conn| {
            conn.execute(
                "INSERT INTO invites (id, token_sha256, email, team, role, template, access_expires_at,
                                      link_expires_at, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    invite.id,
                    invite.token_hash,
                    invite.email,
                    invite.team,
                    invite.role.as_str(),
                    invite.template,
                    invite.access_expires_at.map(seconds),
                    seconds(invite.link_expires_at),
                    invite.created_by,
                    seconds(Timestamp::now())
                ],
            )?;
            conn.query_row(
                &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = ?1"),
                [&invite.id],
                invite_from_row,
            )
        })
    }

    fn invite_by_token_hash<'a>(&'a self, hash: &'a SecretHash) -> BoxFuture<'a, Result<Option<Invite>>> {
        let hash = *hash;
        self.run("reading an invite", move |conn| {
            conn.query_row(
                &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE token_sha256 = ?1"),
                [hash],
                invite_from_row,
            )
            .optional()
        })
    }

    fn redeem_invite(&self, invite_id: String, at: Timestamp, account: InviteAccount) -> BoxFuture<'_, Result<User>> {
        let redeemed = self.run("accepting an invite", move |conn| {
            let tx = conn.transaction()?;
            let claimed = tx.execute(
                "UPDATE invites SET used_at = ?1 WHERE id = ?2 AND used_at IS NULL AND link_expires_at > ?1",
                params![seconds(at), invite_id],
            )?;
            if claimed == 0 {
                return Ok(None);
            }
            let user = match &account {
                InviteAccount::Create(user) => insert_user(&tx, user, at)?,
                InviteAccount::Existing { user_id, expires_at } => {
                    tx.execute(
                        "UPDATE users SET expires_at = ?1 WHERE id = ?2",
                        params![expires_at.map(seconds), user_id],
                    )?;
                    tx.query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"), [user_id], user_from_row)?
                }
            };
            tx.commit()?;
            Ok(Some(user))
        });
        Box::pin(async move {
            redeemed.await?.ok_or_else(|| Error::Gone("This invite link was used or has expired meanwhile.".into()))
        })
    }

    fn revoke_session(&self, jti: String, until: Timestamp) -> BoxFuture<'_, Result<()>> {
        self.run("signing a session out", move |conn| {
            conn.execute("DELETE FROM revoked_sessions WHERE expires_at < ?1", [seconds(Timestamp::now())])?;
            conn.execute(
                "INSERT OR IGNORE INTO revoked_sessions (jti, expires_at) VALUES (?1, ?2)",
                params![jti, seconds(until)],
            )?;
            Ok(())
        })
    }

    fn is_session_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool>> {
        let jti = jti.to_owned();
        self.run("checking a session", move |conn| {
            conn.query_row("SELECT EXISTS (SELECT 1 FROM revoked_sessions WHERE jti = ?1)", [jti], |row| row.get(0))
        })
    }

    fn secret_or_insert(&self, name: &'static str, candidate: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>> {
        self.run("reading a secret", move |conn| {
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)", params![name, candidate])?;
            conn.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |row| row.get(0))
        })
    }

    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, Result<()>> {
        self.run("writing the audit log", move |conn| {
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, object, outcome, remote_addr) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    seconds(entry.at),
                    entry.actor,
                    entry.action,
                    entry.object,
                    entry.outcome.as_str(),
                    entry.remote_addr
                ],
            )?;
            Ok(())
        })
    }

    fn prune_audit(&self, retention: AuditRetention, now: Timestamp) -> BoxFuture<'_, Result<u64>> {
        self.run("applying the audit retention", move |conn| {
            let tx = conn.transaction()?;
            let mut upto: Option<i64> = None;
            if let Some(max_age) = retention.max_age {
                let cutoff = seconds(now).saturating_sub(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX));
                // Ids grow with time: everything before the first entry young enough goes.
                let first_kept: Option<i64> = tx
                    .query_row("SELECT id FROM audit_log WHERE at >= ?1 ORDER BY id LIMIT 1", [cutoff], |row| {
                        row.get(0)
                    })
                    .optional()?;
                let by_age = match first_kept {
                    Some(id) => Some(id - 1),
                    None => tx.query_row("SELECT MAX(id) FROM audit_log", [], |row| row.get(0))?,
                };
                upto = upto.max(by_age);
            }
            if let Some(max_entries) = retention.max_entries {
                let by_count: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET ?1",
                        [i64::try_from(max_entries).unwrap_or(i64::MAX)],
                        |row| row.get(0),
                    )
                    .optional()?;
                upto = upto.max(by_count);
            }
            let Some(upto) = upto.filter(|&id| id > 0) else {
                return Ok(0);
            };
            tx.execute("INSERT INTO audit_prune (upto) VALUES (?1)", [upto])?;
            let removed = tx.execute("DELETE FROM audit_log WHERE id <= ?1", [upto])?;
            tx.execute("DELETE FROM audit_prune", [])?;
            tx.commit()?;
            Ok(removed as u64)
        })
    }

    fn audit_log(&self, limit: u32) -> BoxFuture<'_, Result<Vec<AuditRecord>>> {
        self.run("reading the audit log", move |conn| {
            let mut statement = conn.prepare(
                "SELECT id, at, actor, action, object, outcome, remote_addr FROM audit_log ORDER BY id DESC LIMIT ?1",
            )?;
            statement
                .query_map([limit], |row| {
                    Ok(AuditRecord {
                        id: row.get(0)?,
                        entry: AuditEntry {
                            at: timestamp(row, 1)?,
                            actor: row.get(2)?,
                            action: row.get(3)?,
                            object: row.get(4)?,
                            outcome: parsed(row, 5, Outcome::parse)?,
                            remote_addr: row.get(6)?,
                        },
                    })
                })?
                .collect()
        })
    }
}

/// `Ok` when an update changed a row, [`Error::NotFound`] otherwise.
fn found(changed: usize, message: &str) -> Result<()> {
    if changed == 0 { Err(Error::NotFound(message.to_owned())) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jiff::SignedDuration;

    use super::*;

    /// A directory under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "deskpod-portal-store-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn new_user(id: &str, role: GlobalRole) -> NewUser {
        NewUser {
            id: id.into(),
            display_name: id.split('@').next().unwrap().into(),
            role,
            password_hash: Some("$argon2id$fake".into()),
            expires_at: None,
        }
    }

    fn new_token(id: &str, user: &str, secret: u8) -> NewApiToken {
        NewApiToken {
            id: id.into(),
            user_id: user.into(),
            name: format!("token {id}"),
            scopes: vec![Scope::WorkspacesRead, Scope::InvitesWrite],
            secret_hash: [secret; 32],
            expires_at: Timestamp::now() + SignedDuration::from_hours(24),
        }
    }

    fn new_invite(id: &str, token: u8, link_expires_at: Timestamp) -> NewInvite {
        NewInvite {
            id: id.into(),
            token_hash: [token; 32],
            email: "carol@example.com".into(),
            team: "platform".into(),
            role: InviteRole::Contractor,
            template: Some("python".into()),
            access_expires_at: Some(Timestamp::from_second(2_000_000_000).unwrap()),
            link_expires_at,
            created_by: "lead@example.com".into(),
        }
    }

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at: Timestamp::from_second(1_700_000_000).unwrap(),
            actor: "alice@example.com".into(),
            action: action.into(),
            object: "x".into(),
            outcome: Outcome::Success,
            remote_addr: Some("127.0.0.1".into()),
        }
    }

    /// Runs every store operation once, on whichever database it is given.
    async fn exercise(store: &SqliteStore) {
        assert!(!store.has_admin().await.unwrap());
        let alice = store.create_user(new_user("alice@example.com", GlobalRole::Admin)).await.unwrap();
        assert!(alice.is_admin() && !alice.disabled);
        assert!(store.has_admin().await.unwrap());
        let again = store.create_user(new_user("alice@example.com", GlobalRole::User)).await.unwrap_err();
        assert!(matches!(again, Error::Conflict { field: Some("email"), .. }), "{again:?}");
        assert_eq!(store.user("alice@example.com").await.unwrap(), Some(alice.clone()));
        assert_eq!(store.user("nobody@example.com").await.unwrap(), None);

        store.set_password_hash("alice@example.com", "$argon2id$new".into()).await.unwrap();
        store.set_disabled("alice@example.com", true).await.unwrap();
        let changed = store.user("alice@example.com").await.unwrap().unwrap();
        assert_eq!((changed.password_hash.as_deref(), changed.disabled), (Some("$argon2id$new"), true));
        assert!(matches!(store.set_disabled("nobody@example.com", true).await, Err(Error::NotFound(_))));

        store.create_user(new_user("bob@example.com", GlobalRole::User)).await.unwrap();
        let token = store.create_token(new_token("t1", "alice@example.com", 1)).await.unwrap();
        assert_eq!(token.scopes, vec![Scope::WorkspacesRead, Scope::InvitesWrite]);
        store.create_token(new_token("t2", "alice@example.com", 2)).await.unwrap();
        store.create_token(new_token("t3", "bob@example.com", 3)).await.unwrap();
        assert_eq!(store.token_by_secret_hash(&[1; 32]).await.unwrap(), Some(token.clone()));
        assert_eq!(store.token_by_secret_hash(&[9; 32]).await.unwrap(), None);
        let ids: Vec<_> = store.tokens_of("alice@example.com").await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["t2", "t1"]);

        let at = Timestamp::from_second(1_800_000_000).unwrap();
        assert!(!store.revoke_token("bob@example.com", "t1", at).await.unwrap(), "bob must not revoke alice's token");
        assert!(store.token_by_secret_hash(&[1; 32]).await.unwrap().unwrap().revoked_at.is_none());
        assert!(store.revoke_token("alice@example.com", "t1", at).await.unwrap());
        let later = Timestamp::from_second(1_900_000_000).unwrap();
        assert!(store.revoke_token("alice@example.com", "t1", later).await.unwrap());
        let revoked = store.token_by_secret_hash(&[1; 32]).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(at), "revoking twice keeps the first time");
        assert!(!revoked.is_usable_at(Timestamp::now()));

        let future = Timestamp::now() + SignedDuration::from_hours(1);
        let invite = store.create_invite(new_invite("i1", 7, future)).await.unwrap();
        assert_eq!(store.invite_by_token_hash(&[7; 32]).await.unwrap(), Some(invite.clone()));
        let contractor =
            NewUser { expires_at: invite.access_expires_at, ..new_user("carol@example.com", GlobalRole::User) };
        let now = Timestamp::now();
        let carol = store.redeem_invite("i1".into(), now, InviteAccount::Create(contractor.clone())).await.unwrap();
        assert_eq!(carol.expires_at, invite.access_expires_at);
        assert!(store.invite_by_token_hash(&[7; 32]).await.unwrap().unwrap().used_at.is_some());
        let reused = store.redeem_invite("i1".into(), now, InviteAccount::Create(contractor)).await;
        assert!(matches!(reused, Err(Error::Gone(_))), "{reused:?}");

        let past = Timestamp::now() - SignedDuration::from_hours(1);
        store.create_invite(new_invite("i2", 8, past)).await.unwrap();
        let expired = store.redeem_invite(
            "i2".into(),
            now,
            InviteAccount::Existing { user_id: "bob@example.com".into(), expires_at: None },
        );
        assert!(matches!(expired.await, Err(Error::Gone(_))));
        store.create_invite(new_invite("i3", 9, future)).await.unwrap();
        let extended = Some(Timestamp::from_second(2_100_000_000).unwrap());
        let bob = store
            .redeem_invite(
                "i3".into(),
                now,
                InviteAccount::Existing { user_id: "bob@example.com".into(), expires_at: extended },
            )
            .await
            .unwrap();
        assert_eq!(bob.expires_at, extended);

        assert!(!store.is_session_revoked("jti-1").await.unwrap());
        store.revoke_session("jti-1".into(), future).await.unwrap();
        store.revoke_session("jti-1".into(), future).await.unwrap();
        assert!(store.is_session_revoked("jti-1").await.unwrap());
        assert!(!store.is_session_revoked("jti-2").await.unwrap());

        assert_eq!(store.secret_or_insert("key", vec![1, 2, 3]).await.unwrap(), vec![1, 2, 3]);
        assert_eq!(store.secret_or_insert("key", vec![4, 5, 6]).await.unwrap(), vec![1, 2, 3]);

        for action in ["one", "two", "three"] {
            store.append_audit(entry(action)).await.unwrap();
        }
        let log = store.audit_log(2).await.unwrap();
        let actions: Vec<_> = log.iter().map(|r| r.entry.action.as_str()).collect();
        assert_eq!(actions, ["three", "two"]);
        assert_eq!(log[0].entry, entry("three"));
        assert!(log[0].id > log[1].id);
    }

    #[tokio::test]
    async fn every_operation_works_in_memory() {
        exercise(&SqliteStore::open_in_memory().unwrap()).await;
    }

    #[tokio::test]
    async fn a_file_database_keeps_its_data_and_migrates_once() {
        let dir = TempDir::new();
        let path = dir.0.join("deskpod.db");
        exercise(&SqliteStore::open(&path).await.unwrap()).await;

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the database holds the signing key");
        }

        let reopened = SqliteStore::open(&path).await.unwrap();
        assert!(reopened.user("alice@example.com").await.unwrap().is_some());
        assert_eq!(reopened.secret_or_insert("key", vec![9]).await.unwrap(), vec![1, 2, 3]);
        assert_eq!(reopened.audit_log(10).await.unwrap().len(), 3);
        let (version, journal): (i64, String) = reopened
            .run("test", |conn| {
                let version = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
                let journal = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
                Ok((version, journal))
            })
            .await
            .unwrap();
        assert_eq!(version, schema_version(MIGRATIONS.len()));
        assert_eq!(journal, "wal");
    }

    #[tokio::test]
    async fn a_database_from_a_newer_portal_is_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("deskpod.db");
        drop(SqliteStore::open(&path).await.unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema_version(MIGRATIONS.len() + 1)).unwrap();
        drop(conn);
        let error = SqliteStore::open(&path).await.err().expect("a newer schema must be refused");
        assert!(error.to_string().contains("newer than this portal"), "{error}");
    }

    #[tokio::test]
    async fn the_retention_removes_the_oldest_entries_by_age_and_by_count_and_nothing_else() {
        let store = SqliteStore::open_in_memory().unwrap();
        let day = 24 * 3600;
        let now = Timestamp::from_second(1_700_000_000 + 100 * day).unwrap();
        for age_days in [400, 366, 364, 10, 2, 1, 0] {
            let mut old = entry(&format!("age.{age_days}"));
            old.at = Timestamp::from_second(now.as_second() - age_days * day).unwrap();
            store.append_audit(old).await.unwrap();
        }
        let actions = |log: Vec<AuditRecord>| log.into_iter().map(|r| r.entry.action).collect::<Vec<_>>();
        let keep_everything = AuditRetention { max_age: None, max_entries: None };
        assert_eq!(store.prune_audit(keep_everything, now).await.unwrap(), 0);

        let a_year = AuditRetention { max_age: Some(Duration::from_secs(365 * day as u64)), max_entries: None };
        assert_eq!(store.prune_audit(a_year, now).await.unwrap(), 2);
        assert_eq!(actions(store.audit_log(10).await.unwrap()), ["age.0", "age.1", "age.2", "age.10", "age.364"]);
        assert_eq!(store.prune_audit(a_year, now).await.unwrap(), 0, "nothing more is old enough");

        let three = AuditRetention { max_age: None, max_entries: Some(3) };
        assert_eq!(store.prune_audit(three, now).await.unwrap(), 2);
        assert_eq!(actions(store.audit_log(10).await.unwrap()), ["age.0", "age.1", "age.2"]);

        // New entries keep their ids growing; the defaults keep them all.
        store.append_audit(entry("after")).await.unwrap();
        assert_eq!(
            store.prune_audit(AuditRetention::default(), Timestamp::from_second(1_700_000_000).unwrap()).await.unwrap(),
            0
        );
        let log = store.audit_log(10).await.unwrap();
        assert_eq!(log.len(), 4);
        assert!(log[0].id > log[1].id);

        // Entries older than every kept one are gone; deleting any other is still refused.
        let error =
            store.run("tampering", |conn| conn.execute("DELETE FROM audit_log WHERE action = 'age.1'", [])).await;
        assert!(error.unwrap_err().to_string().contains("append-only"));
        let all_old = AuditRetention { max_age: Some(Duration::from_secs(1)), max_entries: None };
        let far_future = Timestamp::from_second(now.as_second() + 1000 * day).unwrap();
        assert_eq!(store.prune_audit(all_old, far_future).await.unwrap(), 4);
        assert!(store.audit_log(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_audit_log_cannot_be_changed_or_emptied() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.append_audit(entry("signin")).await.unwrap();
        for sql in ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"] {
            let error = store.run("tampering", move |conn| conn.execute(sql, [])).await.unwrap_err();
            assert!(error.to_string().contains("append-only"), "{sql}: {error}");
        }
        assert_eq!(store.audit_log(10).await.unwrap()[0].entry, entry("signin"));
    }
}
