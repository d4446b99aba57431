-- A node wakes its own claim loop after its own inserts, so the wake-up its LISTEN would get
-- for them only spends a claim. The trigger now names the inserting connection's `mcp.origin`
-- (each store sets its own on every connection of its pool, `postgres/mod.rs`), and a store's
-- listener skips the notifications carrying its own. Other connections send '' and wake all.
CREATE OR REPLACE FUNCTION tasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mcp_tasks.' || TG_TABLE_SCHEMA,
                      coalesce(current_setting('mcp.origin', true), ''));
    RETURN NULL;
END $$;
