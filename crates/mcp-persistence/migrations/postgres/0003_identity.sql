-- Identity: users, API keys, refresh tokens, the audit log and daily quotas. See mcp-core's
-- identity.rs. Secrets are never stored in the clear: only argon2id hashes and SHA-256 digests.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    username      text        NOT NULL UNIQUE,
    role          text        NOT NULL CHECK (role IN ('admin', 'operator', 'service', 'user')),
    password_hash text        NOT NULL,
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    prefix       text        NOT NULL UNIQUE,
    role         text        NOT NULL CHECK (role IN ('admin', 'operator', 'service', 'user')),
    secret_hash  text        NOT NULL,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- One row per refresh token; a family is every token descended from one login.
CREATE TABLE refresh_tokens (
    id         uuid        PRIMARY KEY,
    family_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- Ids are UUIDv7, so the primary key orders the log by time.
CREATE TABLE audit_log (
    id         uuid        PRIMARY KEY,
    at         timestamptz NOT NULL,
    action     text        NOT NULL,
    principal  text,
    ip         text,
    request_id text,
    details    jsonb       NOT NULL
);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_principal ON audit_log (principal, id DESC) WHERE principal IS NOT NULL;

-- Units used per subject and UTC day.
CREATE TABLE quotas (
    subject text   NOT NULL,
    day     date   NOT NULL,
    used    bigint NOT NULL CHECK (used >= 0),
    PRIMARY KEY (subject, day)
);
