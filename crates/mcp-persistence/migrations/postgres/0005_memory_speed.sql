-- Search reads a common word's matches newest first, in slices of `seq` (see `search` in
-- memory_postgres.rs): a BRIN index on `seq` lets a slice's bitmap scan visit only the heap
-- pages of that slice. `seq` grows with the physical order of an append-mostly table, so a
-- BRIN summary per 128 pages is tight; it costs next to nothing on insert, and
-- `autosummarize` summarizes each filled range soon (an unsummarized range is read whole).
CREATE INDEX messages_seq_brin ON messages USING brin (seq) WITH (autosummarize = on);
