//! publish -> serve -> fetch through the libraries, in-process.

use std::time::{Duration, Instant};

use bdc_core::{BlobFormat, Hash, protocol::MANIFEST_NAME, ticket::BlobTicket};
use bdc_fetcher::{FetchError, FetchOptions, Fetcher, FetcherConfig};
use bdc_provider::{Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use iroh::{EndpointAddr, SecretKey, TransportAddr};
use iroh_blobs::format::collection::Collection;

use crate::common::{files_with_ext, random_file};

fn free() -> PublishOptions {
    PublishOptions { free: true, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_file_root_equals_b3sum() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_file(&tmp.path().join("f.bin"), 300_000, 1);
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let opts = PublishOptions { raw: true, ..Default::default() };
    let rec = publish(&mut store, &tmp.path().join("f.bin"), &opts, |_| {}).await.unwrap();
    assert_eq!(rec.root.as_bytes(), blake3::hash(&data).as_bytes());
    assert_eq!(rec.format, BlobFormat::Raw);
    assert_eq!(rec.size, 300_000);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn republishing_identical_bytes_gives_same_root_and_no_new_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ds");
    random_file(&src.join("a.bin"), 1 << 20, 2);
    random_file(&src.join("sub/b.bin"), 600_000, 3);
    let pdir = tmp.path().join("p");
    let mut store = ProviderStore::open(&pdir).await.unwrap();
    let first = publish(&mut store, &src, &free(), |_| {}).await.unwrap();
    store.shutdown().await;
    let data_files = files_with_ext(&pdir.join("store"), "data");
    let bytes: u64 = data_files.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(data_files.len(), 2, "one data file per large blob: {data_files:?}");

    let mut store = ProviderStore::open(&pdir).await.unwrap();
    let second = publish(&mut store, &src, &free(), |_| {}).await.unwrap();
    store.shutdown().await;
    assert_eq!(first.root, second.root);
    let again = files_with_ext(&pdir.join("store"), "data");
    let bytes_again: u64 = again.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!((again.len(), bytes_again), (data_files.len(), bytes));
    assert_eq!(ProviderStore::open(&pdir).await.unwrap().catalog().iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn free_collection_roundtrip_over_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("trades");
    let a = random_file(&src.join("2026/BTC-USD.csv"), 200_000, 4);
    let b = random_file(&src.join("ETH-USD.parquet"), 1_500_000, 5);
    let c = random_file(&src.join("tiny.json"), 10, 6);
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let rec = publish(&mut store, &src, &free(), |_| {}).await.unwrap();
    assert_eq!((rec.files, rec.size, rec.format), (3, 1_700_010, BlobFormat::HashSeq));
    let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();

    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let mut events = Vec::new();
    let report =
        fetcher.fetch(&ticket, &out, &FetchOptions::default(), |e| events.push(format!("{e:?}"))).await.unwrap();
    assert_eq!(std::fs::read(out.join("2026/BTC-USD.csv")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("ETH-USD.parquet")).unwrap(), b);
    assert_eq!(std::fs::read(out.join("tiny.json")).unwrap(), c);
    let manifest =
        bdc_core::manifest::DatasetManifest::from_bytes(&std::fs::read(out.join(MANIFEST_NAME)).unwrap()).unwrap();
    assert_eq!(manifest.total_size(), 1_700_010);
    // fetched counts the collection's own small blobs (hash sequence, names) too
    assert!(
        report.fetched_bytes >= report.total_bytes && report.fetched_bytes < report.total_bytes + 4096,
        "{report:?}"
    );
    assert_eq!(report.local_bytes, 0);
    assert!(report.total_bytes >= 1_700_010, "total includes the manifest: {}", report.total_bytes);
    assert!(events.iter().any(|e| e.starts_with("Plan")), "{events:?}");

    // A second fetch is served from the local store: nothing dialed, nothing fetched.
    let again = fetcher.fetch(&ticket, &tmp.path().join("out2"), &FetchOptions::default(), |_| {}).await.unwrap();
    assert_eq!((again.fetched_bytes, again.local_bytes), (0, again.total_bytes));
    // the provider counted the payload it served (transfer events arrive after the last byte)
    let served = || provider.metrics().free_bytes_sent.get();
    for _ in 0..50 {
        if served() >= report.fetched_bytes {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(served(), report.fetched_bytes, "free bytes served: what the fetcher received");
    let m = fetcher.metrics();
    assert_eq!((m.verified_bytes.get(), m.fetches_completed.get()), (report.fetched_bytes, 2));
    let files: u64 = report.files.iter().map(|f| f.size).sum();
    assert_eq!(m.exported_bytes.get(), 2 * files, "both fetches exported every file");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_dataset_is_refused_on_the_free_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    random_file(&tmp.path().join("x.bin"), 50_000, 7);
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let rec = publish(&mut store, &tmp.path().join("x.bin"), &PublishOptions::default(), |_| {}).await.unwrap();
    let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let err = fetcher.fetch(&ticket, &tmp.path().join("out"), &FetchOptions::default(), |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err}");
    assert!(!tmp.path().join("out").exists());
    fetcher.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_provider_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    // a UDP port that nobody answers on: bind it ourselves and never read
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut addr = EndpointAddr::new(SecretKey::generate().public());
    addr.addrs.insert(TransportAddr::Ip(silent.local_addr().unwrap()));
    let ticket = BlobTicket::new(addr, Hash::new(b"nothing"), BlobFormat::HashSeq);
    let mut cfg = FetcherConfig::test(tmp.path().join("f"));
    cfg.connect_timeout = Duration::from_secs(2);
    let fetcher = Fetcher::open(cfg).await.unwrap();
    let t = Instant::now();
    let err = fetcher.fetch(&ticket, &tmp.path().join("out"), &FetchOptions::default(), |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { secs: 2, .. } | FetchError::Connect { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(6), "took {:?}", t.elapsed());
    assert!(err.to_string().contains(&ticket.addr().id.to_string()), "error names the provider: {err}");
    fetcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_provider_store_fails_verification_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ds");
    random_file(&src.join("big.bin"), 1 << 20, 8);
    let pdir = tmp.path().join("p");
    let mut store = ProviderStore::open(&pdir).await.unwrap();
    let rec = publish(&mut store, &src, &free(), |_| {}).await.unwrap();
    store.shutdown().await;
    // flip one byte in the middle of the stored copy
    let data_files = files_with_ext(&pdir.join("store"), "data");
    assert_eq!(data_files.len(), 1);
    let mut bytes = std::fs::read(&data_files[0]).unwrap();
    bytes[700_000] ^= 0x01;
    std::fs::write(&data_files[0], &bytes).unwrap();

    let store = ProviderStore::open(&pdir).await.unwrap();
    let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let err = fetcher.fetch(&ticket, &out, &FetchOptions::default(), |_| {}).await.unwrap_err();
    // the provider checks what it reads against its outboard and aborts rather than send it
    assert!(matches!(err, FetchError::ProviderAborted { .. }), "{err}");
    assert_eq!(err.provider(), Some(provider.addr().id));
    assert!(err.to_string().contains(&provider.addr().id.to_string()), "names the provider: {err}");
    assert!(!out.join("big.bin").exists(), "no unverified output");
    let m = fetcher.metrics();
    assert_eq!((m.fetches_failed.get(), m.fetches_completed.get(), m.exported_bytes.get()), (1, 0, 0));
    fetcher.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_with_escaping_names_is_refused_before_any_write() {
    for evil in ["../escaped.txt", "/tmp/bdc-absolute.txt", "a/../../x"] {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("p");
        let mut store = ProviderStore::open(&pdir).await.unwrap();
        let blobs: &iroh_blobs::api::Store = store.blobs();
        let good = blobs.add_slice(b"fine").temp_tag().await.unwrap();
        let bad = blobs.add_slice(b"evil").temp_tag().await.unwrap();
        let c: Collection = [("ok.txt".to_string(), good.hash()), (evil.to_string(), bad.hash())].into_iter().collect();
        let root = c.store(blobs).await.unwrap().hash();
        store.register(root, BlobFormat::HashSeq, "evil", true).await.unwrap();
        let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
        let ticket = provider.ticket(root).unwrap();
        let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
        let out = tmp.path().join("deep/out");
        let err = fetcher.fetch(&ticket, &out, &FetchOptions::default(), |_| {}).await.unwrap_err();
        assert!(matches!(err, FetchError::UnsafeName { .. }), "{evil}: {err}");
        assert!(!out.exists(), "{evil}: nothing written");
        assert!(!tmp.path().join("deep/escaped.txt").exists());
        fetcher.shutdown().await;
        provider.shutdown().await;
    }
}

/// `--range`: bytes START..END of a raw blob, verified against its root; only the 16 KiB groups
/// that cover them move, and a second range takes only what the first did not.
#[tokio::test(flavor = "multi_thread")]
async fn a_byte_range_of_a_raw_blob_moves_only_its_chunk_groups() {
    use bdc_fetcher::{BadRequest, Select};
    let tmp = tempfile::tempdir().unwrap();
    let data = random_file(&tmp.path().join("big.bin"), (1 << 20) + 100, 8);
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let opts = PublishOptions { raw: true, free: true, ..Default::default() };
    let rec = publish(&mut store, &tmp.path().join("big.bin"), &opts, |_| {}).await.unwrap();
    let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let range = |r: std::ops::Range<u64>| FetchOptions { select: Select::range(r).unwrap(), ..Default::default() };

    let r = fetcher.fetch(&ticket, &out, &range(100_000..300_000), |_| {}).await.unwrap();
    let name = format!("{}.100000-300000", rec.root.to_hex());
    assert_eq!(r.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), [name.as_str()]);
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), &data[100_000..300_000]);
    // the groups covering it (98,304..311,296) and the last chunk (the size), nothing else
    assert!(r.fetched_bytes >= 200_000 && r.fetched_bytes <= 212_992 + 1_124, "{r:?}");
    // an overlapping range moves only what is new
    let named = FetchOptions { raw_name: Some("tail.bin".into()), ..range(250_000..(1 << 20) + 100) };
    let r2 = fetcher.fetch(&ticket, &out, &named, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("tail.bin")).unwrap(), &data[250_000..]);
    // (what the first left out, give or take the chunk group at its edge)
    assert!(r2.fetched_bytes <= (1 << 20) + 100 - 311_296 + 16_384, "{r2:?}");
    // a range held already: nothing moves, the file is written again
    std::fs::remove_file(out.join(&name)).unwrap();
    let r3 = fetcher.fetch(&ticket, &out, &range(100_000..300_000), |_| {}).await.unwrap();
    assert_eq!(r3.fetched_bytes, 0, "{r3:?}");
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), &data[100_000..300_000]);

    // past the end, or a collection's option on a blob: clear errors, nothing written
    let err = fetcher.fetch(&ticket, &out, &range(0..(1 << 20) + 101), |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::BadRequest(BadRequest::RangePastEnd { size: 1_048_676, .. })), "{err}");
    assert!(err.to_string().contains("past the end"), "{err}");
    let files = FetchOptions { select: Select::files(&["*.csv"]).unwrap(), ..Default::default() };
    let err = fetcher.fetch(&ticket, &out, &files, |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::BadRequest(BadRequest::IncludeNeedsCollection)), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "only the ranges asked for were written");
    provider.shutdown().await;
}

/// `Export::Move` in a staging store: the verified files are moved out (renamed, not copied),
/// the staging store is deleted, and the fetcher's own store keeps nothing. A staging store
/// whose move was interrupted (it may name files in the output dir that their owner changed
/// since) is discarded before anything is read from it.
#[tokio::test(flavor = "multi_thread")]
async fn a_moved_fetch_leaves_no_copy_behind_and_an_interrupted_move_starts_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ds");
    let big = random_file(&src.join("big.bin"), 3_000_000, 61);
    let small = random_file(&src.join("sub/small.csv"), 5_000, 62);
    // the same content under two names: one blob, which can be moved out only once
    std::fs::write(src.join("sub/big-again.bin"), &big).unwrap();
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let rec = publish(&mut store, &src, &free(), |_| {}).await.unwrap();
    let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let staging = tmp.path().join("f/staging").join(rec.root.to_hex());
    let moving = FetchOptions { export: bdc_fetcher::Export::Move, ..Default::default() };

    // only in a staging store: the fetcher's own store keeps its copy
    let err = fetcher.fetch(&ticket, &tmp.path().join("x"), &moving, |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::BadRequest(bdc_fetcher::BadRequest::MoveNeedsStaging)), "{err}");

    let out = tmp.path().join("out");
    let report = fetcher
        .staged(rec.root, async |f| {
            let r = f.fetch(&ticket, &out, &moving, |_| {}).await?;
            // the big file left the staging store by a rename: no copy of it stays there
            let left: Vec<_> = walk(&staging).into_iter().filter(|(_, len)| *len >= 1_000_000).collect();
            assert!(left.is_empty(), "still in the staging store: {left:?}");
            Ok(r)
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(out.join("sub/small.csv")).unwrap(), small);
    assert_eq!(std::fs::read(out.join("sub/big-again.bin")).unwrap(), big);
    assert!(report.fetched_bytes >= 3_005_000);
    assert!(!staging.exists(), "the staging store is deleted");
    assert!(walk(&out).iter().all(|(p, _)| !p.contains("bdc-partial")), "no temp file left: {:?}", walk(&out));
    // the fetcher's own store holds nothing of it: a copying fetch downloads it all
    let copy = fetcher.fetch(&ticket, &tmp.path().join("out2"), &FetchOptions::default(), |_| {}).await.unwrap();
    assert_eq!(copy.local_bytes, 0);

    // a move that was interrupted: the staging store is discarded (here it is not even a store)
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("MOVING"), b"").unwrap();
    std::fs::write(staging.join("store"), b"not a store").unwrap();
    let out3 = tmp.path().join("out3");
    let again = fetcher.staged(rec.root, async |f| f.fetch(&ticket, &out3, &moving, |_| {}).await).await.unwrap();
    assert_eq!(again.local_bytes, 0, "started afresh");
    assert_eq!(std::fs::read(out3.join("big.bin")).unwrap(), big);
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// Every file under `dir` with its length.
fn walk(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.display().to_string(), e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    out
}

/// One process at a time keeps a data dir's deal book: a fetcher lent another store (a mirror's)
/// is refused while another fetcher holds the dir, and gets it once that one is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_serves_one_fetcher_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = FetcherConfig::test(tmp.path().join("f"));
    let first = Fetcher::open(cfg.clone()).await.unwrap();
    let lent = iroh_blobs::store::fs::FsStore::load(tmp.path().join("other")).await.unwrap();
    let err = Fetcher::with_store(cfg.clone(), lent.clone()).await.unwrap_err();
    assert!(err.to_string().contains("locked by another process"), "{err}");
    first.shutdown().await;
    let second = Fetcher::with_store(cfg, lent.clone()).await.unwrap();
    second.shutdown().await;
    lent.shutdown().await.unwrap();
}
