-- block times (unix seconds) of indexed events, so pages show receipts and sales over time;
-- 0 for rows indexed before this migration (pages fall back to block numbers)
ALTER TABLE events ADD COLUMN block_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deals ADD COLUMN opened_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE redemptions ADD COLUMN block_time BIGINT NOT NULL DEFAULT 0;
