-- search walks one word's datasets in name order and probes the rest: terms carry the dataset's
-- name, indexed (term, name, root); probes look terms up by (root, term) and listings by
-- (root, price)
ALTER TABLE terms ADD COLUMN name TEXT NOT NULL DEFAULT '';
UPDATE terms SET name = COALESCE((SELECT m.name FROM dataset_meta m WHERE m.root = terms.root), '');
CREATE INDEX terms_walk ON terms (term, name, root);
CREATE INDEX terms_root ON terms (root, term);
CREATE INDEX listings_root_price ON listings (root, price_gib);

-- throughput a fetcher measured on a deal, signed by the deal's buyer (EIP-712); one per deal,
-- the newest kept
CREATE TABLE reports (
    deal TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    millis BIGINT NOT NULL,
    mibps DOUBLE PRECISION NOT NULL,
    issued_at BIGINT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX reports_provider ON reports (provider);
