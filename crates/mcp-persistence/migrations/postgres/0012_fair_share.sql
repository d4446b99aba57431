-- Fair sharing between tenants: the subject of the `user` or `service` principal that created a
-- task, whose share of a node's slots it counts against (NULL for operators, admins and the hub
-- itself). Claims skip the tasks of a share key at its cap; no index: the claim reads it only on
-- rows it already found through the runnable-task index.
ALTER TABLE tasks ADD COLUMN share_key text;
