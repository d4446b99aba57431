-- The webhook outbox and pending Discord follow-ups: cluster state that must outlive any node.
--
-- `outbox`: one row per task transition some enabled webhook may want, written in the same
-- transaction as the transition (so an event exists if and only if its change was stored). Any
-- node's dispatcher claims rows (a short lease in `claimed_until`, taken with SKIP LOCKED),
-- turns each into deliveries and deletes it. `task` is the task row as it was after the
-- transition.
CREATE TABLE outbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type     text        NOT NULL,
    task           jsonb       NOT NULL,
    correlation_id text,
    at             timestamptz NOT NULL,
    claimed_until  timestamptz
);

-- `discord_followups`: the follow-up a slash command owes, sent by whichever node sees its task
-- final. `sealed` holds the interaction's application id and token sealed by the SecretBox (the
-- token is a secret valid 15 minutes).
CREATE TABLE discord_followups (
    task_id    uuid        PRIMARY KEY,
    sealed     text        NOT NULL,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL
);
