//! Reputation from on-chain outcomes only, plus throughput measured by buyers (DESIGN §7).
//!
//! [`reputation`] is one provider's full record (the provider page, `/providers/{id}`);
//! [`standings`] is what ranking needs of every provider at once, from one scan of the deals and
//! one of the reports (the offer book). Both score with [`score`] and take the median with [`median_per_buyer`].

use std::collections::HashMap;

use sqlx::Row;

use crate::db::Db;

/// How outcomes are weighed (MARKET.md, "Reputation").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// Token base units a buyer must have paid a provider (over its withdrawn deals) to count as
    /// one whole completed buyer; less counts in proportion, more counts once. A throughput
    /// report counts only from a deal that paid a hundredth of it. Default: 1 BDC (10^18).
    pub unit: u128,
    /// Arbiters whose rulings count: a dispute ruled for the buyer by any other arbiter (one a
    /// provider or buyer chose for itself) does not move the score. Lowercase 0x-hex.
    pub trusted_arbiters: Vec<String>,
}

impl Default for Weights {
    fn default() -> Self {
        Self { unit: 10u128.pow(18), trusted_arbiters: Vec::new() }
    }
}

impl Weights {
    pub fn new(unit: u128, trusted_arbiters: impl IntoIterator<Item = alloy::primitives::Address>) -> Self {
        Self { unit: unit.max(1), trusted_arbiters: trusted_arbiters.into_iter().map(|a| format!("{a:#x}")).collect() }
    }

    fn trusts(&self, arbiter: &str) -> bool {
        self.trusted_arbiters.iter().any(|a| a.eq_ignore_ascii_case(arbiter))
    }

    /// What a deal must have paid for its buyer's throughput report to count.
    pub fn report_floor(&self) -> u128 {
        (self.unit / 100).max(1)
    }
}

pub use bdc_market_api::{Reputation, Weighed};

/// What ranking sees of a provider (the offer attributes `reputation`, `deals_completed`,
/// `throughput_mibps`).
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub score: f64,
    /// Completed deals, weighed ([`Weighed::completed`]): paying buyers, by value.
    pub completed: f64,
    pub throughput_mibps: f64,
}

impl Default for Standing {
    /// A provider with no history.
    fn default() -> Self {
        Self { score: score(0, 0), completed: 0.0, throughput_mibps: 0.0 }
    }
}

/// The reputation score of whole counts: completed deals against lost disputes (counted twice),
/// with one of each assumed, so a newcomer starts at 0.5.
pub fn score(completed: u64, disputes_lost: u64) -> f64 {
    Weighed { completed: completed as f64, disputes_lost: disputes_lost as f64 }.score()
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

/// One deal as the score sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub buyer: String,
    pub state: String,
    /// Token base units redeemed.
    pub redeemed: u128,
    /// Token base units escrowed.
    pub max_amount: u128,
    pub arbiter: String,
    pub buyer_won: bool,
}

impl Outcome {
    /// Paid out to the provider by a withdrawal (after the dispute window passed undisputed). A
    /// ruling for the provider does not count: the arbiter may be its own, and the ruling may
    /// have returned the pot to the buyer all the same.
    fn completed(&self) -> bool {
        self.state == "completed"
    }

    fn failed(&self) -> bool {
        self.state == "refunded" && self.redeemed == 0
    }

    fn lost(&self) -> bool {
        self.state == "resolved" && self.buyer_won
    }
}

/// Whole counts (completed, failed, disputes lost, paying buyers) and the weighed outcomes of
/// one provider's deals.
///
/// A buyer counts as at most one completed deal, in proportion to what it paid over `unit`,
/// so neither many 1-wei deals nor one account's many deals raise the score; a lost dispute
/// counts once when an arbiter the market trusts ruled it. Refunds of deals that paid nothing
/// are counted, not scored: a stranger can open a deal with any provider and refund it a block
/// later, at no cost.
pub fn weigh<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>, w: &Weights) -> ([u64; 4], Weighed) {
    let mut per_buyer: HashMap<&str, u128> = HashMap::new();
    let (mut counts, mut out) = ([0u64; 4], Weighed::default());
    for o in outcomes {
        let entry = per_buyer.entry(o.buyer.as_str()).or_default();
        if o.completed() {
            counts[0] += 1;
            *entry = entry.saturating_add(o.redeemed);
        } else if o.failed() {
            counts[1] += 1;
        } else if o.lost() {
            counts[2] += 1;
            if w.trusts(&o.arbiter) {
                out.disputes_lost += 1.0;
            }
        }
    }
    let unit = w.unit.max(1) as f64;
    for paid in per_buyer.into_values() {
        if paid > 0 {
            counts[3] += 1;
        }
        out.completed += (paid as f64 / unit).min(1.0);
    }
    (counts, out)
}

const OUTCOME_COLUMNS: &str = "buyer, state, redeemed, max_amount, arbiter, buyer_won";

fn outcome(row: &sqlx::any::AnyRow, at: usize) -> Outcome {
    let amount = |i: usize| row.get::<String, _>(at + i).parse::<u128>().unwrap_or(0);
    Outcome {
        buyer: row.get(at),
        state: row.get(at + 1),
        redeemed: amount(2),
        max_amount: amount(3),
        arbiter: row.get(at + 4),
        buyer_won: row.get::<i64, _>(at + 5) != 0,
    }
}

/// Whether the deal of a report row (its `redeemed` at column `at`) paid at least `floor`: a
/// report from a dust deal says nothing about the provider and gives it no standing.
fn paid_at_least(row: &sqlx::any::AnyRow, at: usize, floor: u128) -> bool {
    row.get::<String, _>(at).parse::<u128>().is_ok_and(|r| r >= floor)
}

/// One provider's full record.
pub async fn reputation(db: &Db, provider: &str, w: &Weights) -> Result<Reputation, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT price_per_byte, {OUTCOME_COLUMNS} FROM deals WHERE provider = $1"))
        .bind(provider)
        .fetch_all(&db.pool)
        .await?;
    let mut r = Reputation { deals: rows.len() as u64, ..Default::default() };
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in &rows {
        let ppb: u128 = row.get::<String, _>(0).parse().unwrap_or(0);
        let o = outcome(row, 1);
        // a job deal (price per byte 0) pays for a job, not for bytes
        r.bytes_redeemed += o.redeemed.checked_div(ppb).unwrap_or(0);
        outcomes.push(o);
    }
    let ([completed, failed, lost, buyers], weighed) = weigh(&outcomes, w);
    (r.completed, r.failed, r.disputes_lost, r.paying_buyers, r.weighed) = (completed, failed, lost, buyers, weighed);
    r.score = weighed.score();
    let reports = sqlx::query(
        "SELECT d.buyer, r.mibps, d.redeemed FROM reports r JOIN deals d ON d.id = r.deal WHERE r.provider = $1 \
         ORDER BY d.buyer, r.issued_at DESC",
    )
    .bind(provider)
    .fetch_all(&db.pool)
    .await?;
    let floor = w.report_floor();
    (r.throughput_mibps, r.throughput_buyers) =
        median_per_buyer(reports.iter().filter(|row| paid_at_least(row, 2, floor)).map(|row| (row.get(0), row.get(1))));
    // buyers' claims of bytes that did not verify: shown, not scored, and only from deals that
    // paid the provider something real (a dust deal's claim costs nothing to make)
    // and each buyer counts once, however many deals it opens
    let faults =
        sqlx::query("SELECT d.redeemed, d.buyer FROM faults f JOIN deals d ON d.id = f.deal WHERE f.provider = $1")
            .bind(provider)
            .fetch_all(&db.pool)
            .await?;
    let buyers: std::collections::HashSet<String> =
        faults.iter().filter(|row| paid_at_least(row, 0, floor)).map(|row| row.get(1)).collect();
    r.faults_reported = buyers.len() as u64;
    Ok(r)
}

/// Every provider's standing that has a deal or a report.
pub async fn standings(db: &Db, w: &Weights) -> Result<HashMap<String, Standing>, sqlx::Error> {
    let mut out: HashMap<String, Standing> = HashMap::new();
    let rows = sqlx::query(&format!("SELECT provider, {OUTCOME_COLUMNS} FROM deals ORDER BY provider"))
        .fetch_all(&db.pool)
        .await?;
    let mut i = 0;
    while i < rows.len() {
        let provider: String = rows[i].get(0);
        let end = i + rows[i..].iter().take_while(|r| r.get::<String, _>(0) == provider).count();
        let outcomes: Vec<Outcome> = rows[i..end].iter().map(|r| outcome(r, 1)).collect();
        let (_, weighed) = weigh(&outcomes, w);
        out.insert(provider, Standing { score: weighed.score(), completed: weighed.completed, throughput_mibps: 0.0 });
        i = end;
    }
    let floor = w.report_floor();
    let reports: Vec<_> = sqlx::query(
        "SELECT r.provider, d.buyer, r.mibps, d.redeemed FROM reports r JOIN deals d ON d.id = r.deal \
         ORDER BY r.provider, d.buyer, r.issued_at DESC",
    )
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .filter(|row| paid_at_least(row, 3, floor))
    .collect();
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
    fn a_newcomer_scores_one_half_and_losses_lower_it() {
        assert_eq!(score(0, 0), 0.5);
        assert_eq!(Standing::default().score, 0.5);
        assert!(score(3, 1) < score(3, 0));
        assert!(score(10, 0) > score(9, 0));
    }

    fn deal(buyer: &str, state: &str, redeemed: u128, max_amount: u128, arbiter: &str, buyer_won: bool) -> Outcome {
        Outcome { buyer: buyer.into(), state: state.into(), redeemed, max_amount, arbiter: arbiter.into(), buyer_won }
    }

    #[test]
    fn self_dealing_does_not_move_the_score_and_paying_buyers_do() {
        const UNIT: u128 = 1_000_000;
        let w = Weights { unit: UNIT, trusted_arbiters: vec!["0xa1".into()] };
        let honest = vec![deal("b1", "completed", UNIT, UNIT, "0xa1", false)];
        let (_, base) = weigh(&honest, &w);
        assert_eq!(base.completed, 1.0);
        // 1,000 one-wei deals from 100 throwaway accounts of the provider's own
        let mut farmed = honest.clone();
        for i in 0..1000 {
            farmed.push(deal(&format!("sybil{}", i % 100), "completed", 1, 1, "0xself", false));
        }
        let (counts, f) = weigh(&farmed, &w);
        assert_eq!(counts[0], 1001, "the record still shows every deal");
        assert!((f.score() - base.score()).abs() < 1e-3, "{} vs {}", f.score(), base.score());
        // one account's many deals count as one buyer
        let repeat: Vec<Outcome> = (0..50).map(|_| deal("b1", "completed", UNIT, UNIT, "0xa1", false)).collect();
        assert_eq!(weigh(&repeat, &w).1.completed, 1.0);
        // a dispute ruled by an arbiter the market does not trust (one the parties chose for
        // themselves) does not lower it; one ruled by a trusted arbiter does
        let mut disputed = honest.clone();
        disputed.push(deal("griefer", "resolved", 1, 1, "0xself", true));
        assert_eq!(weigh(&disputed, &w).1, base);
        disputed.push(deal("b2", "resolved", 10, UNIT, "0xA1", true));
        assert_eq!(weigh(&disputed, &w).1.disputes_lost, 1.0, "trusted, whatever the case of its hex");
        // strangers opening deals and refunding them (any deposit, a block later) do not lower it
        let mut griefed = honest.clone();
        for i in 0..1000 {
            griefed.push(deal(&format!("g{i}"), "refunded", 0, 100 * UNIT, "0xa1", false));
        }
        let (counts, g) = weigh(&griefed, &w);
        assert_eq!((counts[1], g), (1000, base), "counted, not scored");
        // distinct buyers paying a unit each do raise it
        let paying: Vec<Outcome> = (0..5).map(|i| deal(&format!("b{i}"), "completed", UNIT, UNIT, "", false)).collect();
        let (counts, p) = weigh(&paying, &w);
        assert_eq!((counts[3], p.completed), (5, 5.0));
        assert!(p.score() > base.score() + 0.1);
        // a ruling for the provider is no completed deal: the arbiter may be its own, and may have
        // returned the pot to its own buyer account (rule for the provider, WHOLE_POT to the buyer)
        let won: Vec<Outcome> =
            (0..100).map(|i| deal(&format!("s{i}"), "resolved", UNIT, UNIT, "0xself", false)).collect();
        assert_eq!(weigh(&won, &w).1, Weighed::default());
    }
}
