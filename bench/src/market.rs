//! `bdc-bench market`: search and match latency (p50/p99) over many listings, through the
//! market's real router (axum + tower stack, no network), and the indexer's throughput on a
//! devnet.

use std::time::Instant;

use alloy::providers::Provider;
use anyhow::Context;
use bdc_market::{Db, Indexer, api};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tower::ServiceExt;

const EXCHANGES: &[&str] = &[
    "kaiko", "binance", "coinbase", "kraken", "bitstamp", "okx", "bybit", "gemini", "bitfinex", "huobi", "deribit",
    "bitmex", "gateio", "kucoin", "mexc", "upbit", "bithumb", "poloniex", "bittrex", "lmax",
];
const BASES: &[&str] = &["btc", "eth", "sol", "xrp", "ada", "doge", "dot", "avax", "link", "matic", "ltc", "atom"];
const QUOTES: &[&str] = &["usd", "usdt", "usdc", "eur", "btc", "eth"];
const KINDS: &[&str] = &["trades", "orderbook", "ohlcv", "quotes", "funding"];
const REGIONS: &[&str] = &["eu", "us", "asia"];

/// Fills the database with `datasets` datasets and `listings` listings spread over them, the
/// rows the market writes on listing intake.
async fn fill(db: &Db, datasets: usize, listings: usize) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut tx = db.pool.begin().await?;
    let now = bdc_core::time::unix_now() as i64;
    for i in 0..datasets {
        let root = format!("0x{:064x}", i + 1);
        let ex = EXCHANGES[rng.random_range(0..EXCHANGES.len())];
        let pair = format!("{}-{}", BASES[rng.random_range(0..BASES.len())], QUOTES[rng.random_range(0..QUOTES.len())]);
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let year = 2019 + rng.random_range(0..7);
        let name = format!("{ex} {pair} {kind} {year}");
        let vendor = format!("0x{:040x}", 1 + i % 50);
        sqlx::query("INSERT INTO datasets (root, vendor, royalty_bps, manifest_hash, price_hint, block) VALUES ($1, $2, 0, $3, '0', 1)")
            .bind(&root)
            .bind(&vendor)
            .bind(format!("0x{:064x}", 0))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO dataset_meta (root, name, description, tags, size, files, manifest_verified) VALUES ($1, $2, $3, $4, $5, '[]', 0)",
        )
        .bind(&root)
        .bind(&name)
        .bind(format!("{kind} for {pair} on {ex}, {year}"))
        .bind(format!("{ex},{kind}"))
        .bind(rng.random_range(1i64 << 20..1i64 << 36))
        .execute(&mut *tx)
        .await?;
        for t in bdc_market::db::terms(&format!("{name} {ex} {kind}")) {
            sqlx::query("INSERT INTO terms (term, root, name) VALUES ($1, $2, $3) ON CONFLICT (term, root) DO NOTHING")
                .bind(t)
                .bind(&root)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
        }
    }
    for j in 0..listings {
        let root = format!("0x{:064x}", j % datasets + 1);
        let ppb: u128 = rng.random_range(100_000_000..5_000_000_000);
        sqlx::query(
            "INSERT INTO listings (provider, root, node_id, addrs, region, price_per_byte, price_gib, window_bytes, \
             capacity_mibps, issued_at, expires_at, signature) VALUES ($1, $2, $3, '127.0.0.1:1', $4, $5, $6, $7, $8, $9, $10, '0x')",
        )
        .bind(format!("0x{:040x}", 1000 + j / datasets))
        .bind(&root)
        .bind(format!("0x{:064x}", j))
        .bind(REGIONS[rng.random_range(0..REGIONS.len())])
        .bind(ppb.to_string())
        .bind(api::price_gib(ppb))
        .bind(8i64 << 20)
        .bind(rng.random_range(10i64..1000))
        .bind(now)
        .bind(now + 86_400)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Makes one search query string.
type QueryMaker = Box<dyn Fn(&mut StdRng) -> String>;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Times `n` requests made by `req(i)`; returns (p50, p99) in ms.
async fn time_requests(
    app: &axum::Router,
    n: usize,
    mut req: impl FnMut(usize) -> axum::http::Request<axum::body::Body>,
) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let r = req(i);
        let t = Instant::now();
        let res = app.clone().oneshot(r).await?;
        let status = res.status();
        let _ = axum::body::to_bytes(res.into_body(), 1 << 24).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(status.is_success(), "request {i} failed with {status}");
    }
    Ok((pct(&mut ms, 0.5), pct(&mut ms, 0.99)))
}

/// Fills a SQLite market with `listings` listings and serves its real router (the tower stack of
/// `Limits::default()`) on `addr` for `hold`, for an outside load tool; prints `serving <url>`
/// when ready.
pub async fn serve(listings: usize, addr: std::net::SocketAddr, hold: std::time::Duration) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let db = Db::connect(&format!("sqlite://{}?mode=rwc", tmp.path().join("load.db").display())).await?;
    let datasets = (listings / 5).max(1);
    fill(&db, datasets, listings).await?;
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    let st = api::AppState {
        db,
        chain_id: 31337,
        registry: Default::default(),
        metrics: Default::default(),
        index: Default::default(),
        book: bdc_market::book::OfferBook::new(),
        intake: Default::default(),
    };
    let app = api::router(st, api::Limits::default());
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind {addr}"))?;
    println!("serving http://{} ({datasets} datasets, {listings} listings)", listener.local_addr()?);
    let server = axum::serve(listener, app);
    match tokio::time::timeout(hold, server).await {
        Ok(r) => r.context("market server")?,
        Err(_) => eprintln!("held {} s, stopping", hold.as_secs()),
    }
    Ok(())
}

/// Runs the benchmark and prints its table.
pub async fn run(listings: usize, database_url: Option<String>, events: usize, queries: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let mut backends = vec![format!("sqlite://{}?mode=rwc", tmp.path().join("bench.db").display())];
    if let Some(u) = database_url.or_else(|| std::env::var("BDC_TEST_POSTGRES_URL").ok()) {
        backends.push(u);
    }
    let devnet = bdc_contracts::Devnet::spawn_with(bdc_contracts::DevnetConfig::default()).await?;
    let d = devnet.deployment.clone();
    for url in backends {
        let db = Db::connect(&url).await.with_context(|| format!("bench database {}", bdc_market::db::redact(&url)))?;
        for t in ["terms", "listings", "dataset_meta", "datasets"] {
            sqlx::query(&format!("DELETE FROM {t}")).execute(&db.pool).await?;
        }
        let datasets = (listings / 5).max(1);
        let t = Instant::now();
        fill(&db, datasets, listings).await?;
        // planner statistics and the visibility map, as Postgres's autovacuum would leave them
        // after a bulk load (index-only scans skip the heap once pages are all-visible)
        let analyze = if db.backend == "postgres" { "VACUUM ANALYZE" } else { "ANALYZE" };
        sqlx::query(analyze).execute(&db.pool).await?;
        eprintln!(
            "{}: {datasets} datasets, {listings} listings written in {:.1} s",
            db.backend,
            t.elapsed().as_secs_f64()
        );
        let st = api::AppState {
            db: db.clone(),
            chain_id: d.chain_id,
            registry: d.registry,
            metrics: Default::default(),
            index: Default::default(),
            book: bdc_market::book::OfferBook::new(),
            intake: Default::default(),
        };
        let app = api::router(st, api::Limits::default());
        let mut rng = StdRng::seed_from_u64(11);
        let get = |uri: String| axum::http::Request::get(uri).body(axum::body::Body::empty()).expect("request");
        let kinds: [(&str, QueryMaker); 3] = [
            (
                "search: one word (an exchange), top 20",
                Box::new(|r: &mut StdRng| format!("q={}", EXCHANGES[r.random_range(0..EXCHANGES.len())])),
            ),
            (
                "search: two words (pair base + kind), top 20",
                Box::new(|r: &mut StdRng| {
                    format!("q={}%20{}", BASES[r.random_range(0..BASES.len())], KINDS[r.random_range(0..KINDS.len())])
                }),
            ),
            (
                "search: 2-letter prefix + tag + max price, top 20",
                Box::new(|r: &mut StdRng| {
                    format!(
                        "q={}&max_price_gib={}&tag={}",
                        &BASES[r.random_range(0..BASES.len())][..2],
                        r.random_range(1..5),
                        KINDS[r.random_range(0..KINDS.len())]
                    )
                }),
            ),
        ];
        for (what, make) in kinds {
            let qs: Vec<String> = (0..queries).map(|_| make(&mut rng)).collect();
            // warm-up: the database's caches, and Postgres's prepared statements
            time_requests(&app, 20.min(queries), |i| get(format!("/datasets?{}&limit=20", qs[i]))).await?;
            let (p50, p99) = time_requests(&app, queries, |i| get(format!("/datasets?{}&limit=20", qs[i]))).await?;
            rows.push((db.backend, what, p50, p99));
        }
        let post = |body: String| {
            axum::http::Request::post("/match")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .expect("request")
        };
        let rank = r#""require": "capacity_mibps >= 50.0", "rank": {"cheap": "-1.0 * price_gib", "fast": "capacity_mibps / 1000.0", "rep": "reputation", "eu": "region == 'eu' ? 0.5 : 0.0"}"#;
        let (p50, p99) = time_requests(&app, queries, |i| {
            post(format!(r#"{{"root": "0x{:064x}", {rank}}}"#, (i * 7919) % datasets + 1))
        })
        .await?;
        rows.push((db.backend, "match: one dataset's offers, 4 CEL criteria", p50, p99));
        let (p50, p99) = time_requests(&app, queries, |_| post(format!("{{{rank}}}"))).await?;
        rows.push((db.backend, "match: all offers (scans ≤ 10,000), 4 criteria", p50, p99));
    }

    println!("| backend | operation ({listings} listings) | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|");
    for (b, what, p50, p99) in rows {
        println!("| {b} | {what} | {p50:.2} | {p99:.2} |");
    }

    // indexer throughput: registrations on anvil (sent back to back with explicit nonces, one
    // receipt awaited at the end), then one catch-up
    let vendor = devnet.contracts(1);
    let from = devnet.address(1);
    let mut nonce = vendor.provider().get_transaction_count(from).await?;
    let t = Instant::now();
    let mut last = None;
    let registry = vendor.registry();
    for i in 0..events {
        let root = alloy::primitives::B256::from(alloy::primitives::U256::from(i + 1));
        let call = registry.register(root, 0, Default::default(), 0).from(from).nonce(nonce).gas(200_000);
        last = Some(call.send().await?);
        nonce += 1;
    }
    if let Some(p) = last {
        p.get_receipt().await?;
    }
    eprintln!("{events} registrations mined in {:.1} s", t.elapsed().as_secs_f64());
    let db = Db::connect(&format!("sqlite://{}?mode=rwc", tmp.path().join("index.db").display())).await?;
    let indexer = Indexer::new(db.clone(), devnet.contracts(0));
    let t = Instant::now();
    indexer.catch_up().await?;
    let secs = t.elapsed().as_secs_f64();
    let n: i64 = sqlx::Row::get(&sqlx::query("SELECT COUNT(*) FROM events").fetch_one(&db.pool).await?, 0);
    anyhow::ensure!(n as usize >= events, "indexed {n} of {events} events");
    println!("\nindexer (SQLite): {n} events in {secs:.2} s = {:.0} events/s", n as f64 / secs);
    Ok(())
}
