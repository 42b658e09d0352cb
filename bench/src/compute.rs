//! `bdc-bench compute`: five queries on one generated trades Parquet file, through `bdc compute`
//! (provider + runc sandbox + worker + signed result + verified fetch, in one process on
//! loopback), DataFusion in-process, and DuckDB (Python, `scripts/duckdb_bench.py`), medians
//! side by side; plus the sandbox start (a `SELECT 1` job) and bytes moved vs the dataset.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use bdc_core::jobs::{Engine, JobSpec, ResultFormat};
use bdc_fetcher::{Fetcher, FetcherConfig};
use bdc_provider::{JobsConfig, Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

/// The five queries: (name, SQL), valid in DataFusion and DuckDB alike.
pub const QUERIES: [(&str, &str); 5] = [
    ("count", "SELECT count(*) AS n FROM trades"),
    ("filter+sum", "SELECT sum(qty) AS volume FROM trades WHERE symbol = 'BTC-USD' AND price > 400"),
    (
        "group-by 100",
        "SELECT CAST(price AS BIGINT) % 100 AS bucket, count(*) AS n, sum(qty) AS volume FROM trades GROUP BY 1",
    ),
    ("group-by 1M", "SELECT date_trunc('second', ts) AS sec, count(*) AS n, max(price) AS high FROM trades GROUP BY 1"),
    ("top-5", "SELECT ts, symbol, price, qty, side FROM trades ORDER BY qty DESC, ts LIMIT 5"),
];

pub async fn run(rows: u64, rounds: usize, dir: Option<PathBuf>, threads: usize) -> anyhow::Result<()> {
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let data = tmp.path().join("kaiko");
    std::fs::create_dir_all(&data)?;
    let file = data.join("trades.parquet");
    let t = Instant::now();
    bdc_provider::jobs::worker::write_sample_trades(&file, rows).await.context("generating trades")?;
    let size = std::fs::metadata(&file)?.len();
    eprintln!("generated {rows} trades, {} MiB of Parquet, in {:.1}s", size >> 20, t.elapsed().as_secs_f64());

    // DuckDB first: it reads the file through the page cache like the others
    let queries_json = serde_json::to_string(&QUERIES.iter().cloned().collect::<std::collections::BTreeMap<_, _>>())?;
    let duck = duckdb(&file, rounds, threads, &queries_json);

    // DataFusion in-process, same threads
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    ctx.register_parquet("trades", file.to_str().context("path")?, ParquetReadOptions::default()).await?;
    let mut direct = Vec::new();
    for (_, q) in QUERIES {
        ctx.sql(q).await?.collect().await?;
        let mut xs = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            ctx.sql(q).await?.collect().await?;
            xs.push(t.elapsed().as_secs_f64());
        }
        direct.push(crate::median(xs.into_iter()));
    }

    // bdc compute: a provider with jobs, in place (no copy of the file into the store)
    let mut store = ProviderStore::open(&tmp.path().join("p")).await?;
    let opts = PublishOptions { free: true, in_place: true, name: Some("trades".into()), ..Default::default() };
    let rec = publish(&mut store, &data, &opts, |_| {}).await?;
    let signer = alloy::signers::local::PrivateKeySigner::random();
    let mut jc = JobsConfig::new(crate::bdc_binary()?, signer);
    jc.threads = threads;
    jc.limits.cpus = threads as f64;
    jc.limits.memory_bytes = 8 << 30;
    jc.limits.tmp_bytes = 1 << 30;
    let provider = Provider::spawn(store, ServeConfig { jobs: Some(jc), ..ServeConfig::test() }).await?;
    let ticket = provider.ticket(rec.root)?;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await?;
    let out = tmp.path().join("out");
    let mut n = 0;
    let mut job = |sql: &str| {
        n += 1;
        let spec = JobSpec::Sql { query: sql.to_string(), format: ResultFormat::Parquet, engine: Engine::DataFusion };
        let (fetcher, ticket, out) = (&fetcher, &ticket, &out);
        async move {
            let t = Instant::now();
            let r = fetcher.run_job(ticket, spec, None, out, &format!("r{n}.parquet"), |_| {}).await?;
            anyhow::Ok((t.elapsed().as_secs_f64(), r.signed.result.bytes))
        }
    };
    // the first job exports the dataset out of the store once; later jobs reuse it
    let (first, _) = job("SELECT 1").await?;
    let mut starts = Vec::new();
    for _ in 0..rounds.max(5) {
        starts.push(job("SELECT 1").await?.0);
    }
    let start = crate::median(starts.into_iter());
    // each round pairs the query's job with a `SELECT 1` job run right before or after it (the
    // order alternates), so the start subtracted is the one the machine gave that round
    let mut compute = Vec::new();
    let mut paired = Vec::new();
    let mut moved = 0;
    for (_, q) in QUERIES {
        let (mut xs, mut nets) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (secs, bytes, one) = if round % 2 == 0 {
                let one = job("SELECT 1").await?.0;
                let (secs, bytes) = job(q).await?;
                (secs, bytes, one)
            } else {
                let (secs, bytes) = job(q).await?;
                (secs, bytes, job("SELECT 1").await?.0)
            };
            xs.push(secs);
            nets.push(secs - one);
            moved = moved.max(bytes);
        }
        compute.push(crate::median(xs.into_iter()));
        let (lo, hi) = nets.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(*x), h.max(*x)));
        paired.push((crate::median(nets.into_iter()), lo, hi));
    }
    fetcher.shutdown().await;
    provider.shutdown().await;

    let duck = duck?;
    println!();
    println!(
        "bdc compute vs DataFusion vs DuckDB {}: {rows} rows, {} MiB Parquet, {threads} threads, medians of {rounds}",
        duck.0,
        size >> 20
    );
    println!(
        "sandbox start (a `SELECT 1` job end to end: runc + worker + tables + signed manifest + fetch): {:.0} ms (first job, with the dataset export: {:.0} ms)",
        start * 1e3,
        first * 1e3
    );
    println!();
    println!(
        "minus start: the median over rounds of (query job − that round's `SELECT 1` job), and the rounds' range; \
         below zero when the query takes less than the start's spread"
    );
    println!();
    println!(
        "| query | bdc compute (ms) | minus start (ms) | rounds (ms) | DataFusion direct (ms) | DuckDB (ms) | (bdc − start) / DuckDB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, (name, _)) in QUERIES.iter().enumerate() {
        let d = duck.1.get(*name).copied().unwrap_or(f64::NAN);
        let (net, lo, hi) = paired[i];
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} to {:.0} | {:.1} | {:.1} | {:.2}× |",
            compute[i] * 1e3,
            net * 1e3,
            lo * 1e3,
            hi * 1e3,
            direct[i] * 1e3,
            d * 1e3,
            net / d
        );
    }
    println!();
    println!(
        "bytes moved: largest result {} bytes vs {} bytes to download the dataset ({:.5}%)",
        moved,
        size,
        moved as f64 * 100.0 / size as f64
    );
    Ok(())
}

/// Runs scripts/duckdb_bench.py: (version, median seconds per query name).
fn duckdb(
    file: &std::path::Path,
    rounds: usize,
    threads: usize,
    queries: &str,
) -> anyhow::Result<(String, std::collections::HashMap<String, f64>)> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/duckdb_bench.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(file)
        .arg(rounds.to_string())
        .arg(threads.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start python3 for DuckDB")?;
    child.stdin.take().context("stdin")?.write_all(queries.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "DuckDB run failed (pip install duckdb)");
    #[derive(serde::Deserialize)]
    struct Out {
        version: String,
        secs: std::collections::HashMap<String, Vec<f64>>,
    }
    let o: Out = serde_json::from_slice(&out.stdout)?;
    Ok((o.version, o.secs.into_iter().map(|(k, v)| (k, crate::median(v.into_iter()))).collect()))
}
