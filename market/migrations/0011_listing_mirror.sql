-- 1 when the provider's signed listing says it mirrors the dataset (copied it from another
-- provider); 0 for listings stored before listings said so
ALTER TABLE listings ADD COLUMN mirror BIGINT NOT NULL DEFAULT 0;
-- listings signed before `mirror` was a signed field no longer verify: expire them (providers
-- re-announce within their TTL) rather than rank offers buyers will refuse
UPDATE listings SET expires_at = 0;
