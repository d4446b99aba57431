-- Who created each task: a `user` principal sees and cancels only its own.
ALTER TABLE tasks ADD COLUMN created_by TEXT;
CREATE INDEX tasks_created_by ON tasks (created_by, id DESC) WHERE created_by IS NOT NULL;
