//! Compute jobs: a real provider running SQL jobs in runc sandboxes (`bdc worker sql` is this
//! build's binary), a real fetcher submitting them over `bdc/jobs/1` on 127.0.0.1. Needs runc and
//! root (`make test` installs runc; CI runs as root).

use std::{path::Path, time::Duration};

use alloy::{signers::local::PrivateKeySigner, sol_types::SolValue};
use bdc_core::{
    BlobFormat,
    jobs::{Engine, JobSpec, ResultFormat, codes},
    ticket::BlobTicket,
};
use bdc_fetcher::{Fetcher, FetcherConfig, JobError};
use bdc_provider::{JobsConfig, Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use datafusion::{
    arrow::util::pretty::pretty_format_batches,
    prelude::{CsvReadOptions, ParquetReadOptions, SessionContext},
};

use crate::common::files_with_ext;

const ROWS: u64 = 200_000;

/// A dataset dir with trades.parquet (generated) and symbols.csv.
async fn market_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    bdc_provider::jobs::worker::write_sample_trades(&dir.join("trades.parquet"), ROWS).await.unwrap();
    std::fs::write(
        dir.join("symbols.csv"),
        "symbol,base,quote\nBTC-USD,BTC,USD\nETH-USD,ETH,USD\nSOL-USD,SOL,USD\nXRP-USD,XRP,USD\nADA-USD,ADA,USD\n",
    )
    .unwrap();
}

fn jobs_config(key: &PrivateKeySigner) -> JobsConfig {
    let mut jc = JobsConfig::new(env!("CARGO_BIN_EXE_bdc").into(), key.clone());
    jc.limits.memory_bytes = 384 << 20;
    jc.limits.wall_time = Duration::from_secs(20);
    jc
}

async fn serve(tmp: &Path, data: &Path, jc: JobsConfig) -> (Provider, BlobTicket) {
    let mut store = ProviderStore::open(&tmp.join("p")).await.unwrap();
    let opts = PublishOptions { free: true, name: Some("trades".into()), ..Default::default() };
    let rec = publish(&mut store, data, &opts, |_| {}).await.unwrap();
    let cfg = ServeConfig { jobs: Some(jc), ..ServeConfig::test() };
    let provider = Provider::spawn(store, cfg).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    (provider, ticket)
}

/// A provider of the generated market data with jobs on (signing with `key`), and a buyer.
struct Served {
    tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    key: PrivateKeySigner,
    provider: Provider,
    ticket: BlobTicket,
    fetcher: Fetcher,
}

async fn served() -> Served {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let key = PrivateKeySigner::random();
    let (provider, ticket) = serve(tmp.path(), &data, jobs_config(&key)).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    Served { tmp, data, key, provider, ticket, fetcher }
}

/// The query run directly in DataFusion over the original files, pretty-printed.
async fn direct(data: &Path, sql: &str) -> String {
    let ctx = SessionContext::new();
    ctx.register_parquet("trades", data.join("trades.parquet").to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    ctx.register_csv("symbols", data.join("symbols.csv").to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
    pretty_format_batches(&ctx.sql(sql).await.unwrap().collect().await.unwrap()).unwrap().to_string()
}

/// A result file read back with DataFusion, pretty-printed.
async fn read_result(file: &Path, format: ResultFormat) -> String {
    let ctx = SessionContext::new();
    let path = file.to_str().unwrap();
    let df = match format {
        ResultFormat::Parquet => ctx.read_parquet(path, ParquetReadOptions::default()).await.unwrap(),
        ResultFormat::Csv => ctx.read_csv(path, CsvReadOptions::new()).await.unwrap(),
    };
    pretty_format_batches(&df.collect().await.unwrap()).unwrap().to_string()
}

fn sql(query: &str, format: ResultFormat) -> JobSpec {
    JobSpec::Sql { query: query.into(), format, engine: Engine::DataFusion }
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_job_result_equals_datafusion_direct_and_is_signed() {
    let Served { tmp, data, key, provider, ticket, fetcher } = served().await;
    let out = tmp.path().join("out");

    let queries = [
        "SELECT symbol, side, count(*) AS n, sum(qty) AS volume, round(avg(price), 6) AS avg_price \
         FROM trades GROUP BY symbol, side ORDER BY symbol, side",
        "SELECT t.symbol, s.base, max(t.price) AS high, min(t.price) AS low \
         FROM trades t JOIN symbols s ON t.symbol = s.symbol GROUP BY t.symbol, s.base ORDER BY t.symbol",
        "SELECT ts, symbol, price, qty, side FROM trades WHERE price > 690 ORDER BY ts LIMIT 25",
        // a conjunction over interleaved symbols: the worker's whole-batch AND (jobs/conjunction.rs)
        // and its literal comparisons (jobs/literal_cmp.rs)
        "SELECT count(*) AS n, round(sum(qty), 6) AS volume FROM trades WHERE symbol = 'BTC-USD' AND price > 400 \
         AND side = 'buy'",
        "SELECT side, count(*) AS n FROM trades WHERE symbol <> 'ETH-USD' AND 250.5 >= price GROUP BY side ORDER BY side",
    ];
    let mut last_root = None;
    for (i, q) in queries.iter().enumerate() {
        let format = if i == 1 { ResultFormat::Csv } else { ResultFormat::Parquet };
        let mut events = Vec::new();
        let name = format!("r{i}.{}", format.extension());
        let got = fetcher
            .run_job(&ticket, sql(q, format), Some(key.address()), &out, &name, |e| events.push(format!("{e:?}")))
            .await
            .unwrap_or_else(|e| panic!("query {i} failed: {e}"));
        let r = &got.signed.result;
        assert_eq!(got.signer, key.address());
        assert_eq!((r.dataset, r.query.as_str(), r.kind.as_str()), (ticket.hash(), *q, "sql"));
        assert!(r.engine.starts_with("datafusion 55."), "{}", r.engine);
        assert_eq!(r.bytes, std::fs::metadata(&got.file).unwrap().len());
        assert_eq!(bdc_core::Hash::new(std::fs::read(&got.file).unwrap()), r.result_root);
        assert!(r.finished_ms >= r.started_ms);
        assert!(events.iter().any(|e| e.starts_with("Running")), "{events:?}");
        let want = direct(&data, q).await;
        let have = read_result(&got.file, format).await;
        if format == ResultFormat::Parquet {
            assert_eq!(have, want, "query {i}");
        } else {
            // CSV loses types (timestamps and floats print alike); compare row counts and cells
            assert_eq!(have.lines().count(), want.lines().count(), "query {i}:\n{have}\n{want}");
        }
        let rows = want.lines().count() as u64 - 4; // header, separators and frame lines
        assert_eq!(r.rows, rows, "query {i}");
        last_root = Some(r.result_root);
    }

    // a result is its buyer's: a stranger who learns the hash gets nothing on the free protocol
    let root = last_root.unwrap();
    let stranger = bdc_core::net::bind_endpoint(&bdc_core::net::NetConfig::test(), iroh::SecretKey::generate(), vec![])
        .await
        .unwrap();
    let conn = stranger.connect(ticket.addr().clone(), bdc_core::protocol::FREE_ALPN).await.unwrap();
    let store = iroh_blobs::store::mem::MemStore::new();
    let err = store.remote().execute_get(conn, iroh_blobs::protocol::GetRequest::blob(root)).await.unwrap_err();
    assert_eq!(err.iroh_error_code(), Some(iroh_blobs::protocol::ERR_PERMISSION), "{err:?}");
    assert!(!store.blobs().has(root).await.unwrap());

    // the provider's stored copy of a result is altered: a buyer fetching it rejects the bytes
    let q = "SELECT * FROM trades ORDER BY ts";
    let big = fetcher.run_job(&ticket, sql(q, ResultFormat::Csv), None, &out, "all.csv", |_| {}).await.unwrap();
    assert!(big.signed.result.bytes > 1 << 20);
    let hex = big.signed.result.result_root.to_hex().to_string();
    let stored: Vec<_> = files_with_ext(&tmp.path().join("p/store"), "data")
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(&hex))
        .collect();
    assert_eq!(stored.len(), 1, "the result is one data file in the store");
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&stored[0], &bytes).unwrap();
    // (the buyer, from a second data dir with the same node key so the provider serves it the
    // result, fetches the signed root as `run_job` does after checking the manifest; re-running
    // the job would re-import the same bytes and heal the copy)
    std::fs::create_dir_all(tmp.path().join("f2")).unwrap();
    std::fs::copy(fetcher.data_dir().join("node.key"), tmp.path().join("f2/node.key")).unwrap();
    let other = Fetcher::open(FetcherConfig::test(tmp.path().join("f2"))).await.unwrap();
    let root = BlobTicket::new(provider.addr(), big.signed.result.result_root, BlobFormat::Raw);
    let opts = bdc_fetcher::FetchOptions { raw_name: Some("again.csv".into()) };
    let err = other.fetch(&root, &out, &opts, |_| {}).await.unwrap_err();
    assert!(matches!(err, bdc_fetcher::FetchError::ProviderAborted { .. }), "{err}");
    assert!(!out.join("again.csv").exists(), "nothing unverified written");
    other.shutdown().await;
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// `--engine ballista`: a standalone Ballista scheduler and executor inside the job's sandbox
/// (gRPC over the sandbox's own loopback) give the same answers as DataFusion direct, and the
/// signed manifest names Ballista.
#[cfg(feature = "ballista")]
#[tokio::test(flavor = "multi_thread")]
async fn ballista_job_result_equals_datafusion_direct() {
    let Served { tmp, data, key, provider, ticket, fetcher } = served().await;
    let out = tmp.path().join("out");
    let queries = [
        // (float sums are rounded: Ballista adds partial sums in another order)
        "SELECT symbol, side, count(*) AS n, round(sum(qty), 6) AS volume FROM trades GROUP BY symbol, side \
         ORDER BY symbol, side",
        "SELECT t.symbol, s.base, max(t.price) AS high FROM trades t JOIN symbols s ON t.symbol = s.symbol \
         GROUP BY t.symbol, s.base ORDER BY t.symbol",
    ];
    for (i, q) in queries.iter().enumerate() {
        let spec = JobSpec::Sql { query: q.to_string(), format: ResultFormat::Parquet, engine: Engine::Ballista };
        let got = fetcher
            .run_job(&ticket, spec, Some(key.address()), &out, &format!("b{i}.parquet"), |_| {})
            .await
            .unwrap_or_else(|e| panic!("ballista query {i} failed: {e}"));
        assert!(got.signed.result.engine.starts_with("ballista 55."), "{}", got.signed.result.engine);
        assert_eq!(read_result(&got.file, ResultFormat::Parquet).await, direct(&data, q).await, "query {i}");
    }
    // read-only holds on Ballista too
    let spec = JobSpec::Sql {
        query: "CREATE TABLE x AS SELECT 1".into(),
        format: ResultFormat::Csv,
        engine: Engine::Ballista,
    };
    match fetcher.run_job(&ticket, spec, None, &out, "x.csv", |_| {}).await.unwrap_err() {
        JobError::Failed { code, .. } => assert_eq!(code, codes::QUERY_REFUSED),
        other => panic!("expected a refused job, got {other}"),
    }
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// A provider built without the `ballista` feature refuses Ballista jobs before running anything.
#[cfg(not(feature = "ballista"))]
#[tokio::test(flavor = "multi_thread")]
async fn ballista_jobs_are_refused_without_the_feature() {
    let Served { tmp, provider, ticket, fetcher, .. } = served().await;
    let spec = JobSpec::Sql { query: "SELECT 1".into(), format: ResultFormat::Csv, engine: Engine::Ballista };
    match fetcher.run_job(&ticket, spec, None, tmp.path(), "x.csv", |_| {}).await.unwrap_err() {
        JobError::Failed { code, reason, .. } => {
            assert_eq!(code, codes::UNSUPPORTED_JOB);
            assert!(reason.contains("ballista"), "{reason}");
        }
        other => panic!("expected a refused job, got {other}"),
    }
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// A job's bounded `/out`, left mounted by a provider that stopped mid-job, is unmounted and
/// removed when the provider starts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_job_mount_is_cleaned_at_start() {
    let mounted = |p: &Path| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().any(|l| l.split(' ').nth(1) == p.to_str())
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let stale = tmp.path().join("p/jobs/run/stale/out");
    std::fs::create_dir_all(&stale).unwrap();
    // as a killed provider leaves it: mounted, never dropped
    std::mem::forget(bdc_provider::jobs::sandbox::BoundedDir::mount(&stale, 1 << 20, 0).unwrap());
    std::fs::write(stale.join("partial.parquet"), b"cut off").unwrap();
    assert!(mounted(&stale));
    let (provider, _) = serve(tmp.path(), &data, jobs_config(&PrivateKeySigner::random())).await;
    assert!(!mounted(&stale), "the stale /out is unmounted");
    assert!(!stale.parent().unwrap().exists(), "and the stale job directory removed");
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_fail_with_reasons_and_the_provider_stays_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let key = PrivateKeySigner::random();
    let mut jc = jobs_config(&key);
    jc.limits.memory_bytes = 256 << 20;
    jc.limits.wall_time = Duration::from_secs(4);
    jc.max_result_bytes = 1 << 20;
    let (provider, ticket) = serve(tmp.path(), &data, jc).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let cases = [
        ("CREATE TABLE x AS SELECT 1", codes::QUERY_REFUSED, "DDL"),
        ("CREATE EXTERNAL TABLE y STORED AS CSV LOCATION '/etc/passwd'", codes::QUERY_REFUSED, "DDL"),
        ("INSERT INTO trades SELECT * FROM trades", codes::QUERY_REFUSED, "DML"),
        ("COPY trades TO '/out/copy.csv'", codes::QUERY_REFUSED, "COPY"),
        ("SET datafusion.execution.batch_size = 1", codes::QUERY_REFUSED, "Statement"),
        ("SELECT * FROM '/etc/passwd'", codes::QUERY_REFUSED, "/etc/passwd"),
        ("SELECT nonsense FROM", codes::QUERY_REFUSED, ""),
        ("SELECT array_agg(value) FROM generate_series(1, 400000000)", codes::MEMORY_LIMIT, ""),
        ("SELECT count(*) FROM generate_series(1, 1000000000000)", codes::TIME_LIMIT, "wall-time"),
    ];
    for (q, code, needle) in cases {
        let err = fetcher.run_job(&ticket, sql(q, ResultFormat::Csv), None, &out, "x.csv", |_| {}).await.unwrap_err();
        match &err {
            JobError::Failed { code: c, reason, .. } => {
                assert_eq!(*c, code, "{q}: {err}");
                assert!(reason.contains(needle), "{q}: reason should mention {needle:?}: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{q}: expected a failed job, got {other}"),
        }
    }
    assert!(!out.exists(), "failed jobs write nothing");
    // and the next job runs
    let ok = fetcher
        .run_job(&ticket, sql("SELECT count(*) AS n FROM trades", ResultFormat::Csv), None, &out, "n.csv", |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&ok.file).unwrap(), format!("n\n{ROWS}\n"));
    // a dataset this provider does not have
    let missing = BlobTicket::new(provider.addr(), bdc_core::Hash::new(b"nope"), BlobFormat::HashSeq);
    let err =
        fetcher.run_job(&missing, sql("SELECT 1", ResultFormat::Csv), None, &out, "y.csv", |_| {}).await.unwrap_err();
    assert!(matches!(err, JobError::Failed { code: codes::UNKNOWN_DATASET, .. }), "{err}");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// How a lying provider bends the manifest it signed.
type Bend = fn(&mut bdc_core::jobs::SignedJobResult, &PrivateKeySigner);

/// A provider that answers every job with a manifest bent by `bend`.
#[derive(Debug, Clone)]
struct Liar {
    key: PrivateKeySigner,
    bend: Bend,
}

impl iroh::protocol::ProtocolHandler for Liar {
    async fn accept(&self, conn: iroh::endpoint::Connection) -> Result<(), iroh::protocol::AcceptError> {
        use bdc_core::jobs::{JobRequest, JobResult, JobUpdate, decode, frame};
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        recv.read_exact(&mut body).await.unwrap();
        let req: JobRequest = decode(&body, 1 << 16).unwrap();
        let result = JobResult {
            job_id: [7; 32],
            deal_id: [0; 32],
            dataset: req.dataset,
            kind: req.spec.kind().into(),
            query: req.spec.describe(),
            engine: "datafusion 55.2.0".into(),
            result_root: bdc_core::Hash::new(b"some result"),
            format: "csv".into(),
            rows: 1,
            bytes: 11,
            started_ms: 1,
            finished_ms: 2,
        };
        let mut signed = bdc_contracts::jobs::sign_job_result(&self.key, result).unwrap();
        (self.bend)(&mut signed, &self.key);
        send.write_all(&frame(&JobUpdate::Done(Box::new(signed)))).await.unwrap();
        send.finish().unwrap();
        let _ = send.stopped().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_or_foreign_manifests_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let key = PrivateKeySigner::random();
    use bdc_contracts::jobs::ResultSigError;
    use bdc_fetcher::Rejection;
    type Expected = fn(&Rejection) -> bool;
    let altered: Expected = |r| matches!(r, Rejection::Signature(ResultSigError::NotItsSigner { .. }));
    let bends: [(Bend, Expected); 5] = [
        (|s, _| s.result.rows += 1, altered),
        (|s, _| s.result.result_root = bdc_core::Hash::new(b"other"), altered),
        (
            |s, _| {
                s.result.query = "SELECT 2".into();
                *s = bdc_contracts::jobs::sign_job_result(&PrivateKeySigner::random(), s.result.clone()).unwrap();
            },
            |r| matches!(r, Rejection::NotTheProvider { .. }),
        ),
        (
            |s, k| {
                s.result.query = "SELECT 2".into();
                *s = bdc_contracts::jobs::sign_job_result(k, s.result.clone()).unwrap();
            },
            |r| matches!(r, Rejection::Query),
        ),
        (
            |s, k| {
                // a DataFusion job answered as if Ballista ran it
                s.result.engine = "ballista 55.0.0 (datafusion 55.2.0)".into();
                *s = bdc_contracts::jobs::sign_job_result(k, s.result.clone()).unwrap();
            },
            |r| matches!(r, Rejection::Engine { .. }),
        ),
    ];
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    for (bend, expected) in bends {
        let ep = bdc_core::net::bind_endpoint(
            &bdc_core::net::NetConfig::test(),
            iroh::SecretKey::generate(),
            vec![bdc_core::protocol::JOBS_ALPN.to_vec()],
        )
        .await
        .unwrap();
        let router = iroh::protocol::Router::builder(ep.clone())
            .accept(bdc_core::protocol::JOBS_ALPN, Liar { key: key.clone(), bend })
            .spawn();
        let ticket =
            BlobTicket::new(bdc_core::net::dialable_addr(&ep), bdc_core::Hash::new(b"ds"), BlobFormat::HashSeq);
        let err = fetcher
            .run_job(&ticket, sql("SELECT 1", ResultFormat::Csv), Some(key.address()), tmp.path(), "r.csv", |_| {})
            .await
            .unwrap_err();
        assert!(matches!(&err, JobError::Rejected { source, .. } if expected(source)), "{err}");
        // the CLI exits 1 on a result that fails verification, as on data that does
        let out = crate::common::bdc()
            .arg("--data-dir")
            .arg(tmp.path().join("cli"))
            .args(["--quiet", "compute", &ticket.to_string(), "--sql", "SELECT 1", "--format", "csv"])
            .args(["--provider-address", &format!("{:#x}", key.address()), "--bind", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("rejected the result"), "{stderr}");
        router.shutdown().await.unwrap();
    }
    fetcher.shutdown().await;
}

/// An OCI archive (image layout in a tar) of Debian's static busybox: one gzip layer with
/// /bin/busybox and its applets as symlinks, `Cmd ["sh"]`. Built here so the test needs no
/// registry and no podman.
fn busybox_archive(path: &Path) {
    busybox_archive_with(path, &[]);
}

/// [`busybox_archive`] with extra files (path, bytes, mode) in its layer.
fn busybox_archive_with(path: &Path, extra: &[(&str, &[u8], u32)]) {
    use sha2::Digest;
    let hex = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = |name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        layer.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    dir("bin/", 0o755);
    dir("tmp/", 0o1777);
    let bb = std::fs::read("/bin/busybox").expect("Debian's busybox-static (make test installs it)");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    layer.append_data(&mut h, "bin/busybox", bb.as_slice()).unwrap();
    for applet in [
        "sh",
        "cat",
        "echo",
        "id",
        "ls",
        "wc",
        "nc",
        "wget",
        "sleep",
        "ln",
        "head",
        "sha256sum",
        "mkdir",
        "unshare",
        "stat",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox").unwrap();
    }
    for (name, bytes, mode) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(bytes.len() as u64);
        layer.append_data(&mut h, name, *bytes).unwrap();
    }
    let tar_bytes = layer.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
    let gz = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&tar_bytes))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", hex(&gz)), "size": gz.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", hex(&manifest)), "size": manifest.len()}]
    }))
    .unwrap();
    let mut ar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut put = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        ar.append_data(&mut h, name, data).unwrap();
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &index);
    for blob in [&config, &manifest, &gz] {
        put(&format!("blobs/sha256/{}", hex(blob)), blob);
    }
    ar.finish().unwrap();
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[tokio::test(flavor = "multi_thread")]
async fn container_job_reads_data_writes_results_and_is_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let key = PrivateKeySigner::random();
    let (provider, ticket) = serve(tmp.path(), &data, jobs_config(&key)).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let script = "wc -c < /data/trades.parquet > /out/size.txt && id -u > /out/uid.txt && \
                  mkdir /out/sub && sha256sum /data/symbols.csv > /out/sub/sum.txt && \
                  cat /proc/net/dev > /out/netdev.txt";
    let mut events = Vec::new();
    let out = tmp.path().join("out1");
    let got = fetcher
        .run_container(&ticket, &image, sh(script), Some(key.address()), None, &out, |e| events.push(format!("{e:?}")))
        .await
        .unwrap();
    assert!(events.iter().any(|e| e == "UploadingImage"), "first job uploads the image: {events:?}");
    let r = &got.signed.result;
    assert_eq!((r.kind.as_str(), r.format.as_str(), r.rows), ("container", "collection", 4));
    // no network interface but its own loopback
    let netdev = std::fs::read_to_string(out.join("netdev.txt")).unwrap();
    let ifaces: Vec<&str> = netdev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(ifaces, ["lo"], "{netdev}");
    assert!(r.query.contains("sha256:") && r.query.contains("sha256sum /data/symbols.csv"), "{}", r.query);
    assert!(r.engine.starts_with("runc") && r.engine.contains("image sha256:"), "{}", r.engine);
    let size = std::fs::metadata(data.join("trades.parquet")).unwrap().len();
    assert_eq!(std::fs::read_to_string(out.join("size.txt")).unwrap().trim(), size.to_string());
    assert_eq!(std::fs::read_to_string(out.join("uid.txt")).unwrap().trim(), "65534", "runs as nobody");
    let sum = std::fs::read_to_string(out.join("sub/sum.txt")).unwrap();
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(data.join("symbols.csv")).unwrap()));
    assert!(sum.starts_with(&want), "{sum}");
    // the second job finds the image cached: no upload
    let mut events = Vec::new();
    fetcher
        .run_container(&ticket, &image, sh("echo again > /out/a.txt"), None, None, &tmp.path().join("out2"), |e| {
            events.push(format!("{e:?}"))
        })
        .await
        .unwrap();
    assert!(!events.iter().any(|e| e == "UploadingImage"), "{events:?}");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_escapes_are_stopped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let key = PrivateKeySigner::random();
    let mut jc = jobs_config(&key);
    jc.limits.memory_bytes = 64 << 20;
    jc.limits.pids = 32;
    jc.limits.wall_time = Duration::from_secs(4);
    jc.max_result_bytes = 1 << 20;
    let (provider, ticket) = serve(tmp.path(), &data, jc).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    // a host service the job must not reach
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cases = [
        // its own loopback, in its own network namespace: the host's listener is not there
        (format!("echo hi | nc -w 2 127.0.0.1 {port}"), codes::PROGRAM_FAILED, "Connection refused"),
        ("echo evil > /data/evil.txt".to_string(), codes::PROGRAM_FAILED, "Read-only file system"),
        ("ln -s /etc/shadow /out/leak".to_string(), codes::PROGRAM_FAILED, "not a regular file"),
        // the pids limit makes fork fail, and the shell gives up
        ("while true; do sleep 30 & done".to_string(), codes::PROGRAM_FAILED, "can't fork"),
        ("while true; do :; done".to_string(), codes::TIME_LIMIT, "wall-time"),
        ("a=0123456789abcdef; while true; do a=$a$a; done".to_string(), codes::MEMORY_LIMIT, "memory"),
        // files each under the per-file limit, past /out's total; the program shrugs off ENOSPC
        (
            "for i in 1 2 3 4 5 6; do head -c 300000 /dev/zero > /out/f$i; done; exit 0".to_string(),
            codes::RESULT_TOO_LARGE,
            "filled /out",
        ),
    ];
    let out = tmp.path().join("out");
    for (script, code, needle) in cases {
        let err = fetcher.run_container(&ticket, &image, sh(&script), None, None, &out, |_| {}).await.unwrap_err();
        match &err {
            JobError::Failed { code: c, reason, .. } => {
                assert_eq!(*c, code, "{script}: {err}");
                assert!(reason.contains(needle), "{script}: reason should mention {needle:?}: {reason}");
            }
            other => panic!("{script}: expected a failed job, got {other}"),
        }
    }
    assert!(listener.accept().is_err(), "the job reached a host socket");
    let materialized = tmp.path().join("p/jobs/datasets").join(&*ticket.hash().to_hex());
    assert!(materialized.join("trades.parquet").exists() && !materialized.join("evil.txt").exists());
    assert!(!out.exists(), "failed jobs write nothing");
    // and the provider still runs the next job
    let ok =
        fetcher.run_container(&ticket, &image, sh("echo fine > /out/ok.txt"), None, None, &out, |_| {}).await.unwrap();
    assert_eq!(ok.signed.result.rows, 1);
    assert_eq!(std::fs::read_to_string(out.join("ok.txt")).unwrap(), "fine\n");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// A static probe that makes the system calls a container must not (each with arguments that
/// would succeed, or fail otherwise than EPERM, without the seccomp filter) and prints
/// `name=errno` per call, 0 for success.
const SYSCALL_PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void try(const char *name, long rc) { printf("%s=%d\n", name, rc < 0 ? errno : 0); }
int main(void) {
    char params[120];
    memset(params, 0, sizeof params);
    try("io_uring_setup", syscall(SYS_io_uring_setup, 4, params));
    try("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 1));
    try("add_key", syscall(SYS_add_key, "user", "bdc", "x", 1, -3));
    try("unshare_user", syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */));
    try("unshare_net", syscall(SYS_unshare, 0x40000000 /* CLONE_NEWNET */));
    try("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    try("userfaultfd", syscall(SYS_userfaultfd, 0));
    try("bpf", syscall(SYS_bpf, 0, params, 48));
    try("perf_event_open", syscall(SYS_perf_event_open, params, 0, -1, -1, 0));
    try("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
    try("getpid", syscall(SYS_getpid));
    return 0;
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn container_jobs_cannot_make_dangerous_system_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("probe.c");
    std::fs::write(&src, SYSCALL_PROBE_C).unwrap();
    let probe = tmp.path().join("probe");
    let cc = std::process::Command::new("gcc").arg("-static").arg("-O1").arg("-o").arg(&probe).arg(&src).output();
    let cc = cc.expect("gcc (on every machine of this kind)");
    assert!(cc.status.success(), "gcc: {}", String::from_utf8_lossy(&cc.stderr));
    let probe = std::fs::read(&probe).unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("probe.oci.tar");
    // a setuid copy of busybox too: unpacking drops the bit
    let bb = std::fs::read("/bin/busybox").unwrap();
    busybox_archive_with(&image, &[("bin/probe", &probe, 0o755), ("bin/suid-busybox", &bb, 0o4755)]);
    let key = PrivateKeySigner::random();
    let (provider, ticket) = serve(tmp.path(), &data, jobs_config(&key)).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let script = "probe > /out/probe.txt; unshare -Ur id > /out/unshare.txt 2>&1; \
                  stat -c %a /bin/suid-busybox > /out/mode.txt; exit 0";
    fetcher.run_container(&ticket, &image, sh(script), None, None, &out, |_| {}).await.unwrap();
    let got = std::fs::read_to_string(out.join("probe.txt")).unwrap();
    let results: std::collections::HashMap<&str, &str> = got.lines().filter_map(|l| l.split_once('=')).collect();
    for call in [
        "io_uring_setup",
        "keyctl",
        "add_key",
        "unshare_user",
        "unshare_net",
        "ptrace",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "mount",
    ] {
        assert_eq!(results.get(call), Some(&"1"), "{call} must fail with EPERM: {got}");
    }
    assert_eq!(results.get("getpid"), Some(&"0"), "an allowed call works: {got}");
    let unshare = std::fs::read_to_string(out.join("unshare.txt")).unwrap();
    assert!(unshare.contains("Operation not permitted"), "unshare -Ur: {unshare}");
    assert_eq!(std::fs::read_to_string(out.join("mode.txt")).unwrap().trim(), "755", "setuid bit survived unpack");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// A buyer that goes away mid-job cancels it: the provider stops the container at once (not at
/// the wall-time limit), and runs the next job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_buyer_goes_away_is_stopped() {
    // the job's process, by its command line (unique to this test)
    let sleeping = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            c.windows(9).any(|w| w == b"sleep\x00417" || w == b"sleep 417")
        })
    };
    let wait = |want: bool| async move {
        for _ in 0..150 {
            if sleeping() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let mut jc = jobs_config(&PrivateKeySigner::random());
    jc.limits.wall_time = Duration::from_secs(120);
    let (provider, ticket) = serve(tmp.path(), &data, jc).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let buyer = {
        let (ticket, image, dir) = (ticket.clone(), image.clone(), tmp.path().to_path_buf());
        tokio::spawn(async move {
            let fetcher = Fetcher::open(FetcherConfig::test(dir.join("f1"))).await.unwrap();
            let out = dir.join("o1");
            let run = fetcher.run_container(&ticket, &image, sh("sleep 417"), None, None, &out, |_| {});
            tokio::select! {
                r = run => panic!("the job ended on its own: {r:?}"),
                _ = stopped => {}
            }
            // the buyer gives up (Ctrl-C): its endpoint closes, and the connection with it
            fetcher.shutdown().await;
        })
    };
    assert!(wait(true).await, "the job started");
    stop.send(()).unwrap();
    buyer.await.unwrap();
    assert!(wait(false).await, "the job's container was stopped after its buyer went away");
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f2"))).await.unwrap();
    let out = tmp.path().join("o2");
    let ok = fetcher.run_container(&ticket, &image, sh("echo next > /out/n.txt"), None, None, &out, |_| {}).await;
    assert_eq!(ok.unwrap().signed.result.rows, 1, "the next job runs");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_accept_agreeing_results_and_refuse_disagreeing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let (ka, kb) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let (a, ta) = serve(&tmp.path().join("a"), &data, jobs_config(&ka)).await;
    let (b, tb) = serve(&tmp.path().join("b"), &data, jobs_config(&kb)).await;
    assert_eq!(ta.hash(), tb.hash(), "same bytes, same root");
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let tickets = [(ta.clone(), Some(ka.address())), (tb.clone(), Some(kb.address()))];
    let q = "SELECT symbol, side, count(*) AS n, sum(qty) AS volume FROM trades GROUP BY symbol, side \
             ORDER BY symbol, side, n, volume";
    for format in [ResultFormat::Parquet, ResultFormat::Csv] {
        let name = format!("agreed.{}", format.extension());
        let got = fetcher.run_replicated(&tickets, 2, sql(q, format), &out, &name, |_| {}).await.unwrap();
        assert_eq!(got.signed.result.rows, 10);
        assert_eq!(bdc_core::Hash::new(std::fs::read(&got.file).unwrap()), got.signed.result.result_root);
    }
    let err = fetcher
        .run_replicated(&tickets, 2, sql("SELECT random() AS r", ResultFormat::Csv), &out, "r.csv", |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Disagree { k: 2, .. }), "{err}");
    assert!(!out.join("r.csv").exists());
    let err = fetcher.run_replicated(&tickets, 3, sql(q, ResultFormat::Csv), &out, "x.csv", |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("needs 3 providers"), "{err}");
    // each result must be signed by its provider's known address: swapped, both are refused
    let swapped = [(ta, Some(kb.address())), (tb, Some(ka.address()))];
    let err = fetcher.run_replicated(&swapped, 2, sql(q, ResultFormat::Csv), &out, "s.csv", |_| {}).await.unwrap_err();
    assert!(matches!(&err, JobError::Rejected { source: bdc_fetcher::Rejection::NotTheProvider { .. }, .. }), "{err}");
    fetcher.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// One job request with `payment`, sent from the fetcher's endpoint; the final update.
async fn raw_job(
    fetcher: &Fetcher,
    ticket: &BlobTicket,
    spec: JobSpec,
    payment: Option<bdc_core::jobs::JobPayment>,
) -> bdc_core::jobs::JobUpdate {
    use bdc_core::jobs::{JOBS_PROTOCOL_VERSION, JobRequest, JobUpdate, MAX_UPDATE_BYTES, decode, frame};
    let conn = fetcher.endpoint().connect(ticket.addr().clone(), bdc_core::protocol::JOBS_ALPN).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = JobRequest { version: JOBS_PROTOCOL_VERSION, dataset: ticket.hash(), spec, payment };
    send.write_all(&frame(&req)).await.unwrap();
    send.finish().unwrap();
    loop {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        recv.read_exact(&mut body).await.unwrap();
        let u: JobUpdate = decode(&body, MAX_UPDATE_BYTES).unwrap();
        if !matches!(u, JobUpdate::Queued { .. } | JobUpdate::Running) {
            conn.close(0u32.into(), b"done");
            return u;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_jobs_pay_on_the_verified_result_and_failed_ones_refund() {
    use alloy::primitives::{B256, U256};
    use bdc_contracts::{Devnet, DevnetConfig, client::OpenDeal, receipt::sign_hello_sync};
    use bdc_core::jobs::{JobPayment, JobUpdate};
    use bdc_fetcher::{DealBook, Wallet, jobs::JobPay};
    use bdc_provider::{PaidConfig, PaidSetup};
    const JOB_PRICE: u128 = 5_000_000;

    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let opts = PublishOptions { name: Some("trades".into()), ..Default::default() };
    let rec = publish(&mut store, &data, &opts, |_| {}).await.unwrap();
    let root = B256::from(*rec.root.as_bytes());
    devnet.contracts(1).register_dataset(root, 1_000, B256::ZERO, 0).await.unwrap();
    let key = devnet.signer(3);
    let mut jc = jobs_config(&key);
    jc.job_price = Some(JOB_PRICE);
    // the data sells at 100 per byte: one job's price buys 50,000 bytes of it
    const PRICE_PER_BYTE: u128 = 100;
    let paid = PaidSetup {
        cfg: PaidConfig { arbiters: vec![devnet.address(0)], price_per_byte: PRICE_PER_BYTE, ..Default::default() },
        chain: devnet.contracts(3),
        address: devnet.address(3),
    };
    let provider =
        Provider::spawn(store, ServeConfig { paid: Some(paid), jobs: Some(jc), ..ServeConfig::test() }).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    let fdir = tmp.path().join("f");
    let fetcher = Fetcher::open(FetcherConfig::test(fdir.clone())).await.unwrap();
    let out = tmp.path().join("out");
    let q = "SELECT symbol, count(*) AS n, sum(qty) AS volume FROM trades GROUP BY symbol ORDER BY symbol";

    // a sold dataset: without payment the provider quotes its price and runs nothing
    let err = fetcher.run_job(&ticket, sql(q, ResultFormat::Parquet), None, &out, "x.parquet", |_| {}).await;
    match err {
        Err(JobError::Failed { code, reason, .. }) => {
            assert_eq!(code, codes::PAYMENT_REQUIRED);
            assert!(reason.contains(&JOB_PRICE.to_string()), "{reason}");
        }
        other => panic!("expected payment required, got {other:?}"),
    }

    // paid: a job deal for the price, the result verified, then one receipt, redeemed on chain
    let buyer = devnet.contracts(2);
    let before = buyer.balance(devnet.address(2)).await.unwrap();
    let mut pay = JobPay {
        wallet: Wallet { chain: buyer.clone(), signer: devnet.signer(2) },
        arbiters: vec![devnet.address(0)],
        deal_duration: Duration::from_secs(3_600),
        max_price: Some(JOB_PRICE),
    };
    let got = fetcher
        .run_paid_job(&ticket, sql(q, ResultFormat::Parquet), Some(key.address()), &pay, &out, "r.parquet", |_| {})
        .await
        .unwrap();
    let deal = got.deal.expect("a paid job names its deal");
    assert_eq!(got.paid, JOB_PRICE);
    assert_eq!(got.signed.result.deal_id, deal.0, "the signed manifest names the deal");
    assert_eq!(read_result(&got.file, ResultFormat::Parquet).await, direct(&data, q).await);
    assert_eq!(buyer.balance(devnet.address(2)).await.unwrap(), before - U256::from(JOB_PRICE), "escrowed the price");
    crate::common::wait_redeemed(&devnet, deal, U256::from(JOB_PRICE)).await;
    let c = devnet.contracts(0);
    let book = DealBook::load(&fdir).unwrap();
    assert_eq!(book.get(&deal).unwrap().paid, JOB_PRICE, "the buyer's book records what it signed");
    let terms = book.get(&deal).unwrap().terms().unwrap();
    assert_eq!((terms.pricePerByte, terms.window), (0, 0), "a job deal");

    // a deal pays for one job; a deal of another dataset or a transfer deal pays for none; a
    // request not signed by the deal's buyer is refused
    let me = B256::from(*fetcher.endpoint().id().as_bytes());
    let hello = |terms: &bdc_contracts::client::Terms, who: usize| {
        let id = alloy::primitives::keccak256(terms.abi_encode());
        let sig = sign_hello_sync(&devnet.signer(who), &buyer.domain(), id, me).unwrap();
        JobPayment { deal_id: id.0, terms: terms.abi_encode(), hello_sig: sig.as_bytes().to_vec() }
    };
    let open = |root: B256, ppb: u128, window: u64| OpenDeal {
        provider: devnet.address(3),
        provider_node_id: B256::from(*ticket.addr().id.as_bytes()),
        dataset_root: root,
        price_per_byte: ppb,
        max_amount: U256::from(JOB_PRICE),
        window,
        expiry: u64::MAX / 2,
        arbiter: devnet.address(0),
    };
    let transfer = buyer.open_deal(devnet.address(2), &open(root, 1, 1 << 20)).await.unwrap();
    let other_root = B256::repeat_byte(0x42);
    devnet.contracts(1).register_dataset(other_root, 0, B256::ZERO, 0).await.unwrap();
    let elsewhere = buyer.open_deal(devnet.address(2), &open(other_root, 0, 0)).await.unwrap();
    let fresh = buyer.open_deal(devnet.address(2), &open(root, 0, 0)).await.unwrap();
    // a deal that would expire before the job's receipt (queue + run + receipt wait) could
    // not be redeemed: refused before the job runs
    let now = buyer.chain_time().await.unwrap();
    let short = buyer.open_deal(devnet.address(2), &OpenDeal { expiry: now + 500, ..open(root, 0, 0) }).await.unwrap();
    let never_opened = bdc_contracts::client::Terms { nonce: 999, ..fresh.terms.clone() };
    let mut lying = hello(&fresh.terms, 2);
    lying.deal_id = deal.0;
    for (what, payment, want) in [
        ("used deal", hello(&terms, 2), "already used"),
        ("transfer deal", hello(&transfer.terms, 2), "transfer deal"),
        ("another dataset", hello(&elsewhere.terms, 2), "is for dataset"),
        ("not the buyer", hello(&fresh.terms, 4), "not signed by"),
        ("unknown deal", hello(&never_opened, 2), "not on chain"),
        ("terms of another deal", lying, "not to deal"),
        ("too short for queue, run and receipt", hello(&short.terms, 2), "expires too soon"),
    ] {
        match raw_job(&fetcher, &ticket, sql(q, ResultFormat::Csv), Some(payment)).await {
            JobUpdate::Failed { code, reason } => {
                assert_eq!(code, codes::BAD_DEAL, "{what}: {reason}");
                assert!(reason.contains(want), "{what}: {reason}");
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(c.deal_state(deal).await.unwrap().redeemed, U256::from(JOB_PRICE), "nothing paid twice");

    // a provider above the buyer's limit: no deal is opened
    let deals_before = DealBook::load(&fdir).unwrap().deals.len();
    pay.max_price = Some(JOB_PRICE - 1);
    let err = fetcher
        .run_paid_job(&ticket, sql(q, ResultFormat::Csv), None, &pay, &out, "y.csv", |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("above"), "{err}");
    assert_eq!(DealBook::load(&fdir).unwrap().deals.len(), deals_before);

    // a failed job gets no receipt: the provider redeems nothing and the buyer refunds it all
    pay.max_price = None;
    let err = fetcher
        .run_paid_job(
            &ticket,
            sql("SELECT no_such_column FROM trades", ResultFormat::Csv),
            None,
            &pay,
            &out,
            "z.csv",
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Failed { code: codes::QUERY_REFUSED, .. }), "{err}");
    let book = DealBook::load(&fdir).unwrap();
    let failed = book.deals.last().unwrap().clone();
    assert_ne!(failed.id, deal);
    assert_eq!(failed.paid, 0);
    assert_eq!(c.deal_state(failed.id).await.unwrap().redeemed, U256::ZERO);

    // the attack: one job price for the whole sold dataset (`SELECT *`), read before paying.
    // The result may hold only what the price buys at the data's price per byte, so the job
    // fails, no result becomes readable and nothing is owed
    for (spec, what) in [
        (sql("SELECT * FROM trades", ResultFormat::Csv), "sql"),
        (sql("SELECT * FROM trades", ResultFormat::Parquet), "sql parquet"),
    ] {
        let err = fetcher.run_paid_job(&ticket, spec, None, &pay, &out, "all.csv", |_| {}).await.unwrap_err();
        match &err {
            JobError::Failed { code, reason, .. } => {
                assert_eq!(*code, codes::RESULT_TOO_LARGE, "{what}: {reason}");
                let cap = (JOB_PRICE / PRICE_PER_BYTE).to_string();
                assert!(reason.contains(&cap) && reason.contains("sold dataset"), "{what}: {reason}");
            }
            other => panic!("{what}: expected RESULT_TOO_LARGE, got {other:?}"),
        }
        assert!(!out.join("all.csv").exists(), "{what}: no result written");
        let stolen = DealBook::load(&fdir).unwrap().deals.last().unwrap().clone();
        assert_eq!((stolen.paid, c.deal_state(stolen.id).await.unwrap().redeemed), (0, U256::ZERO), "{what}");
    }

    // the attack through a container: data written into file names (empty files) counts
    // against the same cap (names and 32 bytes per file): 300 names of 193 bytes are over it
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let names = "n=$(head -c 190 /dev/zero | tr '\\0' x); for i in $(seq 100 399); do : > /out/$n$i; done";
    let err = fetcher
        .run_container(&ticket, &image, sh(names), None, Some(&pay), &tmp.path().join("names"), |_| {})
        .await
        .unwrap_err();
    match &err {
        JobError::Failed { code, reason, .. } => {
            assert_eq!(*code, codes::RESULT_TOO_LARGE, "{reason}");
            assert!(reason.contains(&(JOB_PRICE / PRICE_PER_BYTE).to_string()), "{reason}");
        }
        other => panic!("expected RESULT_TOO_LARGE, got {other:?}"),
    }

    // the attack: a failed job is not paid, so its error must not carry the data (a cast
    // error quotes the value it could not cast, one value per free failed job)
    let err = fetcher
        .run_paid_job(
            &ticket,
            sql("SELECT CAST(symbol AS INT) AS x FROM trades", ResultFormat::Csv),
            None,
            &pay,
            &out,
            "c.csv",
            |_| {},
        )
        .await
        .unwrap_err();
    match &err {
        JobError::Failed { code, reason, .. } => {
            assert_eq!(*code, codes::QUERY_FAILED, "{reason}");
            assert!(!reason.contains("-USD") && reason.contains("not returned"), "{reason}");
        }
        other => panic!("expected QUERY_FAILED, got {other:?}"),
    }

    devnet.advance_time(3_700).await.unwrap();
    assert_eq!(buyer.refund(&failed.terms().unwrap()).await.unwrap(), U256::from(JOB_PRICE));
    provider.shutdown().await;
}
