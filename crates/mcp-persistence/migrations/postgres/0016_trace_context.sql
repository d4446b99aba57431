-- The W3C `traceparent` of the span that created a task (NULL when tracing was off): the node
-- that claims it, or the external worker it is assigned to, continues that trace. Read only with
-- the row; no index.
ALTER TABLE tasks ADD COLUMN traceparent text;
