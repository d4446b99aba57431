-- Memory: conversations, their messages and the FTS5 index over message content. See mcp-core's
-- memory.rs. Same conventions as the other tables: ids are hyphenated UUID text, instants are
-- microseconds since the epoch, JSON is text.
CREATE TABLE conversations (
    id                 TEXT    PRIMARY KEY NOT NULL,
    title              TEXT,
    participants       TEXT    NOT NULL DEFAULT '[]',
    metadata           TEXT    NOT NULL DEFAULT '{}',
    archived           INTEGER NOT NULL DEFAULT 0,
    summary            TEXT,
    summary_through    TEXT,
    summary_tokens     INTEGER,
    summary_updated_at INTEGER,
    created_by         TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
-- Retention finds idle conversations by their last activity.
CREATE INDEX conversations_updated ON conversations (updated_at);

-- `seq` (the rowid) is the arrival order: pages of a conversation and the FTS index use it.
CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    author          TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    pinned          INTEGER NOT NULL DEFAULT 0,
    tokens          INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, seq);
CREATE INDEX messages_pinned ON messages (conversation_id, seq) WHERE pinned;

-- The search index holds no copy of the text (`content=`): it reads `messages` by rowid.
-- `porter` stems English words the way PostgreSQL's `mcp_search` configuration does, with no
-- stop words on either side; diacritics are kept, as PostgreSQL keeps them.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content,
    content = 'messages',
    content_rowid = 'seq',
    tokenize = 'porter unicode61 remove_diacritics 0'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.seq, new.content);
END;
