-- buyers' signed reports that a deal's provider sent bytes that did not verify: one per deal
CREATE TABLE faults (
    deal TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    verified_bytes BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX faults_provider ON faults (provider);
