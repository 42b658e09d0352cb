-- the dataset size a provider signs in its listing (what buyers size deposits by); 0 for
-- listings stored before it was signed
ALTER TABLE listings ADD COLUMN size_bytes BIGINT NOT NULL DEFAULT 0;
