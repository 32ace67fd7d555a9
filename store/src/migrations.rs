//! The schema: numbered migrations applied at open (`PRAGMA user_version` is the number
//! applied). A migration is never edited once released; changes are new entries.

/// Numbered migrations; index + 1 is the schema version after applying it.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    latest_revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE revisions (
    deployment TEXT NOT NULL,
    revision INTEGER NOT NULL,
    target TEXT NOT NULL,
    compose TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (deployment, revision)
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    labels_json TEXT NOT NULL,
    desired_revision INTEGER NOT NULL DEFAULT 0,
    desired_json TEXT,
    presence_json TEXT,
    status_json TEXT,
    last_seen TEXT,
    first_seen TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX events_by_device ON events (device, seq);
"#,
    r#"
CREATE TABLE pins (
    device TEXT NOT NULL,
    deployment TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (device, deployment)
);
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    active INTEGER NOT NULL,
    state_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX rollouts_active ON rollouts (active, deployment);
"#,
    r#"
CREATE TABLE site_windows (
    site TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    tz TEXT NOT NULL
);
"#,
    // 4: API users, API tokens (only their SHA-256), the hash-chained audit log.
    r#"
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    sites_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX api_tokens_by_user ON api_tokens (username);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    site TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_ts ON audit (ts);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    // 5: device enrollment tokens (only their SHA-256) and issued client certificates.
    r#"
CREATE TABLE enrollments (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX enrollments_by_device ON enrollments (device);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    revoked_at TEXT
);
CREATE INDEX certificates_by_identity ON certificates (identity);
"#,
    // 6: local MQTT users of the gateway's plain listener (only their password's SHA-256).
    r#"
CREATE TABLE mqtt_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
"#,
    // 7: a local MQTT user's read and write topic filters (JSON arrays; `["#"]`: everything
    // outside edgefleet/, the default and what users created before had).
    r##"
ALTER TABLE mqtt_users ADD COLUMN read_filters TEXT NOT NULL DEFAULT '["#"]';
ALTER TABLE mqtt_users ADD COLUMN write_filters TEXT NOT NULL DEFAULT '["#"]';
"##,
    // 8: audit retention: a record may be deleted only behind the newest signed checkpoint
    // (`audit.checkpoint`, whose detail is the signed head of the record before it).
    r#"
DROP TRIGGER audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    WHEN OLD.seq >= (SELECT COALESCE(MAX(seq), 0) FROM audit WHERE action = 'audit.checkpoint')
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: only records behind a signed checkpoint may be pruned'); END;
"#,
    // 9: workload policies per site (`site` NULL-free: the fleet default is the row with
    // scope 'fleet', a site's is 'site:<name>'), as the policy's JSON.
    r#"
CREATE TABLE workload_policies (
    scope TEXT PRIMARY KEY,
    policy_json TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL
);
"#,
    // 10: secrets and registry credentials, each sealed for the gateway's own key
    // (`sealed_json`, never clear text), and the public key of each issued device
    // certificate (hex SEC1), which the gateway seals for.
    r#"
CREATE TABLE revision_secrets (
    deployment TEXT NOT NULL,
    revision INTEGER NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    sealed_json TEXT NOT NULL,
    PRIMARY KEY (deployment, revision, name)
);
CREATE TABLE registry_credentials (
    host TEXT PRIMARY KEY,
    sites_json TEXT NOT NULL,
    username TEXT NOT NULL,
    digest TEXT NOT NULL,
    sealed_json TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL
);
ALTER TABLE certificates ADD COLUMN public_key TEXT;
"#,
    // 11: variables kept per site and per device (`scope` 'site:<name>' or 'device:<id>'),
    // resolved into the Compose files that refer to them.
    r#"
CREATE TABLE variables (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL,
    PRIMARY KEY (scope, name)
);
"#,
];
