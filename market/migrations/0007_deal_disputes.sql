-- a disputed deal's deadline for the arbiter (unix seconds) and the evidence hash the buyer committed
ALTER TABLE deals ADD COLUMN rule_by BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deals ADD COLUMN evidence TEXT NOT NULL DEFAULT '';
