//! Paid downloads end to end: exact payment, ceilings, resumes after kills, buyers that stop
//! paying or forge receipts.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn full_paid_download_pays_exactly_the_bytes_delivered() {
    let s = setup(3 << 20).await;
    let buyer = s.devnet.contracts(BUYER);
    let start = buyer.balance(s.devnet.address(BUYER)).await.unwrap();
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let out = s.dir.join("out");
    let wallet = Wallet { chain: buyer.clone(), signer: s.devnet.signer(BUYER) };
    let r = fetcher.fetch_paid(&s.offer, &wallet, &out, &FetchOptions::default(), &pay, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("trades.bin")).unwrap(), std::fs::read(s.dir.join("ds/trades.bin")).unwrap());
    let deal = r.deal.unwrap();
    assert_eq!(r.paid, r.fetch.fetched_bytes as u128 * PRICE, "paid for exactly the verified bytes");
    assert_eq!(r.fetch.fetched_bytes, s.offer.size, "a full download moves every blob once");
    wait_redeemed(&s.devnet, deal, U256::from(r.paid)).await;
    // the provider's /metrics count what moved: every byte sent was receipted, and redeemed
    let url = format!("http://{}/metrics", s.provider.metrics_addr().unwrap());
    let mut text = String::new();
    for _ in 0..50 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.contains(&format!("bdc_provider_paid_bytes_redeemed_total {}", r.fetch.fetched_bytes)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        format!("bdc_provider_paid_bytes_sent_total {}", r.fetch.fetched_bytes),
        format!("bdc_provider_paid_bytes_receipted_total {}", r.fetch.fetched_bytes),
        format!("bdc_provider_paid_bytes_redeemed_total {}", r.fetch.fetched_bytes),
        "bdc_provider_paid_connections_total 1".to_string(),
        "bdc_provider_paid_connections_open 0".to_string(),
        "bdc_provider_paid_closes_total{reason=\"done\"} 1".to_string(),
    ] {
        assert!(text.contains(&want), "{want} in {text}");
    }

    // pending → withdrawn: provider + vendor royalty == the price of the bytes delivered
    s.devnet.advance_time(61).await.unwrap();
    let p = s.devnet.contracts(PROVIDER);
    let (to_provider, to_vendor) = p
        .withdraw(&bdc_fetcher::DealBook::load(&s.dir.join("buyer")).unwrap().get(&deal).unwrap().terms().unwrap())
        .await
        .unwrap();
    assert_eq!(to_provider + to_vendor, U256::from(r.paid));
    assert_eq!(to_vendor, U256::from(r.paid / 10));
    // after expiry the buyer gets the rest back: it paid only for the bytes
    s.devnet.advance_time(3_600).await.unwrap();
    let terms = bdc_fetcher::DealBook::load(&s.dir.join("buyer")).unwrap().get(&deal).unwrap().terms().unwrap();
    buyer.refund(&terms).await.unwrap();
    assert_eq!(buyer.balance(s.devnet.address(BUYER)).await.unwrap(), start - U256::from(r.paid));
    assert_eq!(buyer.balance(s.devnet.deployment.escrow).await.unwrap(), U256::ZERO);
    fetcher.shutdown().await;
    s.provider.shutdown().await;
}

/// A hostile provider (or a market lying about a size) names a price or a size that would take
/// the buyer's funds: with the default ceilings no deal is opened and nothing is escrowed.
#[tokio::test(flavor = "multi_thread")]
async fn a_greedy_price_or_an_inflated_size_opens_no_deal_by_default() {
    let s = setup(64 << 10).await;
    let buyer = s.devnet.contracts(BUYER);
    let start = buyer.balance(s.devnet.address(BUYER)).await.unwrap();
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let wallet = Wallet { chain: buyer.clone(), signer: s.devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    let ceiling = bdc_core::paid::price_per_byte(bdc_fetcher::paid::DEFAULT_MAX_PRICE_PER_GIB);
    let greedy = Offer { price_per_byte: ceiling + 1, ..s.offer.clone() };
    let err = fetcher.fetch_paid(&greedy, &wallet, &s.dir.join("o1"), &FetchOptions::default(), &pay, |_| {}).await;
    assert!(
        matches!(err, Err(FetchError::Paid(PaidError::PriceTooHigh { offered, max })) if offered == ceiling + 1 && max == ceiling),
        "{err:?}"
    );
    // at the ceiling, a size that makes the full price more than the maximum deposit
    let inflated = Offer { price_per_byte: ceiling, size: 2 << 40, ..s.offer.clone() };
    let err = fetcher.fetch_paid(&inflated, &wallet, &s.dir.join("o2"), &FetchOptions::default(), &pay, |_| {}).await;
    assert!(
        matches!(err, Err(FetchError::Paid(PaidError::DepositTooHigh { max, .. })) if max == bdc_fetcher::paid::DEFAULT_MAX_DEPOSIT),
        "{err:?}"
    );
    assert!(bdc_fetcher::DealBook::load(&s.dir.join("buyer")).unwrap().deals.is_empty(), "no deal opened");
    assert_eq!(buyer.balance(s.devnet.address(BUYER)).await.unwrap(), start, "nothing escrowed");
    // the honest offer goes through with the same defaults
    let r =
        fetcher.fetch_paid(&s.offer, &wallet, &s.dir.join("o3"), &FetchOptions::default(), &pay, |_| {}).await.unwrap();
    assert!(r.deal.is_some() && r.paid > 0);
    fetcher.shutdown().await;
    s.provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_that_lost_what_it_paid_for_does_not_pay_for_it_again() {
    // smaller than the window: the provider resends it whole before any receipt is due
    let s = setup(200 << 10).await;
    let buyer = s.devnet.contracts(BUYER);
    let wallet = Wallet { chain: buyer.clone(), signer: s.devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let (b1, b2) = (s.dir.join("b1"), s.dir.join("b2"));
    let first = Fetcher::open(FetcherConfig::test(b1.clone())).await.unwrap();
    let r1 = first.fetch_paid(&s.offer, &wallet, &s.dir.join("o1"), &FetchOptions::default(), &pay, |_| {}).await;
    let r1 = r1.unwrap();
    assert_eq!(r1.paid, s.offer.size as u128 * PRICE, "the first run pays for every byte once");
    first.shutdown().await;
    // the store is gone, the deal book survived (the store's disk failed, or a kill -9 lost
    // blobs it had not committed): the buyer fetches again
    std::fs::create_dir_all(&b2).unwrap();
    std::fs::copy(b1.join("deals.json"), b2.join("deals.json")).unwrap();
    let second = Fetcher::open(FetcherConfig::test(b2.clone())).await.unwrap();
    let out = s.dir.join("o2");
    let r2 = second.fetch_paid(&s.offer, &wallet, &out, &FetchOptions::default(), &pay, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("trades.bin")).unwrap(), std::fs::read(s.dir.join("ds/trades.bin")).unwrap());
    assert_eq!(r2.fetch.fetched_bytes, s.offer.size, "every byte was delivered again");
    let d2 = r2.deal.expect("a new deal: the first one is fully paid");
    assert_ne!(Some(d2), r1.deal);
    assert_eq!(r2.paid, 0, "bytes already paid for are not paid for again");
    wait_redeemed(&s.devnet, r1.deal.unwrap(), U256::from(r1.paid)).await;
    let c = s.devnet.contracts(ARBITER);
    assert_eq!(c.deal_state(d2).await.unwrap().redeemed, U256::ZERO);
    second.shutdown().await;
    s.provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_that_stops_paying_gets_at_most_the_window() {
    let s = setup(2 << 20).await;
    let (conn, mut send, deal, ep) = raw_buyer(&s).await;
    // pay for the first 64 KiB only
    send.write_all(&receipt(&s, BUYER, deal.id, 0)).await.unwrap();
    let ticket = parse_ticket(&s.offer.ticket).unwrap();
    let store = MemStore::new();
    let mut stream = store.remote().execute_get(conn.clone(), GetRequest::all(ticket.hash())).stream();
    let mut got = 0;
    let mut paid_bytes = 0u64;
    let mut failed = false;
    while let Some(item) = futures_lite::StreamExt::next(&mut stream).await {
        match item {
            GetProgressItem::Progress(n) => {
                got = n;
                if paid_bytes == 0 && n >= 64 << 10 {
                    paid_bytes = n;
                    send.write_all(&receipt(&s, BUYER, deal.id, n as u128 * PRICE)).await.unwrap();
                }
            }
            GetProgressItem::Done(_) => break,
            GetProgressItem::Error(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the transfer must not complete");
    assert!(got <= paid_bytes + WINDOW, "received {got}, paid for {paid_bytes}");
    assert!(got >= paid_bytes + WINDOW - (64 << 10), "the window was honoured: {got}");
    assert_eq!(close_code(&conn).await, codes::PAYMENT_TIMEOUT as u64);
    // what was receipted is redeemed
    wait_redeemed(&s.devnet, deal.id, U256::from(paid_bytes as u128 * PRICE)).await;
    // coming back on the same deal (as a buyer that crashed mid-window would) gets nothing more:
    // the window is out on bytes never receipted, and the provider says so at once (the fetcher
    // then opens a new deal) instead of stalling
    let again = ep.connect(s.provider.addr(), PAID_ALPN).await.unwrap();
    let mut send = again.open_uni().await.unwrap();
    send.write_all(&hello_frame(&s, &deal, &ep)).await.unwrap();
    let t = std::time::Instant::now();
    assert_eq!(close_code(&again).await, codes::WINDOW_SPENT as u64);
    assert!(t.elapsed() < Duration::from_secs(5), "refused at the Hello, not after a stall");
    // a receipt right after the Hello that frees no chunk group is still stored and redeemed
    // (money owed), and the window is still spent; a forged one is refused as forged
    let owed = paid_bytes + 1;
    let c = ep.connect(s.provider.addr(), PAID_ALPN).await.unwrap();
    let mut send = c.open_uni().await.unwrap();
    send.write_all(&hello_frame(&s, &deal, &ep)).await.unwrap();
    send.write_all(&receipt(&s, BUYER, deal.id, owed as u128 * PRICE)).await.unwrap();
    assert_eq!(close_code(&c).await, codes::WINDOW_SPENT as u64);
    wait_redeemed(&s.devnet, deal.id, U256::from(owed as u128 * PRICE)).await;
    let c = ep.connect(s.provider.addr(), PAID_ALPN).await.unwrap();
    let mut send = c.open_uni().await.unwrap();
    send.write_all(&hello_frame(&s, &deal, &ep)).await.unwrap();
    send.write_all(&receipt(&s, PROVIDER, deal.id, (owed + 1) as u128 * PRICE)).await.unwrap();
    assert_eq!(close_code(&c).await, codes::BAD_RECEIPT_SIGNATURE as u64);
    // a buyer that holds those bytes (they verified after its last receipt) pays for them
    // right after its Hello, and the deal goes on
    let resumed = ep.connect(s.provider.addr(), PAID_ALPN).await.unwrap();
    let mut send = resumed.open_uni().await.unwrap();
    send.write_all(&hello_frame(&s, &deal, &ep)).await.unwrap();
    send.write_all(&receipt(&s, BUYER, deal.id, got as u128 * PRICE)).await.unwrap();
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    let more = fetch_paying(&resumed, &mut send, small, |n| receipt(&s, BUYER, deal.id, (got + n) as u128 * PRICE));
    assert_eq!(more.await, Ok(32), "served again once the held bytes are paid for");
    send.finish().unwrap();
    assert_eq!(close_code(&resumed).await, codes::DONE as u64);
    wait_redeemed(&s.devnet, deal.id, U256::from((got + 32) as u128 * PRICE)).await;
    s.provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_replayed_and_excessive_receipts_close_the_connection() {
    let s = setup(1 << 20).await;
    // signed by someone other than the buyer
    let (conn, mut send, deal, _e1) = raw_buyer(&s).await;
    send.write_all(&receipt(&s, PROVIDER, deal.id, 1)).await.unwrap();
    assert_eq!(close_code(&conn).await, codes::BAD_RECEIPT_SIGNATURE as u64);
    // a valid receipt of another deal, replayed on this one
    let (other_conn, _other_send, other, _e2) = raw_buyer(&s).await;
    other_conn.close(0u32.into(), b"");
    let (conn, mut send, _deal, _e3) = raw_buyer(&s).await;
    send.write_all(&receipt(&s, BUYER, other.id, 1)).await.unwrap();
    assert_eq!(close_code(&conn).await, codes::RECEIPT_FOR_OTHER_DEAL as u64);
    // a receipt for more than was sent (nothing was requested yet)
    let (conn, mut send, deal, _e4) = raw_buyer(&s).await;
    send.write_all(&receipt(&s, BUYER, deal.id, (512 << 10) as u128 * PRICE)).await.unwrap();
    assert_eq!(close_code(&conn).await, codes::RECEIPT_ABOVE_SENT as u64);
    // a receipt above the deal's maximum
    let (conn, mut send, deal, _e5) = raw_buyer(&s).await;
    send.write_all(&receipt(&s, BUYER, deal.id, s.offer.full_price() + 1)).await.unwrap();
    assert_eq!(close_code(&conn).await, codes::RECEIPT_ABOVE_MAX as u64);
    s.provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hash_outside_the_deals_dataset_is_refused() {
    let s = setup(200_000).await;
    let (conn, _send, _deal, _ep) = raw_buyer(&s).await;
    let store = MemStore::new();
    // the provider's other dataset: published, but not the deal's
    let other = blake3::hash(&std::fs::read(s.dir.join("other.bin")).unwrap());
    let err = store
        .remote()
        .execute_get(conn.clone(), GetRequest::blob(Hash::from_bytes(*other.as_bytes())))
        .await
        .unwrap_err();
    assert_eq!(err.iroh_error_code(), Some(iroh_blobs::protocol::ERR_PERMISSION), "{err:?}");
    s.provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_killed_mid_transfer_redeems_what_it_stored_and_the_buyer_resumes_the_same_deal() {
    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (keystore, deployment, pw) = chain_files(&devnet, PROVIDER, dir);

    let node = dir.join("node");
    random_file(&dir.join("ds/big.bin"), 6 << 20, 31);
    let mut store = ProviderStore::open(&node.join("provider")).await.unwrap();
    let rec = publish(&mut store, &dir.join("ds"), &PublishOptions::default(), |_| {}).await.unwrap();
    store.shutdown().await;
    devnet.contracts(VENDOR).register_dataset(B256::from(*rec.root.as_bytes()), 1_000, B256::ZERO, 0).await.unwrap();

    let (mut seller, offer) = spawn_seller(&node, &deployment, &keystore, &pw);
    let buyer_dir = dir.join("buyer");
    let wallet = Wallet { chain: devnet.contracts(BUYER), signer: devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let fetcher = Fetcher::open(FetcherConfig::test(buyer_dir.clone())).await.unwrap();
    let out = dir.join("out");
    let first = {
        let (fetcher, offer, wallet, pay, out) = (&fetcher, offer.clone(), wallet.clone(), pay.clone(), out.clone());
        let opts = FetchOptions::default();
        let fetch = fetcher.fetch_paid(&offer, &wallet, &out, &opts, &pay, |_| {});
        let watch = async {
            // kill -9 once the buyer has paid for 2 MiB
            let t = Instant::now();
            loop {
                let signed =
                    bdc_fetcher::DealBook::load(&buyer_dir).unwrap().deals.first().map(|d| d.paid).unwrap_or(0);
                if signed >= (2u128 << 20) * PRICE {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(60), "no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seller.kill().unwrap();
            seller.wait().unwrap();
        };
        tokio::pin!(fetch);
        tokio::select! {
            res = &mut fetch => panic!("the fetch ended before the provider was killed: {res:?}"),
            () = watch => {}
        }
        fetch.await
    };
    assert!(first.is_err(), "the transfer broke off");
    let book = bdc_fetcher::DealBook::load(&buyer_dir).unwrap();
    let deal = book.deals[0].clone();
    assert!(deal.verified < 6 << 20);

    // restarted, the provider redeems what its ledger holds before any buyer shows up: every
    // receipt but the last few in flight was stored before more bytes went out (the buyer
    // verified at most a window and a group beyond what the provider stored, plus one interval)
    let c = devnet.contracts(0);
    let before_restart = c.deal_state(deal.id).await.unwrap().redeemed;
    let (mut seller, offer2) = spawn_seller(&node, &deployment, &keystore, &pw);
    let floor = U256::from(deal.paid.saturating_sub((WINDOW as u128 + (128 << 10)) * PRICE));
    let t = Instant::now();
    let redeemed_on_restart = loop {
        let r = c.deal_state(deal.id).await.unwrap().redeemed;
        if r >= floor && r > U256::ZERO {
            break r;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "after the restart only {r} redeemed (floor {floor}, before {before_restart})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(redeemed_on_restart <= U256::from(deal.paid));

    // the buyer resumes the same deal and pays for every byte exactly once
    let r = fetcher.fetch_paid(&offer2, &wallet, &out, &FetchOptions::default(), &pay, |_| {}).await.unwrap();
    assert_eq!(r.deal, Some(deal.id), "same deal");
    assert_eq!(r.paid, offer2.size as u128 * PRICE, "paid for each byte of the dataset exactly once");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), std::fs::read(dir.join("ds/big.bin")).unwrap());
    let t = Instant::now();
    while c.deal_state(deal.id).await.unwrap().redeemed != U256::from(r.paid) {
        assert!(t.elapsed() < Duration::from_secs(20), "final receipt not redeemed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fetcher.shutdown().await;
    seller.kill().unwrap();
    seller.wait().unwrap();
}

#[test]
fn a_wrong_keystore_password_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "right").unwrap();
    let ks = tmp.path().join("k.json");
    let st = crate::common::bdc()
        .args(["key", "new", "--keystore"])
        .arg(&ks)
        .arg("--password-file")
        .arg(&pw)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    std::fs::write(&pw, "wrong").unwrap();
    std::fs::write(tmp.path().join("d.json"), r#"{"chain_id":1,"token":"0x0000000000000000000000000000000000000001","registry":"0x0000000000000000000000000000000000000002","escrow":"0x0000000000000000000000000000000000000003","deploy_block":0}"#).unwrap();
    let register = |keystore: &std::path::Path| {
        crate::common::bdc()
            .args(["dataset", "register", &format!("{}1", "0".repeat(63)), "--rpc-url", "http://127.0.0.1:9"])
            .arg("--deployment")
            .arg(tmp.path().join("d.json"))
            .arg("--keystore")
            .arg(keystore)
            .arg("--password-file")
            .arg(&pw)
            .output()
            .unwrap()
    };
    let out = register(&ks);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot decrypt keystore") && err.contains("wrong password"), "{err}");
    let missing = register(&tmp.path().join("nope.json"));
    assert!(String::from_utf8(missing.stderr).unwrap().contains("does not exist"));
}

/// A buyer that restarts reconnects before the provider notices its old connection died; the
/// old one's streams must not keep taking the deal's window.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_connection_of_the_same_buyer_supersedes_the_old_one() {
    let s = setup(200_000).await;
    let (old, mut send, deal, ep) = raw_buyer(&s).await;
    // the first connection is admitted (it is served)
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    let pay = |n: u64| receipt(&s, BUYER, deal.id, n as u128 * PRICE);
    assert_eq!(fetch_paying(&old, &mut send, small.clone(), pay).await, Ok(32));
    let again = ep.connect(s.provider.addr(), PAID_ALPN).await.unwrap();
    let mut send2 = again.open_uni().await.unwrap();
    send2.write_all(&hello_frame(&s, &deal, &ep)).await.unwrap();
    assert_eq!(close_code(&old).await, codes::SUPERSEDED as u64);
    // the newer one is served
    assert_eq!(
        fetch_paying(&again, &mut send2, small, |n| receipt(&s, BUYER, deal.id, (32 + n) as u128 * PRICE)).await,
        Ok(32)
    );
    send2.finish().unwrap();
    assert_eq!(close_code(&again).await, codes::DONE as u64);
    // each connection counts once, under the reason its buyer was told (the old one's control
    // stream also ended after it was closed: that is not a second close)
    let url = format!("http://{}/metrics", s.provider.metrics_addr().unwrap());
    let mut closes = Vec::new();
    for _ in 0..50 {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        closes = text
            .lines()
            .filter(|l| l.starts_with("bdc_provider_paid_closes_total{"))
            .map(str::to_string)
            .collect::<Vec<_>>();
        if closes.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closes.sort();
    assert_eq!(
        closes,
        [
            format!("bdc_provider_paid_closes_total{{reason=\"{}\"}} 1", codes::name(codes::SUPERSEDED as u64)),
            "bdc_provider_paid_closes_total{reason=\"done\"} 1".to_string(),
        ]
    );
    s.provider.shutdown().await;
}

/// A run verified the whole dataset and recorded its final receipt, but the connection broke
/// before the provider stored it (the provider killed, the network gone). The next fetch finds
/// everything in its store and fetches nothing, yet still delivers that receipt: the provider is
/// paid for every byte the buyer verified. The second deal here is left as such a run leaves it:
/// served to the end, receipted by the provider up to 100 KiB short, recorded in full in the
/// buyer's book.
#[tokio::test(flavor = "multi_thread")]
async fn a_final_receipt_the_provider_never_stored_is_delivered_by_the_next_fetch() {
    let s = setup(400 << 10).await;
    let buyer_dir = s.dir.join("buyer");
    let fetcher = Fetcher::open(FetcherConfig::test(buyer_dir.clone())).await.unwrap();
    let wallet = Wallet { chain: s.devnet.contracts(BUYER), signer: s.devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let opts = FetchOptions::default();
    let fetch = async |out: &str| fetcher.fetch_paid(&s.offer, &wallet, &s.dir.join(out), &opts, &pay, |_| {}).await;
    let first = fetch("out1").await.unwrap();
    let full = s.offer.size as u128 * PRICE;
    assert_eq!(first.paid, full);
    let book = bdc_fetcher::DealBook::load(&buyer_dir).unwrap();
    assert_eq!(book.get(&first.deal.unwrap()).unwrap().confirmed, full, "the provider confirmed the final receipt");

    // the broken run: everything sent, the provider stored receipts up to 100 KiB short
    let (conn, mut send, deal, _ep) = raw_buyer(&s).await;
    let short = (s.offer.size - (100 << 10)) as u128 * PRICE;
    let pay_short = |n: u64| receipt(&s, BUYER, deal.id, (n as u128 * PRICE).min(short));
    fetch_paying(&conn, &mut send, GetRequest::all(s.root), pay_short).await.unwrap();
    send.finish().unwrap();
    assert_eq!(close_code(&conn).await, codes::DONE as u64);
    wait_redeemed(&s.devnet, deal.id, U256::from(short)).await;
    let mut book = bdc_fetcher::DealBook::load(&buyer_dir).unwrap();
    book.deals.push(bdc_fetcher::BuyerDeal {
        id: deal.id,
        terms: hex::encode(deal.terms.abi_encode()),
        root: s.root,
        verified: s.offer.size,
        paid: full,
        spent: false,
        confirmed: 0,
    });
    book.save().unwrap();

    // nothing left to fetch, one receipt left to deliver
    let again = fetch("out2").await.unwrap();
    assert_eq!((again.deal, again.fetch.fetched_bytes), (None, 0), "served from the store");
    wait_redeemed(&s.devnet, deal.id, U256::from(full)).await;
    let book = bdc_fetcher::DealBook::load(&buyer_dir).unwrap();
    assert_eq!(book.get(&deal.id).unwrap().confirmed, full);
    // confirmed deals are not delivered again: the first deal's connection was the only other one
    fetch("out3").await.unwrap();
    let url = format!("http://{}/metrics", s.provider.metrics_addr().unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(text.contains("bdc_provider_paid_connections_total 3"), "{text}");

    // the same loss, then a fetch in a fresh store (`--move`): the receipt is delivered before
    // that fetch buys the dataset on a new deal
    let (conn, mut send, lost, _ep) = raw_buyer(&s).await;
    let pay_short = |n: u64| receipt(&s, BUYER, lost.id, (n as u128 * PRICE).min(short));
    fetch_paying(&conn, &mut send, GetRequest::all(s.root), pay_short).await.unwrap();
    send.finish().unwrap();
    assert_eq!(close_code(&conn).await, codes::DONE as u64);
    let mut book = bdc_fetcher::DealBook::load(&buyer_dir).unwrap();
    let mut entry = book.get(&deal.id).unwrap().clone();
    (entry.id, entry.terms, entry.confirmed) = (lost.id, hex::encode(lost.terms.abi_encode()), 0);
    book.deals.push(entry);
    book.save().unwrap();
    let moving = FetchOptions { export: bdc_fetcher::Export::Move, ..Default::default() };
    let out4 = s.dir.join("out4");
    let moved = fetcher.staged(s.root, async |f| f.fetch_paid(&s.offer, &wallet, &out4, &moving, &pay, |_| {}).await);
    let moved = moved.await.unwrap();
    wait_redeemed(&s.devnet, lost.id, U256::from(full)).await;
    assert_ne!(moved.deal, Some(lost.id));
    assert_eq!(std::fs::read(out4.join("trades.bin")).unwrap(), std::fs::read(s.dir.join("ds/trades.bin")).unwrap());
    fetcher.shutdown().await;
    s.provider.shutdown().await;
}

/// A fetch into a fresh store (`--move`'s staging store, a mirror's) holds none of what the
/// book's earlier deals paid for; that is not a loss the resume rule forgives. Otherwise every
/// `--move` of a dataset within one window would be free.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_into_a_fresh_store_pays_for_what_it_verifies() {
    let s = setup(100 << 10).await;
    assert!(s.offer.size < WINDOW, "the whole dataset fits in one window");
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let wallet = Wallet { chain: s.devnet.contracts(BUYER), signer: s.devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let full = s.offer.size as u128 * PRICE;
    let (out1, opts) = (s.dir.join("out1"), FetchOptions::default());
    let first = fetcher.fetch_paid(&s.offer, &wallet, &out1, &opts, &pay, |_| {}).await.unwrap();
    assert_eq!(first.paid, full);
    let moving = FetchOptions { export: bdc_fetcher::Export::Move, ..Default::default() };
    for round in 0..2 {
        let out = s.dir.join(format!("moved{round}"));
        let r = fetcher.staged(s.root, async |f| f.fetch_paid(&s.offer, &wallet, &out, &moving, &pay, |_| {}).await);
        let r = r.await.unwrap();
        assert_eq!(r.paid, full, "round {round}: a fresh store pays for every byte it verifies");
        wait_redeemed(&s.devnet, r.deal.unwrap(), U256::from(full)).await;
    }
    fetcher.shutdown().await;
    s.provider.shutdown().await;
}
