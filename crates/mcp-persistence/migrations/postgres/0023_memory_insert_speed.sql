-- Appending messages without a foreign-key check per message.
--
-- The foreign key from `messages` to `conversations` ran a query per inserted message (about a
-- tenth of a 1,000-message batch's time, in a trigger per row) to prove what `append_messages`
-- has already made sure of: it locks the conversation's row (its `UPDATE … WHERE id = $1`) before
-- it inserts, in the same transaction, and inserts nothing when the conversation is gone. It is
-- the only statement that inserts messages.
--
-- What the key also did, deleting a conversation's messages with it, is this statement-level
-- trigger: one `DELETE` per deleting statement, for every conversation it deleted. A deletion
-- racing an append waits for the append's row lock; its trigger then runs with a snapshot taken
-- after the append committed, so it deletes the new messages too. An append that comes after a
-- deletion finds no row to lock and inserts nothing.
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey;

CREATE FUNCTION mcp_delete_conversation_messages() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages m USING deleted d WHERE m.conversation_id = d.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversations_delete_messages
    AFTER DELETE ON conversations
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION mcp_delete_conversation_messages();
