//! `bdc-bench`: benchmarks that print a table, each beside its peer in the same run (kept out
//! of the product crates and the `bdc` binary; `make bench` runs them on a release build).
//!
//! - `transfer`: publish vs b3sum-style hashing, and loopback fetch throughput, free and paid.
//! - `compute`: SQL through `bdc compute` vs DataFusion in process vs DuckDB.
//! - `market`: search and match latency over many listings, and the indexer's throughput.

mod compute;
mod market;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, ensure};
use bdc_fetcher::{FetchEvent, FetchOptions, Fetcher, FetcherConfig};
use bdc_provider::{Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use clap::Subcommand;
use rand::{RngCore, SeedableRng, rngs::StdRng};

/// Benchmarks that print a table, each beside its peer in the same run.
#[derive(Debug, clap::Parser)]
#[command(name = "bdc-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: BenchCmd,
}

fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BDC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The `bdc` binary (the job worker of the compute benchmark): `BDC_BIN`, else beside this one.
pub(crate) fn bdc_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BDC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let bdc = me.with_file_name("bdc");
    ensure!(bdc.is_file(), "no bdc binary beside {} (build it, or set BDC_BIN)", me.display());
    Ok(bdc)
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Publish throughput vs b3sum-style hashing, and loopback fetch throughput.
    Transfer {
        /// Size of the generated test file, MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Where to put the test file and stores (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also fetch the same file paid (starts a devnet with anvil).
        #[arg(long)]
        paid: bool,
        /// The paid run's window (bytes sent ahead of receipts), KiB.
        #[arg(long, default_value_t = 8192)]
        window_kib: u64,
        /// The paid run's receipt interval, KiB.
        #[arg(long, default_value_t = 1024)]
        receipt_every_kib: u64,
        /// Fetch runs of each kind (free, paid), alternating; medians are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Five SQL queries on a generated trades Parquet file: `bdc compute` (sandboxed, signed,
    /// fetched) vs DataFusion in-process vs DuckDB (python3 with duckdb installed).
    Compute {
        /// Rows of the generated trades file.
        #[arg(long, default_value_t = 20_000_000)]
        rows: u64,
        /// Runs of each query per engine; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Threads each engine may use.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Where to put the file and stores (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Market search and match latency over many listings (SQLite, and Postgres when
    /// --database-url or BDC_TEST_POSTGRES_URL is set), and indexer throughput on a devnet.
    Market {
        /// Listings to fill the market with.
        #[arg(long, default_value_t = 100_000)]
        listings: usize,
        /// A Postgres URL to measure too.
        #[arg(long)]
        database_url: Option<String>,
        /// Registry events to index.
        #[arg(long, default_value_t = 2_000)]
        events: usize,
        /// Requests per measured operation.
        #[arg(long, default_value_t = 500)]
        queries: usize,
        /// Instead of timing requests in process: fill a SQLite market with the listings and
        /// serve its real HTTP stack on this address for --hold seconds, for an outside load
        /// tool (`make reliability` points wrk at it).
        #[arg(long)]
        serve: Option<std::net::SocketAddr>,
        /// How long --serve serves, seconds.
        #[arg(long, default_value_t = 120)]
        hold: u64,
    },
}

/// Settings of the paid run.
struct PaidBench {
    window: u64,
    receipt_every: u64,
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Transfer { size_mib, dir, paid, window_kib, receipt_every_kib, rounds } => {
            let paid = paid.then_some(PaidBench { window: window_kib << 10, receipt_every: receipt_every_kib << 10 });
            transfer(size_mib, dir, paid, rounds.max(1)).await
        }
        BenchCmd::Compute { rows, rounds, threads, dir } => {
            compute::run(rows.max(1), rounds.max(1), dir, threads.max(1)).await
        }
        BenchCmd::Market { listings, serve: Some(addr), hold, .. } => {
            market::serve(listings.max(1), addr, std::time::Duration::from_secs(hold)).await
        }
        BenchCmd::Market { listings, database_url, events, queries, serve: None, .. } => {
            market::run(listings.max(1), database_url, events, queries.max(1)).await
        }
    }
}

struct Row {
    what: &'static str,
    bytes: u64,
    secs: f64,
}

async fn transfer(size_mib: u64, dir: Option<PathBuf>, paid: Option<PaidBench>, rounds: usize) -> anyhow::Result<()> {
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let file = tmp.path().join("bench.bin");
    let size = size_mib * 1024 * 1024;
    eprintln!("writing {size_mib} MiB of pseudo-random data to {}", file.display());
    write_random(&file, size)?;
    let mut rows = Vec::new();

    // peer: what `b3sum` does (mmap + multithreaded BLAKE3), and single-threaded BLAKE3
    let t = Instant::now();
    let expected = blake3::Hasher::new().update_mmap_rayon(&file)?.finalize();
    rows.push(Row { what: "blake3 mmap+rayon (= b3sum)", bytes: size, secs: t.elapsed().as_secs_f64() });
    let t = Instant::now();
    let single = blake3::Hasher::new().update_mmap(&file)?.finalize();
    rows.push(Row { what: "blake3 single thread", bytes: size, secs: t.elapsed().as_secs_f64() });
    ensure!(single == expected, "blake3 disagrees with itself");

    // ours: publish raw (copy) and raw in place
    let copy_dir = tmp.path().join("provider-copy");
    let root = publish_timed(&copy_dir, &file, false, "bdc publish --raw (copy)", size, &mut rows).await?;
    ensure!(root.as_bytes() == expected.as_bytes(), "published root differs from b3sum");
    let ref_dir = tmp.path().join("provider-ref");
    publish_timed(&ref_dir, &file, true, "bdc publish --raw --in-place", size, &mut rows).await?;

    // loopback fetches from the copy store, free and paid alternating (each round swaps which
    // goes first, and dirty pages are flushed before each), medians reported
    let mut free = Vec::new();
    let mut paid_runs = Vec::new();
    let mut moved = Vec::new();
    for round in 0..rounds {
        let order: &[bool] = if round % 2 == 0 { &[false, true] } else { &[true, false] };
        for &is_paid in order {
            let dir = tmp.path().join(format!("fetch-{round}-{}", if is_paid { "paid" } else { "free" }));
            sync_disks();
            match (&paid, is_paid) {
                (_, false) => free.push(free_fetch(&copy_dir, root, &dir, size, &expected, false).await?),
                (Some(settings), true) => paid_runs.push(paid_fetch(&copy_dir, root, &dir, size, settings).await?),
                (None, true) => {}
            }
            std::fs::remove_dir_all(&dir).ok();
        }
        // the same free fetch with `--move`: the files leave a staging store by rename
        let dir = tmp.path().join(format!("fetch-{round}-move"));
        sync_disks();
        moved.push(free_fetch(&copy_dir, root, &dir, size, &expected, true).await?);
        std::fs::remove_dir_all(&dir).ok();
    }
    let free_transfer = median(free.iter().map(|r| r.0));
    rows.push(Row { what: "bdc fetch, loopback: verified into store", bytes: size, secs: free_transfer });
    rows.push(Row { what: "bdc fetch: export to output dir", bytes: size, secs: median(free.iter().map(|r| r.1)) });
    rows.push(Row { what: "bdc fetch, end to end", bytes: size, secs: median(free.iter().map(|r| r.2)) });
    rows.push(Row {
        what: "bdc fetch --move: move out of staging",
        bytes: size,
        secs: median(moved.iter().map(|r| r.1)),
    });
    rows.push(Row { what: "bdc fetch --move, end to end", bytes: size, secs: median(moved.iter().map(|r| r.2)) });

    // the same file, paid: a devnet, a deal, receipts gating the stream
    let mut notes = vec![format!("fetch rows: median of {rounds} runs")];
    if let Some(settings) = paid {
        let secs = median(paid_runs.iter().map(|r| r.1));
        rows.push(Row { what: "bdc fetch --pay, loopback: verified into store", bytes: size, secs });
        // each round pairs a free and a paid fetch back to back, so the machine's background
        // noise hits both alike; the median of the rounds' ratios is the paired estimate
        let ratios: Vec<f64> = free.iter().zip(&paid_runs).map(|(f, p)| f.0 / p.1).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        notes.push(format!(
            "paid/free transfer throughput: {:.2}x median of the rounds' ratios, {:.2}x ratio of the medians \
             (each round: {}; window {} KiB, receipt every {} KiB, {} receipts)",
            median(ratios.iter().copied()),
            free_transfer / secs,
            each.join(", "),
            settings.window >> 10,
            settings.receipt_every >> 10,
            size.div_ceil(settings.receipt_every)
        ));
        let setup = median(paid_runs.iter().map(|r| r.0));
        notes
            .push(format!("paid fixed cost before the first byte (open the deal on chain, dial, Hello): {setup:.3} s"));
    }

    println!("| {:<48} | {:>8} | {:>8} | {:>9} |", "step", "MiB", "seconds", "MiB/s");
    println!("|{:-<50}|{:->10}|{:->10}|{:->11}|", "", "", "", "");
    for r in rows {
        let mib = r.bytes as f64 / (1024.0 * 1024.0);
        println!("| {:<48} | {:>8.0} | {:>8.3} | {:>9.1} |", r.what, mib, r.secs, mib / r.secs);
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    Ok(())
}

async fn publish_timed(
    dir: &Path,
    file: &Path,
    in_place: bool,
    what: &'static str,
    size: u64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<bdc_core::Hash> {
    let mut store = ProviderStore::open(dir).await?;
    let opts = PublishOptions { raw: true, in_place, free: true, ..Default::default() };
    let t = Instant::now();
    let rec = publish(&mut store, file, &opts, |_| {}).await?;
    rows.push(Row { what, bytes: size, secs: t.elapsed().as_secs_f64() });
    store.shutdown().await;
    Ok(rec.root)
}

/// Marks a fetch's progress: when the connection stood and when every byte was verified.
struct TransferTimer {
    t: Instant,
    connected: Option<f64>,
    stored: Option<f64>,
}

impl TransferTimer {
    fn new(t: Instant) -> Self {
        Self { t, connected: None, stored: None }
    }

    fn on(&mut self, ev: &FetchEvent) {
        match ev {
            FetchEvent::Connected { .. } if self.connected.is_none() => {
                self.connected = Some(self.t.elapsed().as_secs_f64())
            }
            FetchEvent::Progress { done, total } if done == total && self.stored.is_none() => {
                self.stored = Some(self.t.elapsed().as_secs_f64())
            }
            _ => {}
        }
    }

    /// (connected, stored) in seconds since the start; `end` stands in for a missing mark.
    fn marks(&self, end: f64) -> (f64, f64) {
        (self.connected.unwrap_or(0.0), self.stored.unwrap_or(end))
    }
}

/// Serves `root` free from `provider_dir` and fetches it into `dir` (`moving`: with `--move`).
/// Returns (seconds of the transfer, of the export, end to end).
async fn free_fetch(
    provider_dir: &Path,
    root: bdc_core::Hash,
    dir: &Path,
    size: u64,
    expected: &blake3::Hash,
    moving: bool,
) -> anyhow::Result<(f64, f64, f64)> {
    let store = ProviderStore::open(provider_dir).await?;
    let provider = Provider::spawn(store, ServeConfig::test()).await?;
    let ticket = provider.ticket(root)?;
    let fetcher = Fetcher::open(FetcherConfig::test(dir.join("fetcher"))).await?;
    let t = Instant::now();
    let mut timer = TransferTimer::new(t);
    let out = dir.join("out");
    let report = if moving {
        let opts = FetchOptions { export: bdc_fetcher::Export::Move, ..Default::default() };
        fetcher.staged(root, async |f| f.fetch(&ticket, &out, &opts, |ev| timer.on(&ev)).await).await?
    } else {
        fetcher.fetch(&ticket, &out, &FetchOptions::default(), |ev| timer.on(&ev)).await?
    };
    let secs = t.elapsed().as_secs_f64();
    let (connected, stored) = timer.marks(secs);
    ensure!(report.fetched_bytes == size, "fetched {} of {size} bytes", report.fetched_bytes);
    let got = blake3::Hasher::new().update_mmap_rayon(&report.files[0].path)?.finalize();
    ensure!(got == *expected, "exported file differs");
    fetcher.shutdown().await;
    provider.shutdown().await;
    Ok((stored - connected, secs - stored, secs))
}

/// Flushes dirty pages so one run's writeback does not slow the next.
fn sync_disks() {
    let _ = std::process::Command::new("sync").status();
}

pub(crate) fn median(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Serves `root` paid from `provider_dir` and times a paid fetch of it (into the store).
/// Returns (seconds before the connection stood, seconds of the transfer).
async fn paid_fetch(
    provider_dir: &Path,
    root: bdc_core::Hash,
    buyer_dir: &Path,
    size: u64,
    settings: &PaidBench,
) -> anyhow::Result<(f64, f64)> {
    use alloy::primitives::B256;
    use bdc_contracts::{Devnet, DevnetConfig};
    use bdc_provider::{PaidConfig, PaidSetup};
    let devnet = Devnet::spawn_with(DevnetConfig::default()).await?;
    devnet.contracts(1).register_dataset(B256::from(*root.as_bytes()), 1_000, B256::ZERO, 0).await?;
    let cfg = PaidConfig {
        price_per_byte: 1_000,
        window: settings.window,
        redeem_every: 256 << 20,
        arbiters: vec![devnet.address(0)],
        ..Default::default()
    };
    let setup = PaidSetup { cfg, chain: devnet.contracts(3), address: devnet.address(3) };
    let store = ProviderStore::open(provider_dir).await?;
    let provider = Provider::spawn(store, ServeConfig { paid: Some(setup), ..ServeConfig::test() }).await?;
    let offer = provider.offer(root)?;
    let fetcher = Fetcher::open(FetcherConfig::test(buyer_dir.join("fetcher"))).await?;
    let wallet = bdc_fetcher::Wallet { chain: devnet.contracts(2), signer: devnet.signer(2) };
    let mut pay = bdc_fetcher::PaidOptions::new(vec![devnet.address(0)]);
    pay.receipt_every = settings.receipt_every;
    let out = buyer_dir.join("out");
    let t = Instant::now();
    let mut timer = TransferTimer::new(t);
    let r = fetcher.fetch_paid(&offer, &wallet, &out, &FetchOptions::default(), &pay, |ev| timer.on(&ev)).await?;
    let (connected, stored) = timer.marks(t.elapsed().as_secs_f64());
    ensure!(r.fetch.fetched_bytes == size, "paid fetch moved {} of {size} bytes", r.fetch.fetched_bytes);
    ensure!(r.paid == size as u128 * 1_000, "paid {} for {size} bytes", r.paid);
    fetcher.shutdown().await;
    provider.shutdown().await;
    Ok((connected, stored - connected))
}

fn write_random(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).context("creating bench file")?);
    let mut rng = StdRng::seed_from_u64(0x6264_6320);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        rng.fill_bytes(&mut buf);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}
