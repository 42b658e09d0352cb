//! SQL jobs: results equal to DataFusion's, refused and failing queries, Ballista, lying
//! providers' manifests, replicas.

use super::*;

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
    let opts = bdc_fetcher::FetchOptions { raw_name: Some("again.csv".into()), ..Default::default() };
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
