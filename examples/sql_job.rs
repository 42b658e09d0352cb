//! Run a SQL job next to a free dataset and check the signed result.
//!
//! ```sh
//! cargo build --bin bdc && cargo run --example sql_job     # as root: jobs run under runc
//! ```
//!
//! A provider serves a day of generated trades with jobs on; a buyer asks for the VWAP per
//! symbol. The provider runs the query in a runc sandbox next to the data (`bdc worker sql`, the
//! `bdc` binary beside this example's), signs a result manifest (EIP-712) naming the dataset, the
//! query and the result's BLAKE3 root, and serves the result; the buyer checks the signature,
//! fetches the result verified against that root, and here also checks it against DataFusion
//! run locally on the same file.

use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, ensure};
use bdc_core::jobs::{Engine, JobSpec, ResultFormat};
use bdc_fetcher::{Fetcher, FetcherConfig};
use bdc_provider::{JobsConfig, Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use datafusion::{
    arrow::util::pretty::pretty_format_batches,
    prelude::{ParquetReadOptions, SessionContext},
};

const QUERY: &str = "SELECT symbol, count(*) AS trades, round(sum(price * qty) / sum(qty), 4) AS vwap \
                     FROM trades GROUP BY symbol ORDER BY symbol";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: SQL jobs run in a runc sandbox, which needs root (make test runs this example as root)");
        return Ok(());
    }
    // the job worker is the bdc binary of the same build (target/<profile>/bdc)
    let exe = std::env::current_exe()?;
    let worker = exe.parent().and_then(|d| d.parent()).map(|d| d.join("bdc")).context("no target dir")?;
    ensure!(worker.exists(), "{} not found: build it first (cargo build --bin bdc)", worker.display());

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("kaiko");
    std::fs::create_dir_all(&data)?;
    bdc_provider::jobs::worker::write_sample_trades(&data.join("trades.parquet"), 50_000).await?;

    // the provider: publishes the data free, runs jobs, signs results with its own key
    let key = PrivateKeySigner::random();
    let mut store = ProviderStore::open(&dir.path().join("provider")).await?;
    let opts = PublishOptions { free: true, name: Some("trades".into()), ..Default::default() };
    let rec = publish(&mut store, &data, &opts, |_| {}).await?;
    let jobs = JobsConfig::new(worker, key.clone());
    let provider = Provider::spawn(store, ServeConfig { jobs: Some(jobs), ..ServeConfig::test() }).await?;
    let ticket = provider.ticket(rec.root)?;

    // the buyer: submits the query, expects the result signed by that key
    let fetcher = Fetcher::open(FetcherConfig::test(dir.path().join("buyer"))).await?;
    let spec = JobSpec::Sql { query: QUERY.into(), format: ResultFormat::Parquet, engine: Engine::DataFusion };
    let out = dir.path().join("out");
    let got = fetcher.run_job(&ticket, spec, Some(key.address()), &out, "vwap.parquet", |_| {}).await?;
    let r = &got.signed.result;
    println!("{} rows by {} ({}), signed by {}", r.rows, r.engine, r.kind, got.signer);
    ensure!(got.signer == key.address() && r.dataset == rec.root && r.query == QUERY);
    ensure!(bdc_core::Hash::new(std::fs::read(&got.file)?) == r.result_root, "the file is the signed root");

    // the signed result agrees with DataFusion run here on the same data
    let ctx = SessionContext::new();
    let path = data.join("trades.parquet");
    ctx.register_parquet("trades", path.to_str().context("path")?, ParquetReadOptions::default()).await?;
    let want = pretty_format_batches(&ctx.sql(QUERY).await?.collect().await?)?.to_string();
    let file = got.file.to_str().context("path")?;
    let have = pretty_format_batches(&ctx.read_parquet(file, ParquetReadOptions::default()).await?.collect().await?)?
        .to_string();
    ensure!(have == want, "the provider's result differs from DataFusion's:\n{have}\n{want}");
    println!("{have}");

    fetcher.shutdown().await;
    provider.shutdown().await;
    println!("ok: the signed result is DataFusion's answer");
    Ok(())
}
