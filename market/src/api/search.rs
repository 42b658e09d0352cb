//! `GET /datasets` (search) and `GET /datasets/{root}`.

use axum::extract::{Path, Query};
use bdc_market_api::{DatasetDetail, DatasetOffer, DatasetSummary, FileEntry, SalesDay, SearchPage, SearchQuery};
use sqlx::Row;

use super::*;
use crate::db::terms;

/// The most distinct terms a search word may expand to (as a prefix) and still be walked term
/// by term; a broader prefix has its matches collected and sorted instead.
pub const MAX_WALKS: usize = 32;

/// Bound parameters of a query being built; `push` answers the placeholder.
#[derive(Default)]
pub(super) struct Binds(Vec<Bind>);

pub(super) enum Bind {
    I(i64),
    S(String),
    F(f64),
}

impl Binds {
    pub(super) fn push(&mut self, b: Bind) -> String {
        self.0.push(b);
        format!("${}", self.0.len())
    }

    pub(super) fn apply<'q, T>(
        self,
        mut q: sqlx::query::QueryAs<'q, sqlx::Any, T, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, T, sqlx::any::AnyArguments<'q>> {
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
pub(super) fn prefix_end(w: &str) -> String {
    format!("{w}\u{10ffff}")
}

/// Most term entries counted per search word: a word with more is broad, and its exact count
/// does not matter for choosing which word drives.
pub(super) const COUNT_CAP: i64 = 5000;

/// The terms a search word matches as a prefix, with how many datasets each has (read up to
/// [`COUNT_CAP`] entries; `complete` says whether that was all of them).
pub(super) struct WordMatches {
    terms: Vec<(String, i64)>,
    complete: bool,
}

impl WordMatches {
    fn total(&self) -> i64 {
        self.terms.iter().map(|t| t.1).sum()
    }
}

/// [`WordMatches`] of every word, in one round trip.
pub(super) async fn word_matches(db: &Db, words: &[String]) -> ApiResult<Vec<WordMatches>> {
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
    let rows: Vec<(i64, String, i64)> = b.apply(sqlx::query_as(&sql)).fetch_all(&db.pool).await?;
    let mut out: Vec<WordMatches> = words.iter().map(|_| WordMatches { terms: Vec::new(), complete: true }).collect();
    for (i, term, n) in rows {
        if let Some(m) = out.get_mut(i as usize) {
            m.terms.push((term, n));
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
pub async fn search(db: &Db, q: &SearchQuery) -> ApiResult<SearchPage> {
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
    let empty = || SearchPage { items: Vec::new(), offset, limit, more: false, next: None };
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
    let rows: Vec<SummaryRow> = b.apply(sqlx::query_as(&sql)).fetch_all(&db.pool).await?;
    let more = rows.len() as i64 > limit;
    let items = rows.into_iter().take(limit as usize).map(SummaryRow::into_summary).collect::<ApiResult<Vec<_>>>()?;
    let next = if more { items.last().map(|i: &DatasetSummary| i.root) } else { None };
    Ok(SearchPage { items, offset, limit, more, next })
}

/// A search hit as the page query reads it.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    root: String,
    vendor: String,
    name: String,
    description: String,
    tags: String,
    size: i64,
    min_price: Option<f64>,
    offers: i64,
}

impl SummaryRow {
    fn into_summary(self) -> ApiResult<DatasetSummary> {
        Ok(DatasetSummary {
            root: stored("root", &self.root)?,
            vendor: stored("vendor", &self.vendor)?,
            name: self.name,
            description: self.description,
            tags: split_tags(&self.tags),
            size: self.size.max(0) as u64,
            min_price_gib: self.min_price,
            offers: self.offers.max(0) as u64,
        })
    }
}

pub(super) fn split_tags(s: &str) -> Vec<String> {
    s.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// Search datasets.
#[utoipa::path(get, path = "/datasets", tag = "market", params(SearchQuery),
    responses((status = 200, body = SearchPage), (status = 400, body = ErrorBody)))]
pub(super) async fn get_datasets(
    State(st): State<AppState>,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<SearchPage>> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(search(&st.db, &q).await?))
}

#[derive(sqlx::FromRow)]
struct DatasetRow {
    vendor: String,
    royalty_bps: i64,
    manifest_hash: String,
    price_hint: String,
    name: Option<String>,
    description: Option<String>,
    tags: Option<String>,
    size: Option<i64>,
    files: Option<String>,
    manifest_verified: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct OfferRow {
    provider: String,
    node_id: String,
    addrs: String,
    region: String,
    price_per_byte: String,
    price_gib: f64,
    window_bytes: i64,
    capacity_mibps: i64,
    expires_at: i64,
    arbiters: String,
    mirror: i64,
}

/// A dataset with its files, current offers and sales per day.
pub async fn dataset(db: &Db, root: &str) -> ApiResult<DatasetDetail> {
    let root = parse_b256("root", root)?;
    let key = format!("{root:#x}");
    let Some(d) = sqlx::query_as::<_, DatasetRow>(
        "SELECT d.vendor, d.royalty_bps, d.manifest_hash, d.price_hint, m.name, m.description, m.tags, m.size, m.files, \
         m.manifest_verified FROM datasets d LEFT JOIN dataset_meta m ON m.root = d.root WHERE d.root = $1",
    )
    .bind(&key)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Err(ApiError::NotFound(format!("no dataset {key}")));
    };
    let offers = sqlx::query_as::<_, OfferRow>(
        "SELECT provider, node_id, addrs, region, price_per_byte, price_gib, window_bytes, capacity_mibps, expires_at, \
         arbiters, mirror FROM listings WHERE root = $1 AND expires_at > $2 ORDER BY price_gib",
    )
    .bind(&key)
    .bind(now() as i64)
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .filter_map(|r| {
        // an unreadable stored listing costs its own offer, not the dataset's page
        let (provider, node_id) = match (stored("provider", &r.provider), stored("node id", &r.node_id)) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(provider = %r.provider, error = %e, "skipping a stored listing");
                return None;
            }
        };
        Some(DatasetOffer {
            provider,
            node_id,
            addrs: split_list(&r.addrs),
            region: r.region,
            price_per_byte: stored_amount(&r.price_per_byte),
            price_gib: r.price_gib,
            window: r.window_bytes.max(0) as u64,
            capacity_mibps: r.capacity_mibps.max(0) as u64,
            expires_at: r.expires_at.max(0) as u64,
            arbiters: split_addrs(&r.arbiters),
            mirror: r.mirror != 0,
        })
    })
    .collect::<Vec<_>>();
    let files: Vec<FileEntry> = d.files.as_deref().and_then(|f| serde_json::from_str(f).ok()).unwrap_or_default();
    Ok(DatasetDetail {
        root,
        vendor: stored("vendor", &d.vendor)?,
        royalty_bps: d.royalty_bps.clamp(0, u16::MAX as i64) as u16,
        manifest_hash: stored("manifest hash", &d.manifest_hash)?,
        price_hint: stored_amount(&d.price_hint),
        name: d.name.unwrap_or_default(),
        description: d.description.unwrap_or_default(),
        tags: split_tags(&d.tags.unwrap_or_default()),
        size: d.size.unwrap_or(0).max(0) as u64,
        files,
        manifest_verified: d.manifest_verified.unwrap_or(0) == 1,
        offers,
        sales: sales(db, &key).await?,
    })
}

/// Deals of a dataset opened per day (UTC), and what they redeemed, over the 90 days up to its
/// newest sale, oldest first (at most the newest 20,000 deals; deals indexed before block times
/// were kept have no day and are left out).
async fn sales(db: &Db, root: &str) -> ApiResult<Vec<SalesDay>> {
    // the 90 days up to the newest sale, through the (root, opened_at) index, newest first and
    // at most SALES_ROWS deals: a root with a million deals costs a bounded read here, not a
    // scan (amounts are decimal text, summed here so both backends agree)
    const DAY: u64 = 86_400;
    const SALES_ROWS: i64 = 20_000;
    let rows = sqlx::query(
        "SELECT opened_at, redeemed FROM deals WHERE root = $1 AND opened_at > 0 \
           AND opened_at >= (SELECT COALESCE(MAX(opened_at), 0) FROM deals WHERE root = $2) - $3 \
         ORDER BY opened_at DESC LIMIT $4",
    )
    .bind(root)
    .bind(root)
    .bind(90 * DAY as i64)
    .bind(SALES_ROWS)
    .fetch_all(&db.pool)
    .await?;
    let mut days: Vec<SalesDay> = Vec::new();
    for r in rows.iter().rev() {
        let day = (r.get::<i64, _>(0).max(0) as u64) / DAY * DAY;
        let redeemed = stored_amount(&r.get::<String, _>(1));
        match days.last_mut() {
            Some(d) if d.day == day => {
                d.deals += 1;
                d.redeemed.0 = d.redeemed.0.saturating_add(redeemed.0);
            }
            _ => days.push(SalesDay { day, deals: 1, redeemed }),
        }
    }
    let skip = days.len().saturating_sub(90);
    Ok(days.split_off(skip))
}

/// A dataset: manifest fields, files, current offers, sales per day.
#[utoipa::path(get, path = "/datasets/{root}", tag = "market",
    params(("root" = String, Path, description = "The dataset's root, 0x-hex")),
    responses((status = 200, body = DatasetDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_dataset(
    State(st): State<AppState>,
    Path(root): Path<String>,
) -> ApiResult<Json<DatasetDetail>> {
    Ok(Json(dataset(&st.db, &root).await?))
}
