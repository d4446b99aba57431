-- Runtime settings and feature flags (mcp-core's `settings` and `flags`): the cluster's source
-- of truth, read by every node every poll interval. `value` is a setting's override, or a flag
-- (`{"enabled":…,"percentage":…,"roles":[…],"subjects":[…]}`).
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT
);

CREATE TABLE flags (
    name       TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT
);
