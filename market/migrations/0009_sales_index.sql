-- a dataset's sales per day read only the deals of its last 90 days through this index
CREATE INDEX IF NOT EXISTS deals_root_opened_at ON deals (root, opened_at);
