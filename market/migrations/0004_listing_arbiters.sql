-- the arbiters a provider accepts on its deals, comma-separated 0x addresses (part of the signed listing)
ALTER TABLE listings ADD COLUMN arbiters TEXT NOT NULL DEFAULT '';
