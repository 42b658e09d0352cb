//! The HTTP API: JSON endpoints, an OpenAPI document, Prometheus metrics and the web pages, in
//! one axum router behind one tower stack of request limits (body size, timeout, concurrency).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use alloy::primitives::{Address, B256};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bdc_contracts::listing::{ListingBody, SignedListing, SignedReport, listing_signer, market_domain};
use bdc_core::manifest::DatasetManifest;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use crate::{
    book::{BookEntry, Candidate, OfferBook},
    db::{Db, terms},
    rank::{Matcher, Scored},
    reputation::reputation,
};

/// Largest request body, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest page of results.
pub const MAX_PAGE: i64 = 100;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub chain_id: u64,
    pub registry: Address,
    pub metrics: Arc<Metrics>,
    /// Newest chain head the indexer saw, and its cursor (for /status and /metrics).
    pub index: Arc<Mutex<(u64, u64)>>,
    /// Offers and standings in memory, for matching.
    pub book: Arc<OfferBook>,
    /// Per-signer listing rates.
    pub intake: Arc<crate::intake::Gate>,
}

/// An error answered to the client. 5xx carry no internal detail (it is logged).
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    /// A rate or capacity bound; retry later.
    TooMany(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            Self::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            Self::Internal(m) => {
                tracing::error!("internal error: {m}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_string())
            }
        };
        (code, Json(json!({ "error": msg }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn parse_b256(what: &str, s: &str) -> ApiResult<B256> {
    s.parse::<B256>().map_err(|_| ApiError::BadRequest(format!("{what} must be 32 bytes of 0x-hex, got {s:?}")))
}

fn parse_addr(what: &str, s: &str) -> ApiResult<Address> {
    s.parse::<Address>().map_err(|_| ApiError::BadRequest(format!("{what} must be a 0x address, got {s:?}")))
}

/// Token base units per byte → BDC per GiB (18 decimals).
pub fn price_gib(price_per_byte: u128) -> f64 {
    price_per_byte as f64 * (1u64 << 30) as f64 / 1e18
}

// ---- listings ----

/// Longest a listing may be valid for.
const MAX_LISTING_SECS: u64 = 7 * 24 * 3600;

async fn post_listing(
    State(st): State<AppState>,
    body: Result<Json<SignedListing>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(sl) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let l = &sl.listing;
    let typed = l.to_eip712().map_err(ApiError::BadRequest)?;
    let sig = hex::decode(sl.signature.trim_start_matches("0x"))
        .map_err(|_| ApiError::BadRequest("signature must be 0x-hex".into()))?;
    let signer = listing_signer(&market_domain(st.chain_id, st.registry), &typed, &sig)
        .map_err(|e| ApiError::Unauthorized(format!("bad signature: {e}")))?;
    if signer != typed.provider {
        return Err(ApiError::Unauthorized(format!(
            "bad signature: signed by {signer:#x}, not by the listing's provider {:#x}",
            typed.provider
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
    let arbiters: Vec<String> = typed.arbiters.iter().map(|a| format!("{a:#x}")).collect();
    if l.region.len() > 32 || l.region.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-')) {
        return Err(ApiError::BadRequest("region must be up to 32 characters of [A-Za-z0-9-]".into()));
    }
    let ppb: u128 = l.price_per_byte.parse().map_err(|_| ApiError::BadRequest("price_per_byte too large".into()))?;
    let root = format!("{:#x}", typed.datasetRoot);
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
    let provider = format!("{:#x}", typed.provider);
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
         capacity_mibps, issued_at, expires_at, signature, arbiters) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (provider, root) DO UPDATE SET node_id = excluded.node_id, addrs = excluded.addrs, \
         arbiters = excluded.arbiters, \
         region = excluded.region, price_per_byte = excluded.price_per_byte, price_gib = excluded.price_gib, \
         window_bytes = excluded.window_bytes, capacity_mibps = excluded.capacity_mibps, \
         issued_at = excluded.issued_at, expires_at = excluded.expires_at, signature = excluded.signature",
    )
    .bind(&provider)
    .bind(&root)
    .bind(format!("{:#x}", typed.providerNodeId))
    .bind(l.addrs.join(","))
    .bind(&l.region)
    .bind(ppb.to_string())
    .bind(price_gib(ppb))
    .bind(l.window as i64)
    .bind(l.capacity_mibps as i64)
    .bind(l.issued_at as i64)
    .bind(l.expires_at as i64)
    .bind(&sl.signature)
    .bind(arbiters.join(","))
    .execute(&mut *tx)
    .await?;
    if write_meta {
        let files: Vec<Value> = manifest
            .files
            .iter()
            .map(|f| json!({"name": f.name, "size": f.size, "media_type": f.media_type, "columns": f.columns}))
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
        .bind(Value::Array(files).to_string())
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
    Ok((StatusCode::CREATED, Json(json!({ "provider": provider, "root": root, "manifest_verified": verified }))))
}

/// Room for a new provider's listing of `root` (see [`crate::intake`]): expired listings of the
/// root go first; a full root takes a provider with standing in place of the oldest listing by a
/// provider without (named in the answer, for the book), and refuses one without.
async fn make_room(
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

// ---- search ----

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    /// Full-text: every word must match (a prefix of) a term of the name, description, tags,
    /// file names or schema column names.
    pub q: Option<String>,
    pub vendor: Option<String>,
    pub tag: Option<String>,
    /// Only datasets offered at or below this price, BDC per GiB.
    pub max_price_gib: Option<f64>,
    pub min_size: Option<i64>,
    pub max_size: Option<i64>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// Keyset pagination: the `next` of the previous page (the last root it showed).
    pub after: Option<String>,
}

/// The most distinct terms a search word may expand to (as a prefix) and still be walked term
/// by term; a broader prefix has its matches collected and sorted instead.
pub const MAX_WALKS: usize = 32;

/// Bound parameters of a query being built; `push` answers the placeholder.
#[derive(Default)]
struct Binds(Vec<Bind>);

enum Bind {
    I(i64),
    S(String),
    F(f64),
}

impl Binds {
    fn push(&mut self, b: Bind) -> String {
        self.0.push(b);
        format!("${}", self.0.len())
    }

    fn apply<'q>(
        self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for b in self.0 {
            q = match b {
                Bind::I(i) => q.bind(i),
                Bind::S(s) => q.bind(s),
                Bind::F(f) => q.bind(f),
            };
        }
        q
    }
}

/// The upper end of the term range that a prefix matches.
fn prefix_end(w: &str) -> String {
    format!("{w}\u{10ffff}")
}

/// Most term entries counted per search word: a word with more is broad, and its exact count
/// does not matter for choosing which word drives.
const COUNT_CAP: i64 = 5000;

/// The terms a search word matches as a prefix, with how many datasets each has (read up to
/// [`COUNT_CAP`] entries; `complete` says whether that was all of them).
struct WordMatches {
    terms: Vec<(String, i64)>,
    complete: bool,
}

impl WordMatches {
    fn total(&self) -> i64 {
        self.terms.iter().map(|t| t.1).sum()
    }
}

/// [`WordMatches`] of every word, in one round trip.
async fn word_matches(db: &Db, words: &[String]) -> ApiResult<Vec<WordMatches>> {
    if words.is_empty() {
        return Ok(Vec::new());
    }
    let mut b = Binds::default();
    let cap = b.push(Bind::I(COUNT_CAP));
    let parts: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (lo, hi) = (b.push(Bind::S(w.clone())), b.push(Bind::S(prefix_end(w))));
            format!(
                "SELECT CAST({i} AS BIGINT) AS w, term, COUNT(*) AS n FROM (SELECT term FROM terms WHERE term >= {lo} AND term < {hi} \
                 ORDER BY term LIMIT {cap}) x{i} GROUP BY term"
            )
        })
        .collect();
    let sql = parts.join(" UNION ALL ");
    let rows = b.apply(sqlx::query(&sql)).fetch_all(&db.pool).await?;
    let mut out: Vec<WordMatches> = words.iter().map(|_| WordMatches { terms: Vec::new(), complete: true }).collect();
    for r in rows {
        let i = r.get::<i64, _>(0) as usize;
        if let Some(m) = out.get_mut(i) {
            m.terms.push((r.get(1), r.get(2)));
        }
    }
    for m in &mut out {
        m.terms.sort();
        m.complete = m.total() < COUNT_CAP;
    }
    Ok(out)
}

/// Runs a search; shared by the JSON endpoint and the web page.
///
/// The plan: the word with the fewest matches drives. Its datasets are walked, term by term,
/// along the (term, name, root) index, i.e. already in page order; each is probed for the other
/// words and the filters (index lookups: terms by (root, term), listings by (root, price)), and
/// each walk stops at a full page. The walks are merged. Without words, datasets are walked
/// along the (name, root) index the same way. A prefix that expands to more than [`MAX_WALKS`]
/// terms has its matches collected and sorted instead. Cost grows with how far a walk must go
/// to fill a page, not with how many datasets match.
pub async fn search(db: &Db, q: &SearchQuery) -> ApiResult<Value> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1–{MAX_PAGE}")));
    }
    let offset = q.offset.unwrap_or(0);
    if !(0..=1_000_000).contains(&offset) {
        return Err(ApiError::BadRequest("offset must be 0–1000000".into()));
    }
    let words = q.q.as_deref().map(terms).unwrap_or_default();
    if words.len() > 8 {
        return Err(ApiError::BadRequest("at most 8 search words".into()));
    }
    let empty = || json!({ "items": [], "offset": offset, "limit": limit, "more": false, "next": null });
    // the word with the fewest matches drives
    let mut driver: Option<(usize, WordMatches)> = None;
    for (i, m) in word_matches(db, &words).await?.into_iter().enumerate() {
        if m.terms.is_empty() {
            return Ok(empty());
        }
        if driver.as_ref().is_none_or(|(_, best)| m.total() < best.total()) {
            driver = Some((i, m));
        }
    }
    let walks: Option<Vec<String>> = match &driver {
        Some((_, m)) if m.complete => {
            (m.terms.len() <= MAX_WALKS).then(|| m.terms.iter().map(|t| t.0.clone()).collect())
        }
        // counting stopped early: list the word's distinct terms
        Some((i, _)) => {
            let w = &words[*i];
            let rows = sqlx::query("SELECT DISTINCT term FROM terms WHERE term >= $1 AND term < $2 LIMIT $3")
                .bind(w)
                .bind(prefix_end(w))
                .bind(MAX_WALKS as i64 + 1)
                .fetch_all(&db.pool)
                .await?;
            (rows.len() <= MAX_WALKS).then(|| rows.iter().map(|r| r.get::<String, _>(0)).collect())
        }
        None => None,
    };
    let driver = driver.map(|(i, _)| i);

    let mut b = Binds::default();
    let now = b.push(Bind::I(now() as i64));
    // conditions on a dataset `m` whose name is `{name}` (the walked index's copy of it)
    let mut conds: Vec<String> = Vec::new();
    match &q.vendor {
        Some(v) => {
            let v = b.push(Bind::S(format!("{:#x}", parse_addr("vendor", v)?)));
            conds.push(format!("EXISTS (SELECT 1 FROM datasets d WHERE d.root = m.root AND d.vendor = {v})"));
        }
        None => conds.push("EXISTS (SELECT 1 FROM datasets d WHERE d.root = m.root)".into()),
    }
    for (i, w) in words.iter().enumerate() {
        if walks.is_some() && driver == Some(i) {
            continue;
        }
        let (lo, hi) = (b.push(Bind::S(w.clone())), b.push(Bind::S(prefix_end(w))));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM terms t2 WHERE t2.root = m.root AND t2.term >= {lo} AND t2.term < {hi})"
        ));
    }
    if let Some(tag) = &q.tag {
        let tag = tag.to_lowercase();
        let exact = b.push(Bind::S(tag.clone()));
        let first = b.push(Bind::S(format!("{tag},%")));
        let last = b.push(Bind::S(format!("%,{tag}")));
        let mid = b.push(Bind::S(format!("%,{tag},%")));
        conds.push(format!("(m.tags = {exact} OR m.tags LIKE {first} OR m.tags LIKE {last} OR m.tags LIKE {mid})"));
    }
    if let Some(p) = q.max_price_gib {
        if !p.is_finite() || p < 0.0 {
            return Err(ApiError::BadRequest("max_price_gib must be a non-negative number".into()));
        }
        let p = b.push(Bind::F(p));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM listings l WHERE l.root = m.root AND l.price_gib <= {p} AND l.expires_at > {now})"
        ));
    }
    if let Some(s) = q.min_size {
        conds.push(format!("m.size >= {}", b.push(Bind::I(s))));
    }
    if let Some(s) = q.max_size {
        conds.push(format!("m.size <= {}", b.push(Bind::I(s))));
    }
    let mut after = None;
    if let Some(a) = &q.after {
        let a = format!("{:#x}", parse_b256("after", a)?);
        let Some(row) =
            sqlx::query("SELECT name FROM dataset_meta WHERE root = $1").bind(&a).fetch_optional(&db.pool).await?
        else {
            return Err(ApiError::BadRequest(format!("after: no dataset {a} to continue from")));
        };
        after = Some((b.push(Bind::S(row.get(0))), b.push(Bind::S(a))));
    }
    let keyset = |name: &str, root: &str| match &after {
        Some((n, r)) => format!(" AND ({name} > {n} OR ({name} = {n} AND {root} > {r}))"),
        None => String::new(),
    };
    let cond = conds.join(" AND ");
    let take = b.push(Bind::I(limit + 1));
    let skip = b.push(Bind::I(offset));
    let page = match (driver, &walks) {
        // each walk yields its first offset + limit + 1 hits in page order; the merge of those
        // holds the page (a hit ranks no lower within its walk than in the merge)
        (Some(_), Some(walks)) => {
            let depth = b.push(Bind::I(offset + limit + 1));
            let parts: Vec<String> = walks
                .iter()
                .map(|term| {
                    let term = b.push(Bind::S(term.clone()));
                    format!(
                        "SELECT * FROM (SELECT t.name, t.root FROM terms t JOIN dataset_meta m ON m.root = t.root \
                         WHERE t.term = {term} AND {cond}{} ORDER BY t.name, t.root LIMIT {depth}) w",
                        keyset("t.name", "t.root")
                    )
                })
                .collect();
            format!(
                "SELECT DISTINCT name, root FROM ({}) u ORDER BY name, root LIMIT {take} OFFSET {skip}",
                parts.join(" UNION ALL ")
            )
        }
        // a prefix too broad to walk term by term: collect its datasets, then sort
        (Some(i), None) => {
            let w = &words[i];
            let (lo, hi) = (b.push(Bind::S(w.clone())), b.push(Bind::S(prefix_end(w))));
            format!(
                "SELECT m.name, m.root FROM dataset_meta m WHERE m.root IN (SELECT t.root FROM terms t WHERE \
                 t.term >= {lo} AND t.term < {hi}) AND {cond}{} ORDER BY m.name, m.root LIMIT {take} OFFSET {skip}",
                keyset("m.name", "m.root")
            )
        }
        (None, _) => format!(
            "SELECT m.name, m.root FROM dataset_meta m WHERE {cond}{} ORDER BY m.name, m.root LIMIT {take} OFFSET {skip}",
            keyset("m.name", "m.root")
        ),
    };
    // the offer aggregates are computed for the page's rows only
    let sql = format!(
        "SELECT d.root, d.vendor, m.name, m.description, m.tags, m.size, \
         (SELECT MIN(l.price_gib) FROM listings l WHERE l.root = d.root AND l.expires_at > {now}) AS min_price, \
         (SELECT COUNT(*) FROM listings l WHERE l.root = d.root AND l.expires_at > {now}) AS offers \
         FROM ({page}) page JOIN datasets d ON d.root = page.root JOIN dataset_meta m ON m.root = page.root \
         ORDER BY m.name, d.root"
    );
    let rows = b.apply(sqlx::query(&sql)).fetch_all(&db.pool).await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            json!({
                "root": r.get::<String, _>(0),
                "vendor": r.get::<String, _>(1),
                "name": r.get::<String, _>(2),
                "description": r.get::<String, _>(3),
                "tags": split_tags(&r.get::<String, _>(4)),
                "size": r.get::<i64, _>(5),
                "min_price_gib": r.try_get::<f64, _>(6).ok(),
                "offers": r.get::<i64, _>(7),
            })
        })
        .collect();
    let next = if more { items.last().map(|i| i["root"].clone()) } else { None };
    Ok(json!({ "items": items, "offset": offset, "limit": limit, "more": more, "next": next }))
}

fn split_tags(s: &str) -> Vec<String> {
    s.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect()
}

async fn get_datasets(
    State(st): State<AppState>,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(search(&st.db, &q).await?))
}

/// A dataset with its files and current offers.
pub async fn dataset(db: &Db, root: &str) -> ApiResult<Value> {
    let root = format!("{:#x}", parse_b256("root", root)?);
    let Some(d) = sqlx::query(
        "SELECT d.vendor, d.royalty_bps, d.manifest_hash, d.price_hint, m.name, m.description, m.tags, m.size, m.files, \
         m.manifest_verified FROM datasets d LEFT JOIN dataset_meta m ON m.root = d.root WHERE d.root = $1",
    )
    .bind(&root)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Err(ApiError::NotFound(format!("no dataset {root}")));
    };
    let offers = sqlx::query(
        "SELECT provider, node_id, addrs, region, price_per_byte, price_gib, window_bytes, capacity_mibps, expires_at, \
         arbiters FROM listings WHERE root = $1 AND expires_at > $2 ORDER BY price_gib",
    )
    .bind(&root)
    .bind(now() as i64)
    .fetch_all(&db.pool)
    .await?;
    let offers: Vec<Value> = offers
        .iter()
        .map(|r| {
            json!({
                "provider": r.get::<String, _>(0), "node_id": r.get::<String, _>(1),
                "addrs": r.get::<String, _>(2).split(',').collect::<Vec<_>>(), "region": r.get::<String, _>(3),
                "price_per_byte": r.get::<String, _>(4), "price_gib": r.get::<f64, _>(5),
                "window": r.get::<i64, _>(6), "capacity_mibps": r.get::<i64, _>(7), "expires_at": r.get::<i64, _>(8),
                "arbiters": split_tags(&r.get::<String, _>(9)),
            })
        })
        .collect();
    let files: Value =
        d.try_get::<String, _>(8).ok().and_then(|f| serde_json::from_str(&f).ok()).unwrap_or(Value::Array(vec![]));
    Ok(json!({
        "root": root,
        "vendor": d.get::<String, _>(0),
        "royalty_bps": d.get::<i64, _>(1),
        "manifest_hash": d.get::<String, _>(2),
        "price_hint": d.get::<String, _>(3),
        "name": d.try_get::<String, _>(4).unwrap_or_default(),
        "description": d.try_get::<String, _>(5).unwrap_or_default(),
        "tags": split_tags(&d.try_get::<String, _>(6).unwrap_or_default()),
        "size": d.try_get::<i64, _>(7).unwrap_or(0),
        "files": files,
        "manifest_verified": d.try_get::<i64, _>(9).unwrap_or(0) == 1,
        "offers": offers,
    }))
}

async fn get_dataset(State(st): State<AppState>, Path(root): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(dataset(&st.db, &root).await?))
}

// ---- reputation, providers, deals ----

pub async fn provider(db: &Db, id: &str, weights: &crate::reputation::Weights) -> ApiResult<Value> {
    let p = format!("{:#x}", parse_addr("provider", id)?);
    let rep = reputation(db, &p, weights).await?;
    let listings = sqlx::query(
        "SELECT l.root, m.name, l.price_gib, l.region, l.expires_at FROM listings l \
         LEFT JOIN dataset_meta m ON m.root = l.root WHERE l.provider = $1 ORDER BY l.root",
    )
    .bind(&p)
    .fetch_all(&db.pool)
    .await?;
    let deals = sqlx::query(
        "SELECT id, root, state, redeemed, max_amount, opened_block FROM deals WHERE provider = $1 \
         ORDER BY opened_block DESC LIMIT 50",
    )
    .bind(&p)
    .fetch_all(&db.pool)
    .await?;
    if listings.is_empty() && deals.is_empty() {
        return Err(ApiError::NotFound(format!("no listings or deals for provider {p}")));
    }
    Ok(json!({
        "provider": p,
        "reputation": rep,
        "listings": listings.iter().map(|r| json!({
            "root": r.get::<String, _>(0), "name": r.try_get::<String, _>(1).unwrap_or_default(),
            "price_gib": r.get::<f64, _>(2), "region": r.get::<String, _>(3), "expires_at": r.get::<i64, _>(4),
        })).collect::<Vec<_>>(),
        "deals": deals.iter().map(|r| json!({
            "id": r.get::<String, _>(0), "root": r.get::<String, _>(1), "state": r.get::<String, _>(2),
            "redeemed": r.get::<String, _>(3), "max_amount": r.get::<String, _>(4), "opened_block": r.get::<i64, _>(5),
        })).collect::<Vec<_>>(),
    }))
}

async fn get_provider(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(provider(&st.db, &id, st.book.weights()).await?))
}

pub async fn deal(db: &Db, id: &str) -> ApiResult<Value> {
    let id = format!("{:#x}", parse_b256("deal id", id)?);
    let Some(d) = sqlx::query(
        "SELECT buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, redeemed, refunded, state, \
         buyer_won, opened_block FROM deals WHERE id = $1",
    )
    .bind(&id)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Err(ApiError::NotFound(format!("no deal {id}")));
    };
    let history = sqlx::query("SELECT block, cumulative FROM redemptions WHERE deal = $1 ORDER BY block, log_index")
        .bind(&id)
        .fetch_all(&db.pool)
        .await?;
    let ppb: u128 = d.get::<String, _>(3).parse().unwrap_or(0);
    let max: u128 = d.get::<String, _>(4).parse().unwrap_or(0);
    let window = d.get::<i64, _>(5) as u128;
    let redeemed: u128 = d.get::<String, _>(7).parse().unwrap_or(0);
    let state: String = d.get(9);
    let open = state == "open";
    // buyer: escrowed and not yet redeemed (the buyer pays only for verified bytes, so this is
    // what it may still spend, not a loss); provider: the window of bytes it may send unpaid
    let buyer_escrowed = if open { max.saturating_sub(redeemed) } else { 0 };
    let provider_at_risk = if open { (window * ppb).min(max.saturating_sub(redeemed)) } else { 0 };
    Ok(json!({
        "id": id,
        "buyer": d.get::<String, _>(0),
        "provider": d.get::<String, _>(1),
        "root": d.get::<String, _>(2),
        "price_per_byte": ppb.to_string(),
        "max_amount": max.to_string(),
        "window": window as u64,
        "expiry": d.get::<i64, _>(6),
        "redeemed": redeemed.to_string(),
        "refunded": d.get::<String, _>(8),
        "state": state,
        "buyer_won": d.get::<i64, _>(10) == 1,
        "opened_block": d.get::<i64, _>(11),
        "buyer_escrowed_unspent": buyer_escrowed.to_string(),
        "provider_at_risk": provider_at_risk.to_string(),
        "redemptions": history.iter().map(|r| json!({"block": r.get::<i64, _>(0), "cumulative": r.get::<String, _>(1)})).collect::<Vec<_>>(),
    }))
}

async fn get_deal(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(deal(&st.db, &id).await?))
}

// ---- throughput reports ----

/// Reports older than this, or this far in the future, are refused.
const REPORT_SKEW_SECS: u64 = 24 * 3600;

/// A deal's report replaces the stored one only when issued this much later: each accepted
/// report reloads every provider's standing, so a buyer must not post one per second.
const REPORT_EVERY_SECS: u64 = 60;

async fn post_report(
    State(st): State<AppState>,
    body: Result<Json<SignedReport>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(rep) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (deal, signer) =
        rep.signer(&market_domain(st.chain_id, st.registry)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if rep.bytes == 0 || rep.millis == 0 {
        return Err(ApiError::BadRequest("bytes and millis must be positive".into()));
    }
    let t = now();
    if rep.issued_at + REPORT_SKEW_SECS < t || rep.issued_at > t + 300 {
        return Err(ApiError::BadRequest(format!("issued_at {} is not within a day of now ({t})", rep.issued_at)));
    }
    let id = format!("{deal:#x}");
    let Some(d) = sqlx::query("SELECT buyer, provider, price_per_byte, max_amount FROM deals WHERE id = $1")
        .bind(&id)
        .fetch_optional(&st.db.pool)
        .await?
    else {
        return Err(ApiError::Unprocessable(format!("deal {id} is not on chain (or not indexed yet)")));
    };
    let buyer: String = d.get(0);
    if format!("{signer:#x}") != buyer {
        return Err(ApiError::Unauthorized(format!("report signed by {signer:#x}, not by the deal's buyer {buyer}")));
    }
    // a report cannot claim more bytes than the deal could ever pay for
    let ppb: u128 = d.get::<String, _>(2).parse().unwrap_or(0);
    if ppb == 0 {
        return Err(ApiError::Unprocessable(format!("deal {id} is a job deal: it moved no bytes to report")));
    }
    let max: u128 = d.get::<String, _>(3).parse().unwrap_or(0);
    if u128::from(rep.bytes) > max / ppb {
        return Err(ApiError::Unprocessable(format!(
            "{} bytes is more than deal {id} can pay for ({} bytes)",
            rep.bytes,
            max / ppb
        )));
    }
    let mibps = rep.bytes as f64 / (1u64 << 20) as f64 / (rep.millis as f64 / 1000.0);
    let provider: String = d.get(1);
    let stored = sqlx::query(
        "INSERT INTO reports (deal, provider, bytes, millis, mibps, issued_at, signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (deal) DO UPDATE SET bytes = excluded.bytes, \
         millis = excluded.millis, mibps = excluded.mibps, issued_at = excluded.issued_at, \
         signature = excluded.signature WHERE reports.issued_at + $8 <= excluded.issued_at",
    )
    .bind(&id)
    .bind(&provider)
    .bind(rep.bytes as i64)
    .bind(rep.millis as i64)
    .bind(mibps)
    .bind(rep.issued_at as i64)
    .bind(&rep.signature)
    .bind(REPORT_EVERY_SECS as i64)
    .execute(&st.db.pool)
    .await?
    .rows_affected();
    if stored == 0 {
        return Err(ApiError::Conflict(format!(
            "a report for deal {id} issued later than {REPORT_EVERY_SECS} s before this one is already stored"
        )));
    }
    st.book.standings_changed();
    Ok((StatusCode::CREATED, Json(json!({ "deal": id, "provider": provider, "mibps": mibps }))))
}

// ---- matchmaking ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// Only offers of this dataset (else all current offers).
    pub root: Option<String>,
    /// CEL bool over the offer's attributes; offers for which it is false are dropped.
    pub require: Option<String>,
    /// Named CEL criteria (numbers); the score is their sum.
    #[serde(default)]
    pub rank: BTreeMap<String, String>,
    pub limit: Option<usize>,
}

/// Most offers one match considers.
pub const MAX_MATCH_SCAN: usize = 10_000;

/// Scores every offer (on all cores for a large scan: CEL is interpreted, and a whole-market
/// match evaluates every expression on thousands of offers); the best `limit`, best first.
/// How long one match may score before it stops (below the HTTP timeout, so the request gets
/// this error rather than a bare timeout).
pub const MATCH_DEADLINE: Duration = Duration::from_secs(5);

/// Stops a match's scoring threads: at its deadline, or when the request is dropped (the client
/// went away or the HTTP timeout fired), so no thread goes on scoring for nobody.
#[derive(Debug, Clone)]
pub struct StopScoring {
    dropped: Arc<std::sync::atomic::AtomicBool>,
    deadline: Instant,
}

impl StopScoring {
    pub fn after(d: Duration) -> Self {
        Self { dropped: Default::default(), deadline: Instant::now() + d }
    }

    fn stop(&self) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Stops the scoring when the request handler holding it is dropped.
struct StopOnDrop(StopScoring);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.dropped.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn score_all(
    offers: Vec<Candidate>,
    require: Option<&str>,
    rank: &BTreeMap<String, String>,
    limit: usize,
    stop: &StopScoring,
) -> Result<Vec<(Scored, Candidate)>, crate::rank::RankError> {
    let threads =
        if offers.len() < 2_000 { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) };
    let chunk = offers.len().div_ceil(threads).max(1);
    let score_chunk = |part: &[Candidate]| {
        let m = Matcher::new(require, rank)?;
        let mut out = Vec::new();
        for (i, c) in part.iter().enumerate() {
            if i % 32 == 0 && stop.stop() {
                return Err(crate::rank::RankError::Deadline { secs: MATCH_DEADLINE.as_secs() });
            }
            if let Some((score, values)) = m.values(|| format!("{}/{}", c.provider, c.root), &c.attrs)? {
                out.push((score, values, i));
            }
        }
        Ok::<_, crate::rank::RankError>(out)
    };
    let parts: Vec<Result<Vec<_>, _>> = std::thread::scope(|s| {
        let handles: Vec<_> = offers.chunks(chunk).map(|part| s.spawn(|| score_chunk(part))).collect();
        handles.into_iter().map(|h| h.join().expect("scoring thread")).collect()
    });
    let mut scored = Vec::new();
    for (n, part) in parts.into_iter().enumerate() {
        scored.extend(part?.into_iter().map(|(score, values, i)| (score, values, n * chunk + i)));
    }
    if scored.len() > limit {
        scored.select_nth_unstable_by(limit - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(limit);
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    // a matcher's criteria are the rank map's entries in key order: name the winners' values
    // from the map rather than compiling the expressions once more
    let name = |values: Vec<f64>| rank.keys().cloned().zip(values).collect::<BTreeMap<_, _>>();
    let scored = scored.into_iter().map(|(score, values, i)| (score, name(values), i));
    let mut offers: Vec<Option<Candidate>> = offers.into_iter().map(Some).collect();
    Ok(scored.into_iter().filter_map(|(score, criteria, i)| Some(((score, criteria), offers[i].take()?))).collect())
}

async fn post_match(
    State(st): State<AppState>,
    body: Result<Json<MatchRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // compiled here to refuse bad expressions before any work; each scoring thread compiles its own
    Matcher::new(req.require.as_deref(), &req.rank).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = req.limit.unwrap_or(10);
    if !(1..=MAX_PAGE as usize).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1–{MAX_PAGE}")));
    }
    let root = req.root.as_deref().map(|r| parse_b256("root", r)).transpose()?.map(|r| format!("{r:#x}"));
    let offers = st.book.candidates(&st.db, root.as_deref(), now() as i64, MAX_MATCH_SCAN).await?;
    let (require, rank) = (req.require.clone(), req.rank.clone());
    let stop = StopScoring::after(MATCH_DEADLINE);
    let _stop_on_drop = StopOnDrop(stop.clone());
    let ranked = tokio::task::spawn_blocking(move || score_all(offers, require.as_deref(), &rank, limit, &stop))
        .await
        .map_err(|e| ApiError::Internal(format!("scoring task: {e}")))?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // the winners' signed listings, in one query
    let mut b = Binds::default();
    let keys: Vec<String> = ranked
        .iter()
        .map(|(_, c)| {
            let (p, r) = (b.push(Bind::S(c.provider.to_string())), b.push(Bind::S(c.root.to_string())));
            format!("(provider = {p} AND root = {r})")
        })
        .collect();
    let mut listings: BTreeMap<(String, String), sqlx::any::AnyRow> = BTreeMap::new();
    if !keys.is_empty() {
        let sql = format!(
            "SELECT provider, root, node_id, addrs, price_per_byte, window_bytes, capacity_mibps, issued_at, \
             expires_at, signature, arbiters FROM listings WHERE {}",
            keys.join(" OR ")
        );
        for r in b.apply(sqlx::query(&sql)).fetch_all(&st.db.pool).await? {
            listings.insert((r.get(0), r.get(1)), r);
        }
    }
    let ranked: Vec<Value> = ranked
        .into_iter()
        .filter_map(|((score, criteria), c)| {
            // a listing replaced since it was scored is left out rather than shown with stale terms
            let r = listings
                .get(&(c.provider.to_string(), c.root.to_string()))
                .filter(|r| r.get::<i64, _>(7) == c.issued_at)?;
            let attrs = c.attrs;
            Some(json!({
                "provider": r.get::<String, _>(0), "root": r.get::<String, _>(1), "node_id": r.get::<String, _>(2),
                "addrs": r.get::<String, _>(3).split(',').collect::<Vec<_>>(),
                "price_per_byte": r.get::<String, _>(4), "window": r.get::<i64, _>(5),
                "size": (attrs.size_gib * (1u64 << 30) as f64).round() as i64,
                // the provider's signed listing, for buyers that check it rather than trust us
                "listing": ListingBody {
                    dataset_root: r.get(1),
                    provider: r.get(0),
                    provider_node_id: r.get(2),
                    price_per_byte: r.get(4),
                    window: r.get::<i64, _>(5) as u64,
                    addrs: r.get::<String, _>(3).split(',').map(str::to_string).collect(),
                    region: attrs.region.clone(),
                    capacity_mibps: r.get::<i64, _>(6) as u64,
                    arbiters: split_tags(&r.get::<String, _>(10)),
                    issued_at: r.get::<i64, _>(7) as u64,
                    expires_at: r.get::<i64, _>(8) as u64,
                },
                "attributes": attrs, "criteria": criteria, "score": score,
                "signature": r.get::<String, _>(9),
            }))
        })
        .collect();
    Ok(Json(json!({ "offers": ranked })))
}

// ---- status, metrics, openapi ----

async fn get_status(State(st): State<AppState>) -> Json<Value> {
    let (head, cursor) = *st.index.lock().expect("index lock");
    Json(
        json!({ "backend": st.db.backend, "head": head, "indexed": cursor, "lag_blocks": head.saturating_sub(cursor) }),
    )
}

/// Request counters and latency sums per (route, status), rendered for Prometheus.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), (u64, f64)>>,
}

impl Metrics {
    fn record(&self, route: &str, status: u16, secs: f64) {
        let mut m = self.requests.lock().expect("metrics lock");
        let e = m.entry((route.to_string(), status)).or_default();
        e.0 += 1;
        e.1 += secs;
    }
}

async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let res = next.run(req).await;
    st.metrics.record(&route, res.status().as_u16(), t.elapsed().as_secs_f64());
    res
}

async fn get_metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let mut out = String::new();
    out.push_str("# HELP bdc_market_requests_total HTTP requests by route and status.\n# TYPE bdc_market_requests_total counter\n");
    let snapshot = st.metrics.requests.lock().expect("metrics lock").clone();
    for ((route, status), (n, _)) in &snapshot {
        out.push_str(&format!("bdc_market_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
    }
    out.push_str("# HELP bdc_market_request_seconds_sum Time spent answering, by route and status.\n# TYPE bdc_market_request_seconds_sum counter\n");
    for ((route, status), (_, s)) in &snapshot {
        out.push_str(&format!("bdc_market_request_seconds_sum{{route=\"{route}\",status=\"{status}\"}} {s}\n"));
    }
    let (head, cursor) = *st.index.lock().expect("index lock");
    out.push_str(&format!(
        "# TYPE bdc_market_chain_head gauge\nbdc_market_chain_head {head}\n# TYPE bdc_market_indexed_block gauge\nbdc_market_indexed_block {cursor}\n"
    ));
    let listings: i64 = sqlx::query("SELECT COUNT(*) FROM listings").fetch_one(&st.db.pool).await?.get(0);
    let deals: i64 = sqlx::query("SELECT COUNT(*) FROM deals").fetch_one(&st.db.pool).await?.get(0);
    out.push_str(&format!(
        "# TYPE bdc_market_listings gauge\nbdc_market_listings {listings}\n# TYPE bdc_market_deals gauge\nbdc_market_deals {deals}\n"
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Every route of the router, as (method, path): the OpenAPI document is built from it.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/datasets",
        "Search datasets: q (full text), vendor, tag, max_price_gib, min_size, max_size, limit, offset",
    ),
    ("get", "/datasets/{root}", "A dataset: manifest fields, files, current offers"),
    ("get", "/providers/{id}", "A provider (Ethereum address): reputation, listings, recent deals"),
    ("get", "/deals/{id}", "A deal: terms, state, redemptions over time, money at risk per side"),
    ("post", "/listings", "Post a listing signed by the provider (EIP-712, domain BDC Market v1)"),
    ("post", "/reports", "Post a throughput report signed by a deal's buyer (EIP-712 ThroughputReport)"),
    ("post", "/match", "Rank current offers with CEL: require (bool), rank (named numeric criteria)"),
    ("get", "/status", "Indexer position and lag"),
    ("get", "/metrics", "Prometheus metrics"),
    ("get", "/openapi.json", "This document"),
];

async fn get_openapi() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "4XX": {"description": "Bad input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "bdc market", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}
    }))
}

// ---- router ----

/// Limits of the tower stack, and of listing intake.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes: usize,
    pub timeout: Duration,
    pub concurrency: usize,
    pub intake: crate::intake::IntakeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: MAX_BODY_BYTES,
            timeout: Duration::from_secs(10),
            concurrency: 256,
            intake: Default::default(),
        }
    }
}

pub fn router(st: AppState, limits: Limits) -> Router {
    Router::new()
        .route("/", get(crate::web::index))
        .route("/ui/datasets/{root}", get(crate::web::dataset_page))
        .route("/ui/providers/{id}", get(crate::web::provider_page))
        .route("/ui/deals/{id}", get(crate::web::deal_page))
        .route("/datasets", get(get_datasets))
        .route("/datasets/{root}", get(get_dataset))
        .route("/providers/{id}", get(get_provider))
        .route("/deals/{id}", get(get_deal))
        .route("/listings", post(post_listing))
        .route("/reports", post(post_report))
        .route("/match", post(post_match))
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/openapi.json", get(get_openapi))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(st.clone(), track))
        .layer(
            tower::ServiceBuilder::new()
                .layer(tower_http::limit::RequestBodyLimitLayer::new(limits.body_bytes))
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    limits.timeout,
                ))
                .layer(tower::limit::ConcurrencyLimitLayer::new(limits.concurrency))
                .layer(DefaultBodyLimit::max(limits.body_bytes)),
        )
        .with_state(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::OfferAttrs;

    fn offer(i: usize) -> Candidate {
        let attrs = OfferAttrs {
            price_gib: ((i * 7919) % 1000) as f64 / 100.0,
            capacity_mibps: (i % 300) as f64,
            reputation: 0.5,
            deals_completed: 0,
            region: if i.is_multiple_of(3) { "eu".into() } else { "us".into() },
            window_mib: 8.0,
            size_gib: 1.0,
            throughput_mibps: 0.0,
        };
        Candidate { provider: format!("p{i}").into(), root: format!("r{i}").into(), attrs, issued_at: 0 }
    }

    #[test]
    fn a_parallel_scan_ranks_like_one_pass_over_every_offer() {
        let offers: Vec<Candidate> = (0..5_001).map(offer).collect();
        let rank = BTreeMap::from([
            ("cheap".to_string(), "-1.0 * price_gib".to_string()),
            ("eu".to_string(), "region == 'eu' ? 0.5 : 0.0".to_string()),
        ]);
        let require = Some("capacity_mibps >= 20.0");
        let go = StopScoring::after(MATCH_DEADLINE);
        let got = score_all(offers.clone(), require, &rank, 25, &go).unwrap();
        let m = Matcher::new(require, &rank).unwrap();
        let mut want: Vec<(f64, String)> = offers
            .iter()
            .filter_map(|c| m.score(String::new, &c.attrs).unwrap().map(|(s, _)| (s, c.provider.to_string())))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(got.len(), 25);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0.0, w.0, "same scores in the same order");
            assert!(g.1.attrs.capacity_mibps >= 20.0, "require holds");
            assert_eq!(g.0.1.values().sum::<f64>(), g.0.0, "the score is the sum of the criteria");
        }
        let bad = BTreeMap::from([("x".to_string(), "region".to_string())]);
        assert!(score_all(offers.clone(), None, &bad, 5, &go).is_err(), "a type error on any thread fails the match");
        // a dropped request, or one past its deadline, stops every scoring thread
        let dropped = StopScoring::after(MATCH_DEADLINE);
        drop(StopOnDrop(dropped.clone()));
        let late = StopScoring::after(Duration::ZERO);
        for stop in [dropped, late] {
            let err = score_all(offers.clone(), require, &rank, 25, &stop).unwrap_err();
            assert!(matches!(err, crate::rank::RankError::Deadline { .. }), "{err}");
        }
    }
}
