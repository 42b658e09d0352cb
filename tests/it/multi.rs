//! One download from several providers at once: pieces of one large blob from each, and a
//! provider that lies, stalls or is gone routed around.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bdc_core::{net::NetConfig, protocol::FREE_ALPN, ticket::BlobTicket};
use bdc_fetcher::{FetchEvent, FetchOptions, Fetcher, FetcherConfig, PIECE_BYTES};
use bdc_provider::{Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use iroh::{Endpoint, EndpointAddr, SecretKey, endpoint::Connection};

use crate::common::random_file;

/// How a relay passes a provider's answers on.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// As they are.
    Honest,
    /// At most this many bytes a second.
    Slow(u64),
    /// With one byte flipped 40 KB into every answer that long (a piece's, not the probe's).
    Lie,
    /// The first 40 KB of every answer that long, then nothing, with the stream left open.
    Stall,
}

/// A node that serves the free protocol by asking `upstream` and passing its answers on as
/// `mode` says: a provider of the dataset as far as a fetcher can tell. Returns its ticket for
/// `root` and a count of the payload-stream bytes it passed on.
pub async fn relay(upstream: EndpointAddr, ticket: &BlobTicket, mode: Mode) -> (BlobTicket, Endpoint, Arc<AtomicU64>) {
    let key = SecretKey::from_bytes(&rand::random());
    let ep = bdc_core::net::bind_endpoint(&NetConfig::test(), key, vec![FREE_ALPN.to_vec()]).await.unwrap();
    let passed = Arc::new(AtomicU64::new(0));
    let (ep2, passed2) = (ep.clone(), passed.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep2.accept().await {
            let Ok(down) = incoming.await else { continue };
            let Ok(up) = ep2.connect(upstream.clone(), FREE_ALPN).await else { continue };
            tokio::spawn(pump_connection(down, up, mode, passed2.clone()));
        }
    });
    let addr = bdc_core::net::dialable_addr(&ep);
    (BlobTicket::new(addr, ticket.hash(), ticket.format()), ep, passed)
}

async fn pump_connection(down: Connection, up: Connection, mode: Mode, passed: Arc<AtomicU64>) {
    while let Ok((mut dsend, mut drecv)) = down.accept_bi().await {
        let Ok((mut usend, mut urecv)) = up.open_bi().await else { return };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(Some(n)) = drecv.read(&mut buf).await {
                if usend.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = usend.finish();
        });
        let passed = passed.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            let mut at = 0u64;
            while let Ok(Some(n)) = urecv.read(&mut buf).await {
                let chunk = &mut buf[..n];
                const MARK: u64 = 40_000;
                if at <= MARK && MARK < at + n as u64 {
                    match mode {
                        Mode::Lie => chunk[(MARK - at) as usize] ^= 1,
                        Mode::Stall => {
                            let _ = dsend.write_all(&chunk[..(MARK - at) as usize]).await;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        _ => {}
                    }
                }
                if let Mode::Slow(rate) = mode {
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                }
                if dsend.write_all(chunk).await.is_err() {
                    return;
                }
                at += n as u64;
                passed.fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = dsend.finish();
        });
    }
}

/// The same folder published free in `n` provider stores, each served: the same root.
async fn providers(tmp: &std::path::Path, src: &std::path::Path, n: usize) -> Vec<(Provider, BlobTicket)> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut store = ProviderStore::open(&tmp.join(format!("p{i}"))).await.unwrap();
        let rec = publish(&mut store, src, &PublishOptions { free: true, ..Default::default() }, |_| {}).await.unwrap();
        let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
        let ticket = provider.ticket(rec.root).unwrap();
        out.push((provider, ticket));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn one_large_file_comes_from_two_providers_and_a_liar_a_staller_and_a_dead_one_are_routed_around() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ds");
    let big = random_file(&src.join("trades.bin"), 40 << 20, 31);
    let small = random_file(&src.join("small.csv"), 5_000, 32);
    let ps = providers(tmp.path(), &src, 2).await;
    let (a, b) = (&ps[0], &ps[1]);
    let (liar, _l, _) = relay(a.0.addr(), &a.1, Mode::Lie).await;
    let (staller, _s, _) = relay(b.0.addr(), &b.1, Mode::Stall).await;
    let dead = {
        let ep =
            bdc_core::net::bind_endpoint(&NetConfig::test(), SecretKey::from_bytes(&[9; 32]), vec![]).await.unwrap();
        let addr = bdc_core::net::dialable_addr(&ep);
        ep.close().await;
        BlobTicket::new(addr, a.1.hash(), a.1.format())
    };

    let cfg = FetcherConfig { stall_timeout: Duration::from_secs(5), ..FetcherConfig::test(tmp.path().join("f")) };
    let fetcher = Fetcher::open(cfg).await.unwrap();
    let out = tmp.path().join("out");
    let tickets = [a.1.clone(), liar.clone(), b.1.clone(), staller.clone(), dead.clone()];
    let mut dropped = Vec::new();
    let report = fetcher
        .fetch_from(&tickets, &out, &FetchOptions::default(), |e| {
            if let FetchEvent::Dropped { provider, reason } = e {
                dropped.push((provider, reason));
            }
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("trades.bin")).unwrap(), big, "verified, whole");
    assert_eq!(std::fs::read(out.join("small.csv")).unwrap(), small);

    let by = |t: &BlobTicket| report.sources.iter().find(|s| s.provider == t.addr().id).unwrap().clone();
    let (ra, rb, rl, rs, rd) = (by(&a.1), by(&b.1), by(&liar), by(&staller), by(&dead));
    // both honest providers delivered pieces of the one large file, and were not dropped
    assert!(ra.pieces >= 2 && rb.pieces >= 2, "{:?}", report.sources);
    assert!(ra.dropped.is_none() && rb.dropped.is_none(), "{:?}", report.sources);
    // each piece of the 40 MiB file came from one of them
    let pieces = (40 << 20) / PIECE_BYTES as u32;
    assert!(ra.pieces + rb.pieces >= pieces, "{:?}", report.sources);
    assert!(ra.pieces + rb.pieces <= pieces + 1, "the small file is one piece more: {:?}", report.sources);
    // the liar's first piece failed verification: dropped, and no piece is counted for it
    assert!(rl.dropped.as_deref().unwrap().contains("verification failed"), "{rl:?}");
    assert!(rl.lied && !ra.lied && !rb.lied && !rd.lied, "only the liar is marked as one (what a paid fetch reports)");
    assert_eq!(rl.pieces, 0);
    assert!(rl.bytes < PIECE_BYTES, "only what verified before the flipped byte: {rl:?}");
    assert!(fetcher.metrics().verification_failures.get() >= 1);
    // the staller's pieces were taken over: by the endgame, or after the stall timeout
    assert!(rs.dropped.as_deref().is_none_or(|r| r.contains("stalled")), "{rs:?}");
    assert_eq!(rs.pieces, 0);
    assert!(rd.dropped.is_some() && rd.bytes == 0, "{rd:?}");
    // every dropped source was said as it happened
    for t in [&liar, &dead] {
        assert!(dropped.iter().any(|(p, _)| *p == t.addr().id), "{dropped:?}");
    }
    // nothing was fetched twice beyond the endgame: at most the pieces in flight at the end
    // (two sources, two each) and the two partial pieces of the dropped sources
    let payload = report.total_bytes;
    assert!(report.fetched_bytes <= payload + 6 * PIECE_BYTES, "{report:?}");
    fetcher.shutdown().await;
    for (p, _) in ps {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_provider_takes_more_pieces_than_a_slow_one_and_the_first_provider_may_be_dead() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("blob.bin");
    let data = random_file(&src, 32 << 20, 33);
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let opts = PublishOptions { free: true, raw: true, ..Default::default() };
    let rec = publish(&mut store, &src, &opts, |_| {}).await.unwrap();
    let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    // both relays ask the same provider: one passes 2 MiB/s on, the other all it gets
    let (slow, _s, _) = relay(provider.addr(), &ticket, Mode::Slow(2 << 20)).await;
    let (fast, _f, _) = relay(provider.addr(), &ticket, Mode::Honest).await;
    let dead = {
        let ep =
            bdc_core::net::bind_endpoint(&NetConfig::test(), SecretKey::from_bytes(&[8; 32]), vec![]).await.unwrap();
        let addr = bdc_core::net::dialable_addr(&ep);
        ep.close().await;
        BlobTicket::new(addr, ticket.hash(), ticket.format())
    };
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let opts = FetchOptions { raw_name: Some("blob.bin".into()), ..Default::default() };
    // the first ticket's provider is gone: the next one gives the size
    let report = fetcher.fetch_from(&[dead.clone(), slow.clone(), fast.clone()], &out, &opts, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("blob.bin")).unwrap(), data);
    let by = |t: &BlobTicket| report.sources.iter().find(|s| s.provider == t.addr().id).cloned();
    let (rs, rf) = (by(&slow).unwrap(), by(&fast).unwrap());
    assert!(rf.pieces > 2 * rs.pieces, "the fast source took most pieces: {:?}", report.sources);
    // slow is not stalled: it is never dropped, and what it held at the end the fast one
    // finished too (the endgame), so the fast one verified at least its own pieces' bytes
    assert!(rs.dropped.is_none() && rf.dropped.is_none(), "{:?}", report.sources);
    assert!(rf.bytes >= u64::from(rf.pieces - 1) * PIECE_BYTES, "{:?}", report.sources);
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// `bdc fetch t1 t2 --sources 2`: one download from both providers; the JSON report gives each
/// provider's part, and `--sources 0` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_fetches_from_several_tickets_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ds");
    let data = random_file(&src.join("big.bin"), 18 << 20, 34);
    let ps = providers(tmp.path(), &src, 2).await;
    let run = |extra: &[&str]| {
        crate::common::bdc()
            .arg("--data-dir")
            .arg(tmp.path().join("buyer"))
            .args(["fetch", &ps[0].1.to_string(), &ps[1].1.to_string(), "-o"])
            .arg(tmp.path().join("out"))
            .args(extra)
            .output()
            .unwrap()
    };
    let res = tokio::task::block_in_place(|| run(&["--sources", "0"]));
    assert_eq!(res.status.code(), Some(2), "{}", String::from_utf8_lossy(&res.stderr));
    let res = tokio::task::block_in_place(|| run(&["--sources", "2", "--json"]));
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(std::fs::read(tmp.path().join("out/big.bin")).unwrap(), data);
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2, "{report}");
    for (s, (p, _)) in sources.iter().zip(&ps) {
        assert_eq!(s["provider"], p.addr().id.to_string(), "{report}");
        assert!(s["pieces"].as_u64().unwrap() >= 1 && s["dropped"].is_null(), "{report}");
    }
    let bytes: u64 = sources.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert!(bytes >= 18 << 20, "{report}");
    for (p, _) in ps {
        p.shutdown().await;
    }
}

/// Three providers of a 256 MiB blob and of a 100-file collection, the third a mirror (it
/// fetched both, verified, from the first, and serves them as its own): a download from all
/// three is identical to the source and each served a share; one provider killed at 30 % of
/// the blob leaves the others to finish it.
#[tokio::test(flavor = "multi_thread")]
async fn three_providers_one_a_mirror_share_a_blob_and_a_collection_and_survive_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let blob = random_file(&dir.join("blob.bin"), 256 << 20, 71);
    for k in 0..100 {
        random_file(&dir.join(format!("ds/part-{k:03}.bin")), 400 << 10, 100 + k);
    }
    let mut origin = Vec::new();
    let mut roots = Vec::new();
    for i in 0..2 {
        let mut store = ProviderStore::open(&dir.join(format!("p{i}"))).await.unwrap();
        let raw = PublishOptions { free: true, raw: true, ..Default::default() };
        let b = publish(&mut store, &dir.join("blob.bin"), &raw, |_| {}).await.unwrap();
        let free = PublishOptions { free: true, ..Default::default() };
        let c = publish(&mut store, &dir.join("ds"), &free, |_| {}).await.unwrap();
        roots = vec![(b.root, b.format), (c.root, c.format)];
        origin.push(Provider::spawn(store, ServeConfig::test()).await.unwrap());
    }
    // the mirror: both datasets fetched from the first provider into its own provider store
    let mut store = ProviderStore::open(&dir.join("mirror")).await.unwrap();
    let lent =
        Fetcher::with_store(FetcherConfig::test(dir.join("mirror-fetcher")), store.blobs().clone()).await.unwrap();
    let keep = FetchOptions { export: bdc_fetcher::Export::None, ..Default::default() };
    for (root, _) in &roots {
        lent.fetch(&origin[0].ticket(*root).unwrap(), &dir.join("unused"), &keep, |_| {}).await.unwrap();
    }
    lent.shutdown().await;
    for (root, format) in &roots {
        assert!(store.register(*root, *format, "mirrored", true).await.unwrap().mirror);
    }
    let mirror = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let tickets = |root: bdc_core::Hash| {
        let mut t: Vec<BlobTicket> = origin.iter().map(|p| p.ticket(root).unwrap()).collect();
        t.push(mirror.ticket(root).unwrap());
        t
    };

    // the collection from all three: identical, and each served a share
    let fetcher = Fetcher::open(FetcherConfig::test(dir.join("buyer"))).await.unwrap();
    let r =
        fetcher.fetch_from(&tickets(roots[1].0), &dir.join("coll"), &FetchOptions::default(), |_| {}).await.unwrap();
    for k in 0..100 {
        let name = format!("part-{k:03}.bin");
        assert_eq!(
            std::fs::read(dir.join("coll").join(&name)).unwrap(),
            std::fs::read(dir.join("ds").join(&name)).unwrap()
        );
    }
    assert_eq!(r.sources.len(), 3);
    assert!(r.sources.iter().all(|s| s.pieces >= 1 && s.dropped.is_none()), "{:?}", r.sources);

    // the blob, with the second provider killed once 30 % has verified
    let ts = tickets(roots[0].0);
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let victim = origin.remove(1);
    let victim_id = victim.addr().id;
    let killer = tokio::spawn(async move {
        if kill_rx.await.is_ok() {
            victim.shutdown().await;
        }
    });
    let mut kill_tx = Some(kill_tx);
    let opts = FetchOptions { raw_name: Some("blob.bin".into()), ..Default::default() };
    let r = fetcher
        .fetch_from(&ts, &dir.join("out"), &opts, |e| {
            if let FetchEvent::Progress { done, total } = e
                && done * 10 >= total * 3
                && let Some(tx) = kill_tx.take()
            {
                let _ = tx.send(());
            }
        })
        .await
        .unwrap();
    killer.await.unwrap();
    assert_eq!(std::fs::read(dir.join("out/blob.bin")).unwrap(), blob, "identical after the kill");
    let killed = r.sources.iter().find(|s| s.provider == victim_id).unwrap();
    assert!(killed.dropped.is_some() && killed.pieces >= 1, "it served a share, then was dropped: {killed:?}");
    for s in r.sources.iter().filter(|s| s.provider != victim_id) {
        assert!(s.dropped.is_none() && s.pieces >= 1, "{:?}", r.sources);
    }
    assert_eq!(r.total_bytes, 256 << 20);
    fetcher.shutdown().await;
    mirror.shutdown().await;
    for p in origin {
        p.shutdown().await;
    }
}
