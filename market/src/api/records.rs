//! Providers, deals and throughput reports: `GET /providers/{id}`, `GET /deals/{id}`,
//! `POST /reports`.

use super::*;

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

pub(super) async fn get_provider(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(provider(&st.db, &id, st.book.weights()).await?))
}

pub async fn deal(db: &Db, id: &str) -> ApiResult<Value> {
    let id = format!("{:#x}", parse_b256("deal id", id)?);
    let Some(d) = sqlx::query(
        "SELECT buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, redeemed, refunded, state, \
         buyer_won, opened_block, arbiter, rule_by, evidence FROM deals WHERE id = $1",
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
        "arbiter": d.get::<String, _>(12),
        // the last dispute: the arbiter's deadline (unix seconds) and the evidence committed
        "dispute": (d.get::<i64, _>(13) > 0).then(|| json!({
            "rule_by": d.get::<i64, _>(13),
            "evidence": d.get::<String, _>(14),
        })),
        "buyer_escrowed_unspent": buyer_escrowed.to_string(),
        "provider_at_risk": provider_at_risk.to_string(),
        "redemptions": history.iter().map(|r| json!({"block": r.get::<i64, _>(0), "cumulative": r.get::<String, _>(1)})).collect::<Vec<_>>(),
    }))
}

pub(super) async fn get_deal(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(deal(&st.db, &id).await?))
}

// ---- throughput reports ----

/// Reports older than this, or this far in the future, are refused.
pub(super) const REPORT_SKEW_SECS: u64 = 24 * 3600;

/// A deal's report replaces the stored one only when issued this much later: each accepted
/// report reloads every provider's standing, so a buyer must not post one per second.
pub(super) const REPORT_EVERY_SECS: u64 = 60;

pub(super) async fn post_report(
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
