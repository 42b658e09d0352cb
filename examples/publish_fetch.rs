//! The smallest bdc program: publish a folder, serve it, fetch it verified.
//!
//! ```sh
//! cargo run --example publish_fetch
//! ```
//!
//! Everything runs in this process on 127.0.0.1 (no relay, no discovery): a vendor's store and
//! provider, and a buyer's fetcher.

use anyhow::ensure;
use bdc_fetcher::{FetchOptions, Fetcher, FetcherConfig};
use bdc_provider::{Provider, ProviderStore, PublishOptions, ServeConfig, publish};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // a dataset: a folder of files
    let src = dir.path().join("trades");
    std::fs::create_dir_all(src.join("2026-12-08"))?;
    std::fs::write(src.join("2026-12-08/btc-usd.csv"), "ts,price,qty\n1,97000.5,0.2\n2,97001.0,0.1\n")?;
    std::fs::write(src.join("README.txt"), "BTC-USD trades, one day\n")?;

    // the vendor publishes it: each file becomes a BLAKE3 tree, the folder one root
    let mut store = ProviderStore::open(&dir.path().join("provider")).await?;
    let rec = publish(&mut store, &src, &PublishOptions { free: true, ..Default::default() }, |_| {}).await?;
    println!("published {} ({} files, {} bytes)", rec.root, rec.files, rec.size);

    // and serves it (on 127.0.0.1, port 0); the ticket says where and what
    let provider = Provider::spawn(store, ServeConfig::test()).await?;
    let ticket = provider.ticket(rec.root)?;

    // a buyer fetches it: every 16 KiB group verifies against the root before it is stored,
    // and a file appears in the output dir only once all of it verified
    let fetcher = Fetcher::open(FetcherConfig::test(dir.path().join("buyer"))).await?;
    let out = dir.path().join("out");
    let report = fetcher.fetch(&ticket, &out, &FetchOptions::default(), |_| {}).await?;
    for f in &report.files {
        println!("verified {} ({} bytes)", f.name, f.size);
    }

    // what arrived is what was published, byte for byte
    for name in ["2026-12-08/btc-usd.csv", "README.txt"] {
        ensure!(std::fs::read(out.join(name))? == std::fs::read(src.join(name))?, "{name} differs from the source");
    }
    fetcher.shutdown().await;
    provider.shutdown().await;
    println!("ok: {} bytes fetched and verified", report.fetched_bytes);
    Ok(())
}
