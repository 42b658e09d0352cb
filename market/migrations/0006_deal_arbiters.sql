-- the arbiter a deal names: reputation counts only disputes ruled by arbiters the market trusts
ALTER TABLE deals ADD COLUMN arbiter TEXT NOT NULL DEFAULT '';
