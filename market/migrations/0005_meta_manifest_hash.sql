-- the manifest that set a dataset's description (blake3, 0x-hex): a listing carrying another one
-- cannot rewrite it unless the hash is registered on chain or the registered vendor lists it
ALTER TABLE dataset_meta ADD COLUMN manifest_hash TEXT NOT NULL DEFAULT '';
