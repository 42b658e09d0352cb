//! `POST /match`: rank the current offers of a root with the request's CEL expressions.

use std::{collections::BTreeMap, time::Instant};

use axum::extract::rejection::JsonRejection;
use bdc_market_api::{ListingBody, MatchRequest, MatchResponse, MatchedOffer};

use super::search::{Bind, Binds};
use super::*;
use crate::rank::{Matcher, Scored};

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
pub(super) struct StopOnDrop(StopScoring);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.dropped.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) fn score_all(
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

/// The signed listing of a ranked offer, read back to answer it.
#[derive(sqlx::FromRow)]
struct ListingRow {
    provider: String,
    root: String,
    node_id: String,
    addrs: String,
    price_per_byte: String,
    window_bytes: i64,
    capacity_mibps: i64,
    issued_at: i64,
    expires_at: i64,
    signature: String,
    arbiters: String,
    size_bytes: i64,
    mirror: i64,
}

/// Rank current offers with CEL: `require` (bool) and `rank` (named numeric criteria).
#[utoipa::path(post, path = "/match", tag = "market", request_body = MatchRequest,
    responses((status = 200, body = MatchResponse), (status = 400, body = ErrorBody)))]
pub(super) async fn post_match(
    State(st): State<AppState>,
    body: Result<Json<MatchRequest>, JsonRejection>,
) -> ApiResult<Json<MatchResponse>> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // compiled here to refuse bad expressions before any work; each scoring thread compiles its own
    Matcher::new(req.require.as_deref(), &req.rank)?;
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
        .map_err(|e| ApiError::Internal(Box::new(e)))??;
    st.metrics.matches.inc();
    // the winners' signed listings, in one query
    let mut b = Binds::default();
    let keys: Vec<String> = ranked
        .iter()
        .map(|(_, c)| {
            let (p, r) = (b.push(Bind::S(c.provider.to_string())), b.push(Bind::S(c.root.to_string())));
            format!("(provider = {p} AND root = {r})")
        })
        .collect();
    let mut listings: BTreeMap<(String, String), ListingRow> = BTreeMap::new();
    if !keys.is_empty() {
        let sql = format!(
            "SELECT provider, root, node_id, addrs, price_per_byte, window_bytes, capacity_mibps, issued_at, \
             expires_at, signature, arbiters, size_bytes, mirror FROM listings WHERE {}",
            keys.join(" OR ")
        );
        for r in b.apply(sqlx::query_as::<_, ListingRow>(&sql)).fetch_all(&st.db.pool).await? {
            listings.insert((r.provider.clone(), r.root.clone()), r);
        }
    }
    let mut offers = Vec::with_capacity(ranked.len());
    for ((score, criteria), c) in ranked {
        // a listing replaced since it was scored is left out rather than shown with stale terms
        let Some(r) =
            listings.get(&(c.provider.to_string(), c.root.to_string())).filter(|r| r.issued_at == c.issued_at)
        else {
            continue;
        };
        let attrs = c.attrs;
        // one unreadable stored row (written by an older version, or damaged) costs its offer,
        // not the whole answer
        let parsed = (|| -> ApiResult<_> {
            Ok((
                stored("root", &r.root)?,
                stored("provider", &r.provider)?,
                stored("node id", &r.node_id)?,
                stored("signature", &r.signature)?,
            ))
        })();
        let (root, provider, node_id, signature) = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(provider = %r.provider, root = %r.root, error = %e, "skipping a stored listing");
                continue;
            }
        };
        let listing = ListingBody {
            dataset_root: root,
            provider,
            provider_node_id: node_id,
            price_per_byte: stored_amount(&r.price_per_byte),
            window: r.window_bytes.max(0) as u64,
            size: r.size_bytes.max(0) as u64,
            mirror: r.mirror != 0,
            addrs: split_list(&r.addrs),
            region: attrs.region.clone(),
            capacity_mibps: r.capacity_mibps.max(0) as u64,
            arbiters: split_addrs(&r.arbiters),
            issued_at: r.issued_at.max(0) as u64,
            expires_at: r.expires_at.max(0) as u64,
        };
        offers.push(MatchedOffer {
            provider: listing.provider,
            root: listing.dataset_root,
            node_id: listing.provider_node_id,
            addrs: listing.addrs.clone(),
            price_per_byte: listing.price_per_byte,
            window: listing.window,
            size: (attrs.size_gib * (1u64 << 30) as f64).round() as u64,
            signature,
            listing,
            attributes: attrs,
            criteria,
            score,
        });
    }
    Ok(Json(MatchResponse { offers }))
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
