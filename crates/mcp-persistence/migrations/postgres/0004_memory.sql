-- Memory: conversations, their messages and full-text search over message content. See
-- mcp-core's memory.rs.

-- English stemming without stop words, so that SQLite's FTS5 `porter` index finds the same
-- messages for the same query (a stop-word list would drop words FTS5 still requires).
CREATE TEXT SEARCH DICTIONARY mcp_english_stem (TEMPLATE = snowball, LANGUAGE = english);
CREATE TEXT SEARCH CONFIGURATION mcp_search (COPY = english);
ALTER TEXT SEARCH CONFIGURATION mcp_search
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
    WITH mcp_english_stem;

CREATE TABLE conversations (
    id                 uuid        PRIMARY KEY,
    title              text,
    participants       text[]      NOT NULL DEFAULT '{}',
    metadata           jsonb       NOT NULL DEFAULT '{}',
    archived           boolean     NOT NULL DEFAULT false,
    summary            text,
    summary_through    uuid,
    summary_tokens     integer,
    summary_updated_at timestamptz,
    created_by         text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX conversations_updated ON conversations (updated_at);
CREATE INDEX conversations_participants ON conversations USING gin (participants);

-- `seq` is the arrival order: pages of a conversation use it.
CREATE TABLE messages (
    id              uuid        PRIMARY KEY,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    author          text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content         text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    pinned          boolean     NOT NULL DEFAULT false,
    tokens          integer     NOT NULL,
    created_at      timestamptz NOT NULL,
    search          tsvector    GENERATED ALWAYS AS (to_tsvector('mcp_search', content)) STORED
);
CREATE INDEX messages_conversation ON messages (conversation_id, seq);
CREATE INDEX messages_pinned ON messages (conversation_id, seq) WHERE pinned;
CREATE INDEX messages_search ON messages USING gin (search);
