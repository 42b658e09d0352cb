//! Reputation from on-chain outcomes only, plus throughput measured by buyers (DESIGN §7).
//!
//! [`reputation`] is one provider's full record (the provider page, `/providers/{id}`);
//! [`standings`] is what ranking needs of every provider at once, in two aggregate queries (the
//! offer book). Both score with [`score`] and take the median with [`median_per_buyer`].

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use crate::db::Db;

/// A provider's record from on-chain outcomes only.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reputation {
    pub deals: u64,
    /// Deals paid out to the provider (withdrawn).
    pub completed: u64,
    /// Deals refunded with nothing redeemed: the provider delivered nothing paid.
    pub failed: u64,
    /// Disputes resolved for the buyer.
    pub disputes_lost: u64,
    /// Bytes the provider was paid for (redeemed amount / price per byte, over all deals).
    pub bytes_redeemed: u128,
    /// [`score`]: `(completed + 1) / (completed + failed + 2 × disputes_lost + 2)`, in (0, 1);
    /// 0.5 with no history.
    pub score: f64,
    /// Median throughput buyers measured, MiB/s (0 with no reports). Reports are signed by the
    /// deal's buyer; each buyer counts once (its newest report), so no buyer outweighs another.
    pub throughput_mibps: f64,
    /// How many buyers' reports the median is over.
    pub throughput_buyers: u64,
}

/// What ranking sees of a provider (the offer attributes `reputation`, `deals_completed`,
/// `throughput_mibps`).
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub score: f64,
    pub completed: u64,
    pub throughput_mibps: f64,
}

impl Default for Standing {
    /// A provider with no history.
    fn default() -> Self {
        Self { score: score(0, 0, 0), completed: 0, throughput_mibps: 0.0 }
    }
}

/// The reputation score: completed deals against refunds with nothing paid and lost disputes
/// (counted twice), with one of each assumed, so a newcomer starts at 0.5.
pub fn score(completed: u64, failed: u64, disputes_lost: u64) -> f64 {
    (completed as f64 + 1.0) / (completed as f64 + failed as f64 + 2.0 * disputes_lost as f64 + 2.0)
}

/// The median of each buyer's newest report, from `(buyer, mibps)` rows ordered by buyer and
/// newest first; with how many buyers it is over. (0, 0) with no reports.
pub fn median_per_buyer(rows: impl IntoIterator<Item = (String, f64)>) -> (f64, u64) {
    let mut per_buyer: Vec<f64> = Vec::new();
    let mut last: Option<String> = None;
    for (buyer, mibps) in rows {
        if last.as_deref() != Some(buyer.as_str()) {
            per_buyer.push(mibps);
            last = Some(buyer);
        }
    }
    if per_buyer.is_empty() {
        return (0.0, 0);
    }
    per_buyer.sort_by(f64::total_cmp);
    let n = per_buyer.len();
    let m = if n % 2 == 1 { per_buyer[n / 2] } else { (per_buyer[n / 2 - 1] + per_buyer[n / 2]) / 2.0 };
    (m, n as u64)
}

/// Deal states counted against a provider: a refund with nothing redeemed, a dispute lost.
const COUNTS: &str = "SUM(CASE WHEN state = 'completed' THEN 1 ELSE 0 END), \
     SUM(CASE WHEN state = 'refunded' AND redeemed = '0' THEN 1 ELSE 0 END), \
     SUM(CASE WHEN state = 'resolved' AND buyer_won = 1 THEN 1 ELSE 0 END)";

/// One provider's full record.
pub async fn reputation(db: &Db, provider: &str) -> Result<Reputation, sqlx::Error> {
    let rows = sqlx::query("SELECT redeemed, price_per_byte FROM deals WHERE provider = $1")
        .bind(provider)
        .fetch_all(&db.pool)
        .await?;
    let mut r = Reputation { deals: rows.len() as u64, ..Default::default() };
    for row in rows {
        let redeemed: u128 = row.get::<String, _>(0).parse().unwrap_or(0);
        let ppb: u128 = row.get::<String, _>(1).parse().unwrap_or(0);
        // a job deal (price per byte 0) pays for a job, not for bytes
        r.bytes_redeemed += redeemed.checked_div(ppb).unwrap_or(0);
    }
    let c = sqlx::query(&format!("SELECT {COUNTS} FROM deals WHERE provider = $1"))
        .bind(provider)
        .fetch_one(&db.pool)
        .await?;
    let count = |i: usize| c.try_get::<i64, _>(i).unwrap_or(0) as u64;
    (r.completed, r.failed, r.disputes_lost) = (count(0), count(1), count(2));
    r.score = score(r.completed, r.failed, r.disputes_lost);
    let reports = sqlx::query(
        "SELECT d.buyer, r.mibps FROM reports r JOIN deals d ON d.id = r.deal WHERE r.provider = $1 \
         ORDER BY d.buyer, r.issued_at DESC",
    )
    .bind(provider)
    .fetch_all(&db.pool)
    .await?;
    (r.throughput_mibps, r.throughput_buyers) = median_per_buyer(reports.iter().map(|row| (row.get(0), row.get(1))));
    Ok(r)
}

/// Every provider's standing that has a deal or a report.
pub async fn standings(db: &Db) -> Result<HashMap<String, Standing>, sqlx::Error> {
    let mut out: HashMap<String, Standing> = HashMap::new();
    for c in sqlx::query(&format!("SELECT provider, {COUNTS} FROM deals GROUP BY provider")).fetch_all(&db.pool).await?
    {
        let count = |i: usize| c.try_get::<i64, _>(i).unwrap_or(0) as u64;
        let s = Standing { score: score(count(1), count(2), count(3)), completed: count(1), throughput_mibps: 0.0 };
        out.insert(c.get(0), s);
    }
    let reports = sqlx::query(
        "SELECT r.provider, d.buyer, r.mibps FROM reports r JOIN deals d ON d.id = r.deal \
         ORDER BY r.provider, d.buyer, r.issued_at DESC",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut i = 0;
    while i < reports.len() {
        let provider: String = reports[i].get(0);
        let end = i + reports[i..].iter().take_while(|r| r.get::<String, _>(0) == provider).count();
        let (m, _) = median_per_buyer(reports[i..end].iter().map(|r| (r.get(1), r.get(2))));
        out.entry(provider).or_default().throughput_mibps = m;
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_counts_each_buyer_once_by_its_newest_report() {
        let rows = [("a", 10.0), ("a", 99.0), ("b", 20.0), ("c", 30.0), ("c", 1.0)];
        let (m, n) = median_per_buyer(rows.iter().map(|(b, v)| (b.to_string(), *v)));
        assert_eq!((m, n), (20.0, 3), "a's older 99 and c's older 1 do not count");
        let (m, n) = median_per_buyer([("a".to_string(), 10.0), ("b".to_string(), 20.0)]);
        assert_eq!((m, n), (15.0, 2));
        assert_eq!(median_per_buyer(Vec::new()), (0.0, 0));
    }

    #[test]
    fn a_newcomer_scores_one_half_and_losses_weigh_more_than_failures() {
        assert_eq!(score(0, 0, 0), 0.5);
        assert_eq!(Standing::default().score, 0.5);
        assert!(score(3, 0, 1) < score(3, 1, 0));
        assert!(score(10, 0, 0) > score(9, 0, 0));
    }
}
