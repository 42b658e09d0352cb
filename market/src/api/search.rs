//! `GET /datasets` (search) and `GET /datasets/{root}`.

use super::*;

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

    pub(super) fn apply<'q>(
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

pub(super) fn split_tags(s: &str) -> Vec<String> {
    s.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect()
}

pub(super) async fn get_datasets(
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

pub(super) async fn get_dataset(State(st): State<AppState>, Path(root): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(dataset(&st.db, &root).await?))
}
