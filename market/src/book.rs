//! The offer book: every stored listing's ranking attributes and every provider's standing, in
//! memory, so a match scores offers without reading them from the database (MARKET.md,
//! "Matching").
//!
//! - Listings are loaded once, then kept current by listing intake ([`OfferBook::upsert`]).
//!   Writes made by another process sharing the database are picked up by a background reload
//!   every [`RELOAD_EVERY`]; a reload keeps what intake upserted while it was reading.
//! - Standings (reputation score, completed deals, measured throughput) are reloaded, in two
//!   aggregate queries, by the first match after anything that changes them: the indexer applying
//!   events, or a throughput report ([`OfferBook::standings_changed`]).
//!
//! Expiry is checked at match time. A winner's full listing is read from the database afterwards,
//! and one replaced meanwhile is left out rather than shown with terms it no longer has.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::Row;

use crate::{
    db::Db,
    rank::OfferAttrs,
    reputation::{self, Standing},
};

/// How often the listings are re-read in the background.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);

/// What ranking needs of one listing.
#[derive(Debug, Clone, PartialEq)]
pub struct BookEntry {
    provider: Arc<str>,
    root: Arc<str>,
    pub region: String,
    pub price_gib: f64,
    pub window_bytes: i64,
    pub capacity_mibps: i64,
    /// The dataset's size, bytes (0 if unknown).
    pub size: i64,
    pub issued_at: i64,
    pub expires_at: i64,
    /// Intake sequence number (0 for loaded rows): a reload keeps entries upserted after it began.
    seq: u64,
}

impl BookEntry {
    pub fn new(
        region: String,
        price_gib: f64,
        window_bytes: i64,
        capacity_mibps: i64,
        size: i64,
        issued_at: i64,
        expires_at: i64,
    ) -> Self {
        let (provider, root) = (Arc::from(""), Arc::from(""));
        Self { provider, root, region, price_gib, window_bytes, capacity_mibps, size, issued_at, expires_at, seq: 0 }
    }
}

/// An offer being ranked: provider, root, attributes, and when its listing was issued.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub provider: Arc<str>,
    pub root: Arc<str>,
    pub attrs: OfferAttrs,
    pub issued_at: i64,
}

#[derive(Default)]
struct State {
    offers: Offers,
    standings: HashMap<String, Standing>,
    loaded_at: Option<Instant>,
    /// The standings generation the standings were read at.
    standings_gen: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct OfferBook {
    state: RwLock<State>,
    /// One loader at a time.
    loading: Arc<tokio::sync::Mutex<()>>,
    seq: AtomicU64,
    /// Bumped by whatever changes a standing; starts at 1 so the first match reads them.
    standings_gen: AtomicU64,
    weights: reputation::Weights,
}

impl OfferBook {
    pub fn new() -> Arc<Self> {
        Self::with_weights(reputation::Weights::default())
    }

    /// A book whose standings weigh outcomes with `weights`.
    pub fn with_weights(weights: reputation::Weights) -> Arc<Self> {
        Arc::new(Self { standings_gen: AtomicU64::new(1), weights, ..Default::default() })
    }

    /// How this market weighs reputation.
    pub fn weights(&self) -> &reputation::Weights {
        &self.weights
    }

    /// Records a listing intake stored (after its transaction committed).
    pub fn upsert(&self, provider: &str, root: &str, mut e: BookEntry) {
        let mut st = self.state.write().expect("book lock");
        e.seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        st.offers.put(provider, root, e);
    }

    /// Whether `provider` has standing (see [`has_standing`]), by the current standings.
    pub async fn provider_has_standing(self: &Arc<Self>, db: &Db, provider: &str) -> Result<bool, sqlx::Error> {
        self.refresh(db).await?;
        Ok(self.state.read().expect("book lock").standings.get(provider).is_some_and(has_standing))
    }

    /// Takes a listing intake removed out of matching.
    pub fn remove(&self, provider: &str, root: &str) {
        let mut st = self.state.write().expect("book lock");
        if let Some(&i) = st.offers.at.get(root).and_then(|m| m.get(provider)) {
            st.offers.rows[i].expires_at = 0;
        }
    }

    /// Something a standing is computed from changed (indexed events, a throughput report).
    pub fn standings_changed(&self) {
        self.standings_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Current offers (`expires_at > now`) of one dataset, or of every dataset; with more than
    /// `cap`, the `cap` most recently issued (live providers refresh their listings).
    pub async fn candidates(
        self: &Arc<Self>,
        db: &Db,
        root: Option<&str>,
        now: i64,
        cap: usize,
    ) -> Result<Vec<Candidate>, sqlx::Error> {
        self.refresh(db).await?;
        let st = self.state.read().expect("book lock");
        let rows = &st.offers.rows;
        // (issued_at, row): the selection below compares without chasing pointers
        let mut live: Vec<(i64, usize)> = match root {
            Some(r) => st
                .offers
                .at
                .get(r)
                .into_iter()
                .flat_map(|m| m.values().copied())
                .map(|i| (rows[i].issued_at, i))
                .collect(),
            None => rows.iter().enumerate().map(|(i, e)| (e.issued_at, i)).collect(),
        };
        live.retain(|&(_, i)| rows[i].expires_at > now);
        let none = Standing::default();
        if live.len() > cap {
            // providers with standing first (throwaway keys have none), then the newest
            let standing = |i: usize| has_standing(st.standings.get(&*rows[i].provider).unwrap_or(&none));
            let key = |&(issued, i): &(i64, usize)| (standing(i), issued);
            live.select_nth_unstable_by(cap - 1, |a, b| key(b).cmp(&key(a)));
            live.truncate(cap);
        }
        Ok(live
            .into_iter()
            .map(|(_, i)| {
                let e = &rows[i];
                let s = st.standings.get(&*e.provider).unwrap_or(&none);
                Candidate {
                    provider: e.provider.clone(),
                    root: e.root.clone(),
                    issued_at: e.issued_at,
                    attrs: OfferAttrs {
                        price_gib: e.price_gib,
                        capacity_mibps: e.capacity_mibps as f64,
                        reputation: s.score,
                        deals_completed: s.completed as i64,
                        region: e.region.clone(),
                        window_mib: e.window_bytes as f64 / (1 << 20) as f64,
                        size_gib: e.size as f64 / (1u64 << 30) as f64,
                        throughput_mibps: s.throughput_mibps,
                    },
                }
            })
            .collect())
    }

    /// Loads the listings if never loaded, the standings if they changed; starts a background
    /// reload of the listings when they are older than [`RELOAD_EVERY`].
    async fn refresh(self: &Arc<Self>, db: &Db) -> Result<(), sqlx::Error> {
        let (loaded, age, standings_gen) = {
            let st = self.state.read().expect("book lock");
            (st.loaded_at.is_some(), st.loaded_at.map(|t| t.elapsed()), st.standings_gen)
        };
        if !loaded || standings_gen < self.standings_gen.load(Ordering::SeqCst) {
            let _one = self.loading.lock().await;
            if self.state.read().expect("book lock").loaded_at.is_none() {
                self.reload_offers(db).await?;
            }
            let want = self.standings_gen.load(Ordering::SeqCst);
            if self.state.read().expect("book lock").standings_gen < want {
                let standings = reputation::standings(db, &self.weights).await?;
                let mut st = self.state.write().expect("book lock");
                st.standings = standings;
                st.standings_gen = want;
            }
        } else if age.is_some_and(|a| a > RELOAD_EVERY)
            && let Ok(one) = self.loading.clone().try_lock_owned()
        {
            let (book, db) = (self.clone(), db.clone());
            tokio::spawn(async move {
                let _one = one;
                if let Err(e) = book.reload_offers(&db).await {
                    tracing::warn!("offer book reload: {e}");
                }
            });
        }
        Ok(())
    }

    /// Re-reads every listing; keeps entries intake upserted while the read ran.
    async fn reload_offers(&self, db: &Db) -> Result<(), sqlx::Error> {
        let since = self.seq.load(Ordering::SeqCst);
        let offers = read_offers(db).await?;
        self.install(since, offers);
        Ok(())
    }

    /// Replaces the listings with `offers`, read after intake sequence number `since`, keeping
    /// newer entries upserted since.
    fn install(&self, since: u64, mut offers: Offers) {
        let mut st = self.state.write().expect("book lock");
        for e in st.offers.rows.iter().filter(|e| e.seq > since) {
            offers.put(&e.provider, &e.root, e.clone());
        }
        st.offers = offers;
        st.loaded_at = Some(Instant::now());
    }
}

/// Weighed completed deals that give standing: buyers that paid a hundredth of the reputation
/// unit together (a 1-wei deal with itself does not).
pub const STANDING_WEIGHT: f64 = 0.01;

/// A provider has standing once buyers paid it ([`STANDING_WEIGHT`]) or measured its throughput
/// on a deal that paid ([`reputation::Weights::report_floor`]): both cost real tokens on
/// chain, so throwaway keys have none.
pub fn has_standing(s: &Standing) -> bool {
    s.completed >= STANDING_WEIGHT || s.throughput_mibps > 0.0
}

/// The listings, in one flat table (a whole-market scan walks contiguous memory), indexed by
/// root, then provider.
#[derive(Default)]
struct Offers {
    rows: Vec<BookEntry>,
    at: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
}

impl Offers {
    /// Adds or replaces a provider's listing of `root`; an older listing never replaces a newer.
    fn put(&mut self, provider: &str, root: &str, mut e: BookEntry) {
        if let Some(&i) = self.at.get(root).and_then(|m| m.get(provider)) {
            let old = &mut self.rows[i];
            if old.issued_at <= e.issued_at {
                (e.provider, e.root) = (old.provider.clone(), old.root.clone());
                *old = e;
            }
            return;
        }
        (e.provider, e.root) = (provider.into(), root.into());
        let (p, r) = (e.provider.clone(), e.root.clone());
        self.rows.push(e);
        self.at.entry(r).or_default().insert(p, self.rows.len() - 1);
    }
}

async fn read_offers(db: &Db) -> Result<Offers, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.provider, l.root, l.region, l.price_gib, l.window_bytes, l.capacity_mibps, m.size, \
         l.issued_at, l.expires_at FROM listings l LEFT JOIN dataset_meta m ON m.root = l.root",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut offers = Offers::default();
    for r in rows {
        let e = BookEntry::new(
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.try_get::<i64, _>(6).unwrap_or(0),
            r.get(7),
            r.get(8),
        );
        offers.put(&r.get::<String, _>(0), &r.get::<String, _>(1), e);
    }
    Ok(offers)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list(db: &Db, provider: &str, root: &str, issued_at: i64, expires_at: i64) {
        sqlx::query(
            "INSERT INTO listings (provider, root, node_id, addrs, region, price_per_byte, price_gib, window_bytes, \
             capacity_mibps, issued_at, expires_at, signature) VALUES ($1, $2, '0x', '127.0.0.1:1', 'eu', '1', 1.5, \
             1048576, 100, $3, $4, '0x')",
        )
        .bind(provider)
        .bind(root)
        .bind(issued_at)
        .bind(expires_at)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    async fn deal(db: &Db, id: &str, buyer: &str, provider: &str, state: &str) {
        sqlx::query(
            "INSERT INTO deals (id, buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, \
             opened_block, redeemed, refunded, state, buyer_won) VALUES ($1, $2, $3, 'A', '1', '100', 0, 0, 1, $5, '0', $4, 0)",
        )
        .bind(id)
        .bind(buyer)
        .bind(provider)
        .bind(state)
        // a refunded deal paid nothing; a completed one its whole deposit
        .bind(if state == "refunded" { "0" } else { "100" })
        .execute(&db.pool)
        .await
        .unwrap();
    }

    async fn providers(book: &Arc<OfferBook>, db: &Db, root: Option<&str>, cap: usize) -> Vec<String> {
        let mut v: Vec<String> =
            book.candidates(db, root, 1_000, cap).await.unwrap().into_iter().map(|c| c.provider.to_string()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn the_book_follows_the_database_intake_and_the_indexer() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}?mode=rwc", tmp.path().join("m.db").display())).await.unwrap();
        list(&db, "p1", "A", 100, 10_000).await;
        list(&db, "p2", "A", 200, 10_000).await;
        list(&db, "p3", "B", 150, 500).await; // expired at "now" (1000)
        // a unit of 100: each completed deal below (100 redeemed, its own buyer) counts as one
        let weights = reputation::Weights { unit: 100, trusted_arbiters: vec![] };
        let book = OfferBook::with_weights(weights.clone());
        assert_eq!(providers(&book, &db, None, 10).await, ["p1", "p2"], "expired offers are not matched");
        assert_eq!(providers(&book, &db, None, 1).await, ["p2"], "over the cap, the most recently issued");
        assert_eq!(providers(&book, &db, Some("A"), 10).await, ["p1", "p2"]);
        assert!(providers(&book, &db, Some("B"), 10).await.is_empty());
        assert!(providers(&book, &db, Some("C"), 10).await.is_empty());

        // standings: read when told they changed, not per match
        for (i, state) in ["completed", "completed", "completed", "refunded"].iter().enumerate() {
            deal(&db, &format!("d{i}"), &format!("b{i}"), "p1", state).await;
        }
        for (i, mibps) in [(0, 10.0), (1, 30.0), (2, 20.0)] {
            sqlx::query(
                "INSERT INTO reports (deal, provider, bytes, millis, mibps, issued_at, signature) \
                 VALUES ($1, 'p1', 1, 1, $2, 1, '0x')",
            )
            .bind(format!("d{i}"))
            .bind(mibps)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        let p1 = |c: Vec<Candidate>| c.into_iter().find(|c| &*c.provider == "p1").unwrap().attrs;
        let before = p1(book.candidates(&db, Some("A"), 1_000, 10).await.unwrap());
        assert_eq!((before.reputation, before.deals_completed), (0.5, 0));
        book.standings_changed();
        let after = p1(book.candidates(&db, Some("A"), 1_000, 10).await.unwrap());
        assert_eq!(after.reputation, reputation::score(3, 0), "the refund is counted, not scored");
        assert_eq!(after.deals_completed, 3);
        assert_eq!(after.throughput_mibps, 20.0, "the median over three buyers");
        let full = reputation::reputation(&db, "p1", &weights).await.unwrap();
        assert_eq!((full.score, full.completed, full.throughput_mibps), (after.reputation, 3, 20.0));
        // over the cap, a provider with standing (p1, older) beats a newer one without (p2):
        // throwaway keys listing later cannot push it out of a match
        assert_eq!(providers(&book, &db, Some("A"), 1).await, ["p1"]);
        assert!(book.provider_has_standing(&db, "p1").await.unwrap());
        assert!(!book.provider_has_standing(&db, "p2").await.unwrap());
        // intake's eviction takes a listing out of matching at once
        book.remove("p2", "A");
        assert_eq!(providers(&book, &db, Some("A"), 10).await, ["p1"]);
        book.upsert("p2", "A", BookEntry::new("eu".into(), 1.5, 1 << 20, 100, 0, 201, 10_000));

        // intake is seen at once; an older listing does not replace a newer one
        let entry = |issued_at| BookEntry::new("us".into(), 0.5, 1 << 20, 10, 1 << 30, issued_at, 10_000);
        book.upsert("p4", "B", entry(300));
        book.upsert("p4", "B", entry(250));
        let c = book.candidates(&db, Some("B"), 1_000, 10).await.unwrap();
        assert_eq!((c.len(), c[0].issued_at, c[0].attrs.size_gib), (1, 300, 1.0));

        // a reload keeps what intake wrote while it read, and drops what the database lost before
        let since = book.seq.load(Ordering::SeqCst);
        let read = read_offers(&db).await.unwrap();
        book.upsert("p5", "A", entry(400));
        book.install(since, read);
        assert_eq!(providers(&book, &db, Some("A"), 10).await, ["p1", "p2", "p5"]);
        assert!(providers(&book, &db, Some("B"), 10).await.is_empty(), "p4 was never stored");
    }
}
