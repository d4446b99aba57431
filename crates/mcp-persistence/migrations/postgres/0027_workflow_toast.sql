-- A workflow task's dependencies and dependents are arrays of random ids that never compress:
-- pglz still tried on every large one (a fan-out's root holds 10,000, about 160 kB), half the
-- cost of inserting that row. Kept out of line, uncompressed.
ALTER TABLE tasks ALTER COLUMN depends_on SET STORAGE EXTERNAL;
ALTER TABLE tasks ALTER COLUMN dependents SET STORAGE EXTERNAL;

-- A deferred chunk's JSON (about 350 kB for 1,000 tasks) compresses about fivefold, and lz4
-- does it faster than writing it out uncompressed (less WAL to flush at commit). pglz was slower
-- than both (0025). A server built without lz4 keeps it uncompressed.
DO $$
BEGIN
    ALTER TABLE workflow_deferred ALTER COLUMN tasks SET COMPRESSION lz4;
    ALTER TABLE workflow_deferred ALTER COLUMN tasks SET STORAGE EXTENDED;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
