//! `bdc bench ...`: benchmarks that print a table, each beside its peer in the same run.

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
    },
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Transfer { size_mib, dir, paid } => transfer(size_mib, dir, paid).await,
    }
}

struct Row {
    what: &'static str,
    bytes: u64,
    secs: f64,
}

async fn transfer(size_mib: u64, dir: Option<PathBuf>, paid: bool) -> anyhow::Result<()> {
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

    // loopback fetch from the copy store
    let store = ProviderStore::open(&copy_dir).await?;
    let provider = Provider::spawn(store, ServeConfig::test()).await?;
    let ticket = provider.ticket(root)?;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("fetcher"))).await?;
    let out = tmp.path().join("out");
    let t = Instant::now();
    let mut stored_at = None;
    let report = fetcher
        .fetch(&ticket, &out, &FetchOptions::default(), |ev| {
            if let FetchEvent::Progress { done, total } = ev
                && done == total
                && stored_at.is_none()
            {
                stored_at = Some(t.elapsed().as_secs_f64());
            }
        })
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let stored = stored_at.unwrap_or(secs);
    rows.push(Row { what: "bdc fetch, loopback: verified into store", bytes: size, secs: stored });
    rows.push(Row { what: "bdc fetch: export to output dir", bytes: size, secs: secs - stored });
    rows.push(Row { what: "bdc fetch, end to end", bytes: size, secs });
    ensure!(report.fetched_bytes == size, "fetched {} of {size} bytes", report.fetched_bytes);
    let got = blake3::Hasher::new().update_mmap_rayon(&report.files[0].path)?.finalize();
    ensure!(got == expected, "exported file differs");
    fetcher.shutdown().await;
    provider.shutdown().await;

    // the same file, paid: a devnet, a deal, receipts gating the stream
    if paid {
        let secs = paid_fetch(&copy_dir, root, &tmp.path().join("buyer"), size).await?;
        rows.push(Row { what: "bdc fetch --pay, loopback: verified into store", bytes: size, secs });
    }

    println!("| {:<48} | {:>8} | {:>8} | {:>9} |", "step", "MiB", "seconds", "MiB/s");
    println!("|{:-<50}|{:->10}|{:->10}|{:->11}|", "", "", "", "");
    for r in rows {
        let mib = r.bytes as f64 / (1024.0 * 1024.0);
        println!("| {:<48} | {:>8.0} | {:>8.3} | {:>9.1} |", r.what, mib, r.secs, mib / r.secs);
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

/// Window and receipt interval of the paid run.
const PAID_WINDOW: u64 = 8 << 20;
const PAID_RECEIPT_EVERY: u64 = 1 << 20;

/// Serves `root` paid from `provider_dir` and times a paid fetch of it (into the store).
async fn paid_fetch(provider_dir: &Path, root: bdc_core::Hash, buyer_dir: &Path, size: u64) -> anyhow::Result<f64> {
    use alloy::primitives::B256;
    use bdc_contracts::{Devnet, DevnetConfig};
    use bdc_provider::{PaidConfig, PaidSetup};
    let devnet = Devnet::spawn_with(DevnetConfig::default()).await?;
    devnet.contracts(1).register_dataset(B256::from(*root.as_bytes()), 1_000, B256::ZERO, 0).await?;
    let cfg = PaidConfig { price_per_byte: 1_000, window: PAID_WINDOW, redeem_every: 256 << 20, ..Default::default() };
    let setup = PaidSetup { cfg, chain: devnet.contracts(3), address: devnet.address(3) };
    let store = ProviderStore::open(provider_dir).await?;
    let provider = Provider::spawn(store, ServeConfig { paid: Some(setup), ..ServeConfig::test() }).await?;
    let offer = provider.offer(root)?;
    let fetcher = Fetcher::open(FetcherConfig::test(buyer_dir.to_path_buf())).await?;
    let wallet = bdc_fetcher::Wallet { chain: devnet.contracts(2), signer: devnet.signer(2) };
    let mut pay = bdc_fetcher::PaidOptions::new(devnet.address(0));
    pay.receipt_every = PAID_RECEIPT_EVERY;
    let out = buyer_dir.join("out");
    let t = Instant::now();
    let mut stored_at = None;
    let r = fetcher
        .fetch_paid(&offer, &wallet, &out, &FetchOptions::default(), &pay, |ev| {
            if let FetchEvent::Progress { done, total } = ev
                && done == total
                && stored_at.is_none()
            {
                stored_at = Some(t.elapsed().as_secs_f64());
            }
        })
        .await?;
    let secs = stored_at.unwrap_or(t.elapsed().as_secs_f64());
    ensure!(r.fetch.fetched_bytes == size, "paid fetch moved {} of {size} bytes", r.fetch.fetched_bytes);
    ensure!(r.paid == size as u128 * 1_000, "paid {} for {size} bytes", r.paid);
    eprintln!(
        "paid run: window {} KiB, receipt every {} KiB, {} receipts signed",
        PAID_WINDOW >> 10,
        PAID_RECEIPT_EVERY >> 10,
        size.div_ceil(PAID_RECEIPT_EVERY)
    );
    fetcher.shutdown().await;
    provider.shutdown().await;
    Ok(secs)
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
