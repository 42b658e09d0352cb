//! Providers, deals, throughput and fault reports: `GET /providers/{id}`, `GET /deals/{id}`,
//! `POST /reports`, `POST /faults`.

use axum::extract::{Path, rejection::JsonRejection};
use bdc_contracts::listing::market_domain;
use bdc_market_api::{
    DealRecord, DealSummary, DisputeInfo, FaultAccepted, ProviderListing, ProviderRecord, Redemption, ReportAccepted,
    SignedFault, SignedReport, ThroughputPoint,
};
use sqlx::Row;

use super::*;
use crate::reputation::reputation;

#[derive(sqlx::FromRow)]
struct ListingRow {
    root: String,
    name: Option<String>,
    price_gib: f64,
    region: String,
    expires_at: i64,
}

#[derive(sqlx::FromRow)]
struct DealRow {
    id: String,
    root: String,
    state: String,
    redeemed: String,
    max_amount: String,
    opened_block: i64,
}

/// Throughput reports kept on a provider's record.
const THROUGHPUT_POINTS: i64 = 200;

pub async fn provider(db: &Db, id: &str, weights: &crate::reputation::Weights) -> ApiResult<ProviderRecord> {
    let provider = parse_addr("provider", id)?;
    let p = format!("{provider:#x}");
    let rep = reputation(db, &p, weights).await?;
    let listings = sqlx::query_as::<_, ListingRow>(
        "SELECT l.root, m.name, l.price_gib, l.region, l.expires_at FROM listings l \
         LEFT JOIN dataset_meta m ON m.root = l.root WHERE l.provider = $1 ORDER BY l.root",
    )
    .bind(&p)
    .fetch_all(&db.pool)
    .await?;
    let deals = sqlx::query_as::<_, DealRow>(
        "SELECT id, root, state, redeemed, max_amount, opened_block FROM deals WHERE provider = $1 \
         ORDER BY opened_block DESC LIMIT 50",
    )
    .bind(&p)
    .fetch_all(&db.pool)
    .await?;
    if listings.is_empty() && deals.is_empty() {
        return Err(ApiError::NotFound(format!("no listings or deals for provider {p}")));
    }
    let mut throughput: Vec<ThroughputPoint> =
        sqlx::query("SELECT issued_at, mibps, bytes FROM reports WHERE provider = $1 ORDER BY issued_at DESC LIMIT $2")
            .bind(&p)
            .bind(THROUGHPUT_POINTS)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| ThroughputPoint {
                issued_at: r.get::<i64, _>(0).max(0) as u64,
                mibps: r.get(1),
                bytes: r.get::<i64, _>(2).max(0) as u64,
            })
            .collect();
    throughput.reverse();
    Ok(ProviderRecord {
        provider,
        reputation: rep,
        listings: listings
            .into_iter()
            // an unreadable stored row costs its own line, not the page
            .filter_map(|r| {
                Some(ProviderListing {
                    root: readable(stored("root", &r.root))?,
                    name: r.name.unwrap_or_default(),
                    price_gib: r.price_gib,
                    region: r.region,
                    expires_at: r.expires_at.max(0) as u64,
                })
            })
            .collect(),
        deals: deals
            .into_iter()
            .filter_map(|r| {
                Some(DealSummary {
                    id: readable(stored("deal id", &r.id))?,
                    root: readable(stored("root", &r.root))?,
                    state: r.state,
                    redeemed: stored_amount(&r.redeemed),
                    max_amount: stored_amount(&r.max_amount),
                    opened_block: r.opened_block.max(0) as u64,
                })
            })
            .collect(),
        throughput,
    })
}

/// A provider (Ethereum address): reputation, listings, recent deals, throughput reports.
#[utoipa::path(get, path = "/providers/{id}", tag = "market",
    params(("id" = String, Path, description = "The provider's Ethereum address")),
    responses((status = 200, body = ProviderRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_provider(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ProviderRecord>> {
    Ok(Json(provider(&st.db, &id, st.book.weights()).await?))
}

#[derive(sqlx::FromRow)]
struct FullDealRow {
    buyer: String,
    provider: String,
    root: String,
    price_per_byte: String,
    max_amount: String,
    window_bytes: i64,
    expiry: i64,
    redeemed: String,
    refunded: String,
    state: String,
    buyer_won: i64,
    opened_block: i64,
    arbiter: String,
    rule_by: i64,
    evidence: String,
}

pub async fn deal(db: &Db, id: &str) -> ApiResult<DealRecord> {
    let id = parse_b256("deal id", id)?;
    let key = format!("{id:#x}");
    let Some(d) = sqlx::query_as::<_, FullDealRow>(
        "SELECT buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, redeemed, refunded, state, \
         buyer_won, opened_block, arbiter, rule_by, evidence FROM deals WHERE id = $1",
    )
    .bind(&key)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Err(ApiError::NotFound(format!("no deal {key}")));
    };
    let redemptions =
        sqlx::query("SELECT block, block_time, cumulative FROM redemptions WHERE deal = $1 ORDER BY block, log_index")
            .bind(&key)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| Redemption {
                block: r.get::<i64, _>(0).max(0) as u64,
                time: r.get::<i64, _>(1).max(0) as u64,
                cumulative: stored_amount(&r.get::<String, _>(2)),
            })
            .collect();
    let ppb = stored_amount(&d.price_per_byte).0;
    let max = stored_amount(&d.max_amount).0;
    let window = d.window_bytes.max(0) as u128;
    let redeemed = stored_amount(&d.redeemed).0;
    let open = d.state == "open";
    // buyer: escrowed and not yet redeemed (the buyer pays only for verified bytes, so this is
    // what it may still spend, not a loss); provider: the window of bytes it may send unpaid
    let buyer_escrowed = if open { max.saturating_sub(redeemed) } else { 0 };
    let provider_at_risk = if open { window.saturating_mul(ppb).min(max.saturating_sub(redeemed)) } else { 0 };
    Ok(DealRecord {
        id,
        buyer: stored("buyer", &d.buyer)?,
        provider: stored("provider", &d.provider)?,
        root: stored("root", &d.root)?,
        price_per_byte: ppb.into(),
        max_amount: max.into(),
        window: window as u64,
        expiry: d.expiry.max(0) as u64,
        redeemed: redeemed.into(),
        refunded: stored_amount(&d.refunded),
        state: d.state,
        buyer_won: d.buyer_won == 1,
        opened_block: d.opened_block.max(0) as u64,
        // deals indexed before migration 0006 hold '' (no arbiter recorded): the zero address
        arbiter: if d.arbiter.is_empty() { Default::default() } else { stored("arbiter", &d.arbiter)? },
        // the last dispute: the arbiter's deadline (unix seconds) and the evidence committed
        dispute: (d.rule_by > 0).then_some(DisputeInfo { rule_by: d.rule_by as u64, evidence: d.evidence }),
        buyer_escrowed_unspent: buyer_escrowed.into(),
        provider_at_risk: provider_at_risk.into(),
        redemptions,
    })
}

/// A deal: terms, state, redemptions over time, money at risk per side.
#[utoipa::path(get, path = "/deals/{id}", tag = "market",
    params(("id" = String, Path, description = "The deal id, 0x-hex")),
    responses((status = 200, body = DealRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_deal(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<DealRecord>> {
    Ok(Json(deal(&st.db, &id).await?))
}

// ---- throughput reports ----

/// Reports older than this, or this far in the future, are refused.
pub(super) const REPORT_SKEW_SECS: u64 = 24 * 3600;

/// A deal's report replaces the stored one only when issued this much later: each accepted
/// report reloads every provider's standing, so a buyer must not post one per second.
pub(super) const REPORT_EVERY_SECS: u64 = 60;

/// Post a throughput report signed by a deal's buyer (EIP-712 `ThroughputReport`).
#[utoipa::path(post, path = "/reports", tag = "market", request_body = SignedReport,
    responses((status = 201, body = ReportAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn post_report(
    State(st): State<AppState>,
    body: Result<Json<SignedReport>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ReportAccepted>)> {
    let Json(rep) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let deal = rep.deal_id;
    let signer =
        bdc_contracts::listing::report_signer(&market_domain(st.chain_id, st.registry), &rep.typed(), &rep.signature)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if rep.bytes == 0 || rep.millis == 0 {
        return Err(ApiError::BadRequest("bytes and millis must be positive".into()));
    }
    let t = now();
    if rep.issued_at.saturating_add(REPORT_SKEW_SECS) < t || rep.issued_at > t + 300 {
        return Err(ApiError::BadRequest(format!("issued_at {} is not within a day of now ({t})", rep.issued_at)));
    }
    let id = format!("{deal:#x}");
    let (provider, ppb, max) = transfer_deal_of(&st, &id, signer).await?;
    // a report cannot claim more bytes than the deal could ever pay for
    if u128::from(rep.bytes) > max / ppb {
        return Err(ApiError::Unprocessable(format!(
            "{} bytes is more than deal {id} can pay for ({} bytes)",
            rep.bytes,
            max / ppb
        )));
    }
    let mibps = rep.bytes as f64 / (1u64 << 20) as f64 / (rep.millis as f64 / 1000.0);
    let taken = sqlx::query(
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
    .bind(rep.signature.to_string())
    .bind(REPORT_EVERY_SECS as i64)
    .execute(&st.db.pool)
    .await?
    .rows_affected();
    if taken == 0 {
        return Err(ApiError::Conflict(format!(
            "a report for deal {id} issued later than {REPORT_EVERY_SECS} s before this one is already stored"
        )));
    }
    st.book.standings_changed();
    Ok((StatusCode::CREATED, Json(ReportAccepted { deal, provider: stored("provider", &provider)?, mibps })))
}

/// The provider, price per byte and maximum amount of transfer deal `id`, whose buyer must be
/// `signer`.
async fn transfer_deal_of(st: &AppState, id: &str, signer: Address) -> ApiResult<(String, u128, u128)> {
    let Some(d) = sqlx::query("SELECT buyer, provider, price_per_byte, max_amount FROM deals WHERE id = $1")
        .bind(id)
        .fetch_optional(&st.db.pool)
        .await?
    else {
        return Err(ApiError::Unprocessable(format!("deal {id} is not on chain (or not indexed yet)")));
    };
    let buyer: String = d.get(0);
    if format!("{signer:#x}") != buyer {
        return Err(ApiError::Unauthorized(format!("signed by {signer:#x}, not by the deal's buyer {buyer}")));
    }
    let ppb: u128 = d.get::<String, _>(2).parse().unwrap_or(0);
    if ppb == 0 {
        return Err(ApiError::Unprocessable(format!("deal {id} is a job deal: it moved no bytes to report on")));
    }
    Ok((d.get(1), ppb, d.get::<String, _>(3).parse().unwrap_or(0)))
}

// ---- fault reports ----

/// Post a buyer's report that a deal's provider sent bytes that did not verify (EIP-712
/// `FaultReport`, signed by the deal's buyer): one per deal. The market cannot check it, so it
/// is shown on the provider's record (counted from deals that paid the provider something real)
/// and never scored.
#[utoipa::path(post, path = "/faults", tag = "market", request_body = SignedFault,
    responses((status = 201, body = FaultAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn post_fault(
    State(st): State<AppState>,
    body: Result<Json<SignedFault>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<FaultAccepted>)> {
    let Json(f) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let signer =
        bdc_contracts::listing::fault_signer(&market_domain(st.chain_id, st.registry), &f.typed(), &f.signature)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let t = now();
    if f.issued_at.saturating_add(REPORT_SKEW_SECS) < t || f.issued_at > t + 300 {
        return Err(ApiError::BadRequest(format!("issued_at {} is not within a day of now ({t})", f.issued_at)));
    }
    let id = format!("{:#x}", f.deal_id);
    let (provider, _, _) = transfer_deal_of(&st, &id, signer).await?;
    let taken = sqlx::query(
        "INSERT INTO faults (deal, provider, verified_bytes, issued_at, signature) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (deal) DO NOTHING",
    )
    .bind(&id)
    .bind(&provider)
    .bind(i64::try_from(f.verified_bytes).unwrap_or(i64::MAX))
    .bind(f.issued_at as i64)
    .bind(f.signature.to_string())
    .execute(&st.db.pool)
    .await?
    .rows_affected();
    if taken == 0 {
        return Err(ApiError::Conflict(format!("a fault report for deal {id} is already stored")));
    }
    Ok((StatusCode::CREATED, Json(FaultAccepted { deal: f.deal_id, provider: stored("provider", &provider)? })))
}
