//! Paid multi-source: one download bought from several providers at once, a deal with each,
//! each paid for exactly the verified bytes it delivered.

use super::*;
use bdc_fetcher::{DealBook, FetchEvent, PIECE_BYTES};

/// Five sellers of one dataset, each with its own chain account: two honest, one whose copy
/// is damaged in every piece, one that sends a 16 KiB group every 8 s (a stall, to the buyer),
/// one that sends 100 KB/s (slow). The buyer buys from all five at once: the file is whole and
/// verified, the honest two share the pieces, the damaged and the stalled one are dropped, the
/// slow one's pieces are taken over, and every deal paid for exactly the bytes its provider
/// delivered that verified (so never for a damaged range, and no range twice), within each
/// provider's own window.
#[tokio::test(flavor = "multi_thread")]
async fn each_seller_is_paid_for_what_it_delivered_and_a_damaged_or_stalled_one_is_dropped() {
    const SELLERS: [usize; 5] = [PROVIDER, 5, 6, 7, 8];
    const FILE: usize = 40 << 20;
    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = random_file(&dir.join("ds/ticks.bin"), FILE, 51);
    random_file(&dir.join("ds/meta.json"), 900, 52);
    let mut sellers = Vec::new();
    let mut root = None;
    for (i, who) in SELLERS.into_iter().enumerate() {
        let pdir = dir.join(format!("seller{i}"));
        let mut store = ProviderStore::open(&pdir).await.unwrap();
        let rec = publish(&mut store, &dir.join("ds"), &PublishOptions::default(), |_| {}).await.unwrap();
        root = Some(rec.root);
        if i == 2 {
            // a byte flipped in every 4 MiB piece of its stored copy: it aborts rather than
            // send a group that does not verify against its outboard
            store.shutdown().await;
            let files = crate::common::files_with_ext(&pdir.join("store"), "data");
            let mut bytes = std::fs::read(&files[0]).unwrap();
            for at in (1 << 20..FILE).step_by(PIECE_BYTES as usize) {
                bytes[at] ^= 1;
            }
            std::fs::write(&files[0], &bytes).unwrap();
            store = ProviderStore::open(&pdir).await.unwrap();
        }
        let mut cfg = paid_config(&devnet);
        cfg.max_rate = match i {
            3 => Some(2_000),
            4 => Some(100_000),
            _ => None,
        };
        let paid = PaidSetup { cfg, chain: devnet.contracts(who), address: devnet.address(who) };
        sellers.push(Provider::spawn(store, ServeConfig { paid: Some(paid), ..ServeConfig::test() }).await.unwrap());
    }
    let root = root.unwrap();
    devnet.contracts(VENDOR).register_dataset(B256::from(*root.as_bytes()), 1_000, B256::ZERO, 0).await.unwrap();
    let mut offers: Vec<Offer> = sellers.iter().map(|p| p.offer(root).unwrap()).collect();
    // first on the list: a seller that is gone (its node no longer answers): the next one
    // answers the probe, and no deal is opened with the gone one (it is dialled first)
    let gone = {
        let ep = bind_endpoint(&NetConfig::test(), iroh::SecretKey::from_bytes(&[5; 32]), vec![]).await.unwrap();
        let addr = bdc_core::net::dialable_addr(&ep);
        ep.close().await;
        let mut o = offers[0].clone();
        o.ticket = bdc_core::ticket::BlobTicket::new(addr.clone(), root, bdc_core::BlobFormat::HashSeq).to_string();
        o.provider = devnet.address(9).into_array();
        (o, addr.id)
    };
    offers.insert(0, gone.0);

    // a stall is 5 s without a verified byte (a loaded test machine can pause an honest seller
    // for a moment); the stalled seller sends a group every 8 s
    let cfg = FetcherConfig { stall_timeout: Duration::from_secs(5), ..FetcherConfig::test(dir.join("buyer")) };
    let fetcher = Fetcher::open(cfg).await.unwrap();
    let wallet = Wallet { chain: devnet.contracts(BUYER), signer: devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    let out = dir.join("out");
    let mut dropped = Vec::new();
    let r = fetcher
        .fetch_paid_from(&offers, &wallet, &out, &FetchOptions::default(), &pay, |e| {
            if let FetchEvent::Dropped { provider, .. } = e {
                dropped.push(provider);
            }
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(out.join("ticks.bin")).unwrap(), data, "whole and verified");

    let node = |i: usize| sellers[i].addr().id;
    let source = |i: usize| r.fetch.sources.iter().find(|s| s.provider == node(i)).unwrap().clone();
    let (a, b, bad, stalled, slow) = (source(0), source(1), source(2), source(3), source(4));
    assert!(a.pieces >= 1 && b.pieces >= 1, "both honest sellers delivered pieces: {:?}", r.fetch.sources);
    assert!(a.dropped.is_none() && b.dropped.is_none(), "{:?}", r.fetch.sources);
    assert!(bad.dropped.is_some() && bad.pieces == 0 && bad.bytes < PIECE_BYTES, "{bad:?}");
    assert!(stalled.dropped.as_deref().is_some_and(|d| d.contains("stalled")), "{stalled:?}");
    assert_eq!(stalled.pieces, 0);
    // the slow seller is not dropped: its pieces were taken over part-way (4 MiB at 100 KB/s
    // takes 42 s; the others' take a few seconds at most)
    assert!(slow.dropped.is_none() && slow.pieces == 0 && slow.bytes > 0, "{slow:?}");
    assert!(dropped.contains(&node(2)) && dropped.contains(&node(3)), "said as it happened");
    assert!(dropped.contains(&gone.1), "the gone seller was said too");

    // a deal with each seller; each signed exactly what its seller delivered that verified
    assert_eq!(r.deals.len(), 5, "{:?}", r.deals);
    let book = DealBook::load(&dir.join("buyer")).unwrap();
    assert_eq!(book.deals.len(), 5, "no escrow for the seller that is gone");
    let mut verified_total = 0;
    for (i, who) in SELLERS.into_iter().enumerate() {
        let d = r.deals.iter().find(|d| d.provider == devnet.address(who)).unwrap();
        let rec = book.get(&d.deal).unwrap();
        assert_eq!(rec.paid, rec.verified as u128 * PRICE, "seller {i}: paid per verified byte");
        assert_eq!(d.paid, rec.paid, "seller {i}: the report says what the book recorded");
        let delivered = source(i).bytes;
        if i == 0 {
            // the first seller also gave the names and sizes before the pieces
            assert!(rec.verified >= delivered && rec.verified < delivered + (64 << 10), "seller {i}: {rec:?}");
        } else {
            assert_eq!(rec.verified, delivered, "seller {i}: paid for what it delivered");
        }
        verified_total += rec.verified;
    }
    assert_eq!(verified_total, r.fetch.fetched_bytes, "every verified byte paid for once");
    assert_eq!(r.paid, verified_total as u128 * PRICE);
    // no range was bought twice: what a dropped or overtaken seller verified stays, and the
    // next source fetches only the rest of its piece (a few groups may overlap while the slow
    // seller learns that its piece was taken over)
    let payload = r.fetch.total_bytes;
    assert!(r.fetch.fetched_bytes <= payload + (256 << 10), "{:?} {:?}", r.fetch.sources, r.fetch.total_bytes);
    // the honest sellers redeem what was signed to them
    for who in &SELLERS[..2] {
        let d = r.deals.iter().find(|d| d.provider == devnet.address(*who)).unwrap();
        wait_redeemed(&devnet, d.deal, U256::from(d.paid)).await;
    }
    fetcher.shutdown().await;
    for s in sellers {
        s.shutdown().await;
    }
}

/// A byte range of a sold raw blob, bought from two sellers at once: the buyer pays for the
/// chunk groups covering the range (and the size probe), split between the sellers by what each
/// delivered; each seller redeems its share and the vendor's royalty is withdrawn from both.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_bought_from_two_sellers_pays_each_its_bytes_and_the_vendor_its_royalty_on_all() {
    const SELLERS: [usize; 2] = [PROVIDER, 5];
    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = random_file(&dir.join("blob.bin"), 24 << 20, 61);
    let mut sellers = Vec::new();
    let mut root = None;
    for (i, who) in SELLERS.into_iter().enumerate() {
        let mut store = ProviderStore::open(&dir.join(format!("seller{i}"))).await.unwrap();
        let opts = PublishOptions { raw: true, ..Default::default() };
        root = Some(publish(&mut store, &dir.join("blob.bin"), &opts, |_| {}).await.unwrap().root);
        let paid = PaidSetup { cfg: paid_config(&devnet), chain: devnet.contracts(who), address: devnet.address(who) };
        sellers.push(Provider::spawn(store, ServeConfig { paid: Some(paid), ..ServeConfig::test() }).await.unwrap());
    }
    let root = root.unwrap();
    devnet.contracts(VENDOR).register_dataset(B256::from(*root.as_bytes()), 1_000, B256::ZERO, 0).await.unwrap();
    let offers: Vec<Offer> = sellers.iter().map(|p| p.offer(root).unwrap()).collect();

    let fetcher = Fetcher::open(FetcherConfig::test(dir.join("buyer"))).await.unwrap();
    let wallet = Wallet { chain: devnet.contracts(BUYER), signer: devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let (start, end) = (2 << 20, 18 << 20);
    let opts = FetchOptions {
        select: bdc_fetcher::Select::range(start..end).unwrap(),
        raw_name: Some("part.bin".into()),
        ..Default::default()
    };
    let r = fetcher.fetch_paid_from(&offers, &wallet, &dir.join("out"), &opts, &pay, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(dir.join("out/part.bin")).unwrap(), &data[start as usize..end as usize]);
    // 2 and 18 MiB are chunk-group boundaries: the range's 16 MiB, plus the probe of the size
    // (the blob's last 1 KiB chunk), and nothing else
    assert_eq!(r.fetch.fetched_bytes, (end - start) + 1024, "{:?}", r.fetch.sources);
    assert_eq!(r.paid, r.fetch.fetched_bytes as u128 * PRICE);
    assert_eq!(r.deals.len(), 2, "a deal with each seller: {:?}", r.deals);
    let book = DealBook::load(&dir.join("buyer")).unwrap();
    // each seller redeems what was signed to it; the dispute window runs from the last redeem
    for d in &r.deals {
        wait_redeemed(&devnet, d.deal, U256::from(d.paid)).await;
    }
    devnet.advance_time(61).await.unwrap();
    for (i, who) in SELLERS.into_iter().enumerate() {
        let d = r.deals.iter().find(|d| d.provider == devnet.address(who)).unwrap();
        let s = r.fetch.sources.iter().find(|s| s.provider == sellers[i].addr().id).unwrap();
        assert!(s.pieces >= 1 && d.paid > 0, "seller {i} delivered a share: {:?}", r.fetch.sources);
        let terms = book.get(&d.deal).unwrap().terms().unwrap();
        let (to_seller, to_vendor) = devnet.contracts(who).withdraw(&terms).await.unwrap();
        assert_eq!(to_vendor, U256::from(d.paid / 10), "seller {i}: the vendor's 10 %");
        assert_eq!(to_seller + to_vendor, U256::from(d.paid), "seller {i}");
    }
    fetcher.shutdown().await;

    // --max-deposit bounds the deals of one download together: with room for one deal's
    // escrow and a half, the second seller is left out before any deal is opened with it
    let pay = PaidOptions { max_deposit: offers[0].full_price() * 3 / 2, ..pay };
    let fetcher = Fetcher::open(FetcherConfig::test(dir.join("buyer2"))).await.unwrap();
    let mut dropped = Vec::new();
    let r = fetcher
        .fetch_paid_from(&offers, &wallet, &dir.join("out2"), &opts, &pay, |e| {
            if let bdc_fetcher::FetchEvent::Dropped { provider, reason } = e {
                dropped.push((provider, reason));
            }
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("out2/part.bin")).unwrap(), &data[start as usize..end as usize]);
    assert!(
        dropped.iter().any(|(p, why)| *p == sellers[1].addr().id && why.contains("escrow")),
        "the second seller is left out for the escrow: {dropped:?}"
    );
    assert_eq!(DealBook::load(&dir.join("buyer2")).unwrap().deals.len(), 1, "one deal: {:?}", r.deals);
    fetcher.shutdown().await;
    for s in sellers {
        s.shutdown().await;
    }
}
