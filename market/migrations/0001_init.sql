-- One schema for SQLite and Postgres (sqlx Any driver): portable types only. Addresses, hashes
-- and token amounts are lowercase 0x-hex / decimal TEXT (amounts exceed 64 bits); a DOUBLE
-- copy of prices exists only for ordering and filtering.

CREATE TABLE cursor (
    name TEXT PRIMARY KEY,
    block BIGINT NOT NULL,
    block_hash TEXT NOT NULL
);

-- every indexed log, keyed by its position: re-reading a block range is idempotent
CREATE TABLE events (
    block BIGINT NOT NULL,
    log_index BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
);

CREATE TABLE datasets (
    root TEXT PRIMARY KEY,
    vendor TEXT NOT NULL,
    royalty_bps BIGINT NOT NULL,
    manifest_hash TEXT NOT NULL,
    price_hint TEXT NOT NULL,
    block BIGINT NOT NULL
);

-- what listings told us about a dataset (its manifest)
CREATE TABLE dataset_meta (
    root TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    size BIGINT NOT NULL,
    files TEXT NOT NULL,
    manifest_verified BIGINT NOT NULL
);

-- full-text index: lowercase terms of name, description, tags and file names
CREATE TABLE terms (
    term TEXT NOT NULL,
    root TEXT NOT NULL,
    PRIMARY KEY (term, root)
);

CREATE TABLE listings (
    provider TEXT NOT NULL,
    root TEXT NOT NULL,
    node_id TEXT NOT NULL,
    addrs TEXT NOT NULL,
    region TEXT NOT NULL,
    price_per_byte TEXT NOT NULL,
    price_gib DOUBLE PRECISION NOT NULL,
    window_bytes BIGINT NOT NULL,
    capacity_mibps BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (provider, root)
);
CREATE INDEX listings_root ON listings (root);
CREATE INDEX listings_price ON listings (price_gib);

CREATE TABLE deals (
    id TEXT PRIMARY KEY,
    buyer TEXT NOT NULL,
    provider TEXT NOT NULL,
    root TEXT NOT NULL,
    price_per_byte TEXT NOT NULL,
    max_amount TEXT NOT NULL,
    window_bytes BIGINT NOT NULL,
    expiry BIGINT NOT NULL,
    opened_block BIGINT NOT NULL,
    redeemed TEXT NOT NULL,
    refunded TEXT NOT NULL,
    state TEXT NOT NULL,
    buyer_won BIGINT NOT NULL
);
CREATE INDEX deals_provider ON deals (provider);

-- the redeemed total of a deal after each Redeemed event (receipts over time)
CREATE TABLE redemptions (
    deal TEXT NOT NULL,
    block BIGINT NOT NULL,
    log_index BIGINT NOT NULL,
    cumulative TEXT NOT NULL,
    PRIMARY KEY (deal, block, log_index)
);
