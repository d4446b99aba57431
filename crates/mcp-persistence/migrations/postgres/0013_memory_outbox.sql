-- Memory events through the webhook outbox, and who wrote each message.
--
-- `outbox` rows now carry either a task event (`task`: the task row after the transition, as
-- before) or a memory event (`data`: the conversation or message after the change, exactly as
-- webhook receivers get it), written by the memory store in the change's own transaction.
ALTER TABLE outbox ALTER COLUMN task DROP NOT NULL;
ALTER TABLE outbox ADD COLUMN data jsonb;
ALTER TABLE outbox ADD CONSTRAINT outbox_task_or_data CHECK ((task IS NULL) <> (data IS NULL));

-- `created_by`: the subject of the principal that wrote the message (`author` is a display
-- name the writer chooses). NULL for messages stored before it was recorded.
ALTER TABLE messages ADD COLUMN created_by text;
