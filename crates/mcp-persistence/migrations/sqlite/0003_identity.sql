-- Identity: users, API keys, refresh tokens, the audit log and daily quotas. See mcp-core's
-- identity.rs. Same conventions as the task table: ids are hyphenated UUID text, instants are
-- microseconds since the epoch, JSON is text; days are `YYYY-MM-DD` text.
CREATE TABLE users (
    id            TEXT    PRIMARY KEY NOT NULL,
    username      TEXT    NOT NULL UNIQUE,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'service', 'user')),
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY NOT NULL,
    name         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL UNIQUE,
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'service', 'user')),
    secret_hash  TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE refresh_tokens (
    id         TEXT    PRIMARY KEY NOT NULL,
    family_id  TEXT    NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE audit_log (
    id         TEXT    PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,
    action     TEXT    NOT NULL,
    principal  TEXT,
    ip         TEXT,
    request_id TEXT,
    details    TEXT    NOT NULL
);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_principal ON audit_log (principal, id DESC) WHERE principal IS NOT NULL;

CREATE TABLE quotas (
    subject TEXT    NOT NULL,
    day     TEXT    NOT NULL,
    used    INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (subject, day)
) WITHOUT ROWID;
