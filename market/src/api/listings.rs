//! `POST /listings`: signed listings in, bounded per signer and per root.

use axum::extract::rejection::JsonRejection;
use bdc_contracts::listing::market_domain;
use bdc_core::manifest::DatasetManifest;
use bdc_market_api::{ColumnEntry, FileEntry, ListingAccepted, SignedListing};
use sqlx::Row;

use super::*;
use crate::db::terms;

/// Longest a listing may be valid for.
pub(super) const MAX_LISTING_SECS: u64 = 7 * 24 * 3600;

/// Post a listing signed by the provider (EIP-712, domain "BDC Market" v1).
#[utoipa::path(post, path = "/listings", tag = "market", request_body = SignedListing,
    responses((status = 201, body = ListingAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn post_listing(
    State(st): State<AppState>,
    body: Result<Json<SignedListing>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ListingAccepted>)> {
    let Json(sl) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let l = &sl.listing;
    let signer = sl
        .signer(&market_domain(st.chain_id, st.registry))
        .map_err(|e| ApiError::Unauthorized(format!("bad signature: {e}")))?;
    if signer != l.provider {
        return Err(ApiError::Unauthorized(format!(
            "bad signature: signed by {signer:#x}, not by the listing's provider {:#x}",
            l.provider
        )));
    }
    let t = now();
    if l.expires_at <= t {
        return Err(ApiError::BadRequest(format!("listing expired at {} (now {t})", l.expires_at)));
    }
    if l.issued_at > t + 300 || l.expires_at > l.issued_at + MAX_LISTING_SECS {
        return Err(ApiError::BadRequest(
            "issued_at is in the future or the listing is valid too long (max 7 days)".into(),
        ));
    }
    if l.addrs.is_empty() || l.addrs.len() > 16 {
        return Err(ApiError::BadRequest("addrs must list 1–16 socket addresses".into()));
    }
    for a in &l.addrs {
        a.parse::<SocketAddr>().map_err(|_| ApiError::BadRequest(format!("addrs: {a:?} is not ip:port")))?;
    }
    if l.arbiters.is_empty() || l.arbiters.len() > 8 {
        return Err(ApiError::BadRequest("arbiters must list 1–8 addresses the provider accepts".into()));
    }
    let arbiters: Vec<String> = l.arbiters.iter().map(|a| format!("{a:#x}")).collect();
    if l.region.len() > 32 || l.region.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-')) {
        return Err(ApiError::BadRequest("region must be up to 32 characters of [A-Za-z0-9-]".into()));
    }
    // stored as BIGINT: a value past 2^63 would read back negative (and rank as 0)
    if [l.window, l.capacity_mibps, l.size].iter().any(|v| i64::try_from(*v).is_err()) {
        return Err(ApiError::BadRequest(format!(
            "window ({}), capacity_mibps ({}) and size ({}) must each be below 2^63",
            l.window, l.capacity_mibps, l.size
        )));
    }
    let ppb: u128 = l.price_per_byte.0;
    let root = format!("{:#x}", l.dataset_root);
    let Some(reg) = sqlx::query("SELECT manifest_hash, vendor FROM datasets WHERE root = $1")
        .bind(&root)
        .fetch_optional(&st.db.pool)
        .await?
    else {
        return Err(ApiError::Unprocessable(format!("dataset {root} is not registered on chain (or not indexed yet)")));
    };
    let manifest: DatasetManifest = DatasetManifest::from_bytes(sl.manifest.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("manifest: {e}")))?;
    let registered: String = reg.get(0);
    // the root commits to its manifest, and the manifest to its vendor: a registry entry by
    // anyone else is a squatter's, and no listing of it is taken
    let registered_vendor: String = reg.get(1);
    if let Some(v) = &manifest.vendor
        && !v.eq_ignore_ascii_case(&registered_vendor)
    {
        return Err(ApiError::Unprocessable(format!(
            "dataset {root} is registered by {registered_vendor}, but its manifest names vendor {v}"
        )));
    }
    let zero = format!("{:#x}", B256::ZERO);
    let manifest_hash = format!("0x{}", blake3::hash(sl.manifest.as_bytes()).to_hex());
    let verified = registered != zero;
    if verified && registered != manifest_hash {
        return Err(ApiError::Unprocessable(format!(
            "manifest hash {manifest_hash} differs from the one registered on chain ({registered})"
        )));
    }
    let provider = format!("{:#x}", l.provider);
    st.intake.take(&provider).map_err(|wait| {
        ApiError::TooMany(format!("{provider} lists too often: retry in {} ms", wait.as_millis().max(1)))
    })?;
    let standing = st.book.provider_has_standing(&st.db, &provider).await?;
    let mut tx = st.db.pool.begin().await?;
    let prev = sqlx::query("SELECT issued_at FROM listings WHERE provider = $1 AND root = $2")
        .bind(&provider)
        .bind(&root)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(prev) = &prev
        && prev.get::<i64, _>(0) as u64 >= l.issued_at
    {
        return Err(ApiError::Conflict(format!(
            "stale listing: one issued at {} is already stored",
            prev.get::<i64, _>(0)
        )));
    }
    let mut displaced = None;
    if prev.is_none() {
        displaced = make_room(&mut tx, &st, &provider, &root, standing, t as i64).await?;
    }
    // the dataset's description is pinned by the first manifest listed for it (or by the
    // registered hash): another provider's listing cannot rewrite it, the vendor's own can
    let pinned: Option<String> = sqlx::query("SELECT manifest_hash FROM dataset_meta WHERE root = $1")
        .bind(&root)
        .fetch_optional(&mut *tx)
        .await?
        .and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten())
        .filter(|h| !h.is_empty());
    let by_vendor = provider.eq_ignore_ascii_case(&registered_vendor);
    let write_meta = match &pinned {
        None => true,
        Some(h) if *h == manifest_hash => false,
        Some(_) if verified || by_vendor => true,
        Some(h) => {
            return Err(ApiError::Unprocessable(format!(
                "dataset {root} is described by manifest {h} (from an earlier listing; no hash is registered on \
                 chain): list it with that manifest, or have the registered vendor {registered_vendor} list it"
            )));
        }
    };
    sqlx::query(
        "INSERT INTO listings (provider, root, node_id, addrs, region, price_per_byte, price_gib, window_bytes, \
         capacity_mibps, issued_at, expires_at, signature, arbiters, size_bytes, mirror) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (provider, root) DO UPDATE SET node_id = excluded.node_id, addrs = excluded.addrs, \
         arbiters = excluded.arbiters, \
         region = excluded.region, price_per_byte = excluded.price_per_byte, price_gib = excluded.price_gib, \
         window_bytes = excluded.window_bytes, capacity_mibps = excluded.capacity_mibps, \
         issued_at = excluded.issued_at, expires_at = excluded.expires_at, signature = excluded.signature, \
         size_bytes = excluded.size_bytes, mirror = excluded.mirror",
    )
    .bind(&provider)
    .bind(&root)
    .bind(format!("{:#x}", l.provider_node_id))
    .bind(l.addrs.join(","))
    .bind(&l.region)
    .bind(ppb.to_string())
    .bind(price_gib(ppb))
    .bind(l.window as i64)
    .bind(l.capacity_mibps as i64)
    .bind(l.issued_at as i64)
    .bind(l.expires_at as i64)
    .bind(sl.signature.to_string())
    .bind(arbiters.join(","))
    .bind(l.size as i64)
    .bind(i64::from(l.mirror))
    .execute(&mut *tx)
    .await?;
    if write_meta {
        let files: Vec<FileEntry> = manifest
            .files
            .iter()
            .map(|f| FileEntry {
                name: f.name.clone(),
                size: f.size,
                media_type: f.media_type.clone(),
                columns: f
                    .columns
                    .iter()
                    .map(|c| ColumnEntry { name: c.name.clone(), data_type: c.data_type.clone() })
                    .collect(),
            })
            .collect();
        sqlx::query(
            "INSERT INTO dataset_meta (root, name, description, tags, size, files, manifest_verified, manifest_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (root) DO UPDATE SET name = excluded.name, \
             description = excluded.description, tags = excluded.tags, size = excluded.size, files = excluded.files, \
             manifest_verified = excluded.manifest_verified, manifest_hash = excluded.manifest_hash",
        )
        .bind(&root)
        .bind(&manifest.name)
        .bind(&manifest.description)
        .bind(manifest.tags.iter().map(|t| t.to_lowercase()).collect::<Vec<_>>().join(","))
        .bind(manifest.total_size() as i64)
        .bind(serde_json::to_string(&files).expect("file entries serialize"))
        .bind(verified as i64)
        .bind(&manifest_hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM terms WHERE root = $1").bind(&root).execute(&mut *tx).await?;
        let mut text = format!("{} {} {}", manifest.name, manifest.description, manifest.tags.join(" "));
        for f in &manifest.files {
            text.push(' ');
            text.push_str(&f.name);
            for c in &f.columns {
                text.push(' ');
                text.push_str(&c.name);
            }
        }
        for term in terms(&text) {
            sqlx::query("INSERT INTO terms (term, root, name) VALUES ($1, $2, $3) ON CONFLICT (term, root) DO NOTHING")
                .bind(term)
                .bind(&root)
                .bind(&manifest.name)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    let entry = BookEntry::new(
        l.region.clone(),
        price_gib(ppb),
        l.window as i64,
        l.capacity_mibps as i64,
        manifest.total_size() as i64,
        l.issued_at as i64,
        l.expires_at as i64,
    );
    if let Some(old) = displaced {
        st.book.remove(&old, &root);
    }
    st.book.upsert(&provider, &root, entry);
    Ok((
        StatusCode::CREATED,
        Json(ListingAccepted { provider: l.provider, root: l.dataset_root, manifest_verified: verified }),
    ))
}

/// Room for a new provider's listing of `root` (see [`crate::intake`]): expired listings of the
/// root go first; a full root takes a provider with standing in place of the oldest listing by a
/// provider without (named in the answer, for the book), and refuses one without.
pub(super) async fn make_room(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    st: &AppState,
    provider: &str,
    root: &str,
    standing: bool,
    now: i64,
) -> ApiResult<Option<String>> {
    let crate::intake::IntakeLimits { per_root, per_provider, .. } = st.intake.limits;
    let mine: i64 = sqlx::query("SELECT COUNT(*) FROM listings WHERE provider = $1")
        .bind(provider)
        .fetch_one(&mut **tx)
        .await?
        .get(0);
    if mine >= per_provider {
        return Err(ApiError::TooMany(format!("{provider} already has {mine} listings, the most one provider may")));
    }
    sqlx::query("DELETE FROM listings WHERE root = $1 AND expires_at <= $2")
        .bind(root)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    let n: i64 =
        sqlx::query("SELECT COUNT(*) FROM listings WHERE root = $1").bind(root).fetch_one(&mut **tx).await?.get(0);
    if n < per_root {
        return Ok(None);
    }
    let full = || format!("dataset {root} has {n} listings, the most one dataset may hold");
    if !standing {
        return Err(ApiError::TooMany(format!(
            "{}; a provider without a completed deal or measured throughput may list it when some expire",
            full()
        )));
    }
    let oldest = sqlx::query("SELECT provider FROM listings WHERE root = $1 ORDER BY issued_at ASC LIMIT 1000")
        .bind(root)
        .fetch_all(&mut **tx)
        .await?;
    for r in oldest {
        let p: String = r.get(0);
        if !st.book.provider_has_standing(&st.db, &p).await? {
            sqlx::query("DELETE FROM listings WHERE provider = $1 AND root = $2")
                .bind(&p)
                .bind(root)
                .execute(&mut **tx)
                .await?;
            return Ok(Some(p));
        }
    }
    Err(ApiError::TooMany(format!("{}, all by providers with standing", full())))
}
