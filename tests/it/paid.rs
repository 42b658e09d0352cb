//! Paid transfers against a real anvil (Devnet) and real iroh endpoints on 127.0.0.1.

use std::time::{Duration, Instant};

use alloy::{
    primitives::{B256, U256},
    sol_types::SolValue,
};
use bdc_contracts::{
    Devnet, DevnetConfig,
    client::OpenDeal,
    receipt::{sign_hello_sync, sign_receipt_sync},
};
use bdc_core::{
    Hash,
    net::{NetConfig, bind_endpoint},
    paid::{Hello, Offer, PAID_PROTOCOL_VERSION, PaidMessage, SignedReceipt, codes},
    protocol::PAID_ALPN,
    ticket::parse_ticket,
};
use bdc_fetcher::{FetchError, FetchOptions, Fetcher, FetcherConfig, PaidError, PaidOptions, Wallet};
use bdc_provider::{PaidConfig, PaidSetup, Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use iroh::endpoint::{Connection, ConnectionError};
use iroh_blobs::{api::remote::GetProgressItem, protocol::GetRequest, store::mem::MemStore};

use crate::common::{random_file, wait_redeemed};

const VENDOR: usize = 1;
const BUYER: usize = 2;
const PROVIDER: usize = 3;
const ARBITER: usize = 0;
const SQUATTER: usize = 4;
const PRICE: u128 = 1_000_000; // base units per byte
const WINDOW: u64 = 256 << 10;

struct Setup {
    devnet: Devnet,
    provider: Provider,
    root: Hash,
    offer: Offer,
    /// A blob of the sold dataset whose 32 bytes are the hash of `other.bin` (another dataset).
    index: Hash,
    /// A free raw blob whose 32 bytes are the hash of the sold `trades.bin`.
    free_index: Hash,
    /// A collection whose manifest names VENDOR, registered first by SQUATTER.
    squatted: Hash,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

async fn setup(bytes: usize) -> Setup {
    setup_with(bytes, |_| {}).await
}

/// The provider's settings in these tests.
fn paid_config(devnet: &Devnet) -> PaidConfig {
    PaidConfig {
        price_per_byte: PRICE,
        window: WINDOW,
        stall_timeout: Duration::from_secs(2),
        redeem_every: 1 << 20,
        expiry_margin: Duration::from_secs(60),
        hello_timeout: Duration::from_secs(5),
        max_rate: None,
        chain_refresh: Duration::from_millis(300),
        arbiters: vec![devnet.address(ARBITER)],
        max_royalty_bps: None,
    }
}

async fn setup_with(bytes: usize, tune: impl FnOnce(&mut PaidConfig)) -> Setup {
    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let trades = random_file(&dir.join("ds/trades.bin"), bytes, 21);
    let other = random_file(&dir.join("other.bin"), 40_000, 22);
    std::fs::write(dir.join("ds/index.bin"), blake3::hash(&other).as_bytes()).unwrap();
    std::fs::write(dir.join("free.bin"), blake3::hash(&trades).as_bytes()).unwrap();
    random_file(&dir.join("vendored/data.bin"), 20_000, 23);
    let mut store = ProviderStore::open(&dir.join("provider")).await.unwrap();
    let rec = publish(&mut store, &dir.join("ds"), &PublishOptions::default(), |_| {}).await.unwrap();
    publish(&mut store, &dir.join("other.bin"), &PublishOptions::default(), |_| {}).await.unwrap();
    let free = PublishOptions { free: true, raw: true, ..Default::default() };
    let free_index = publish(&mut store, &dir.join("free.bin"), &free, |_| {}).await.unwrap().root;
    let vendored = PublishOptions { vendor: Some(format!("{:#x}", devnet.address(VENDOR))), ..Default::default() };
    let squatted = publish(&mut store, &dir.join("vendored"), &vendored, |_| {}).await.unwrap().root;
    devnet.contracts(VENDOR).register_dataset(B256::from(*rec.root.as_bytes()), 1_000, B256::ZERO, 0).await.unwrap();
    devnet.contracts(SQUATTER).register_dataset(B256::from(*squatted.as_bytes()), 10_000, B256::ZERO, 0).await.unwrap();
    let mut cfg = paid_config(&devnet);
    tune(&mut cfg);
    let paid = PaidSetup { cfg, chain: devnet.contracts(PROVIDER), address: devnet.address(PROVIDER) };
    let metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let provider =
        Provider::spawn(store, ServeConfig { paid: Some(paid), metrics_addr, ..ServeConfig::test() }).await.unwrap();
    let offer = provider.offer(rec.root).unwrap();
    let index = Hash::new(blake3::hash(&other).as_bytes());
    Setup { devnet, provider, root: rec.root, offer, index, free_index, squatted, _tmp: tmp, dir }
}

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

/// A raw buyer: opens a deal, dials bdc/paid/1 and sends a valid Hello; the test drives the rest.
async fn raw_buyer(s: &Setup) -> (Connection, iroh::endpoint::SendStream, bdc_contracts::Deal, iroh::Endpoint) {
    raw_buyer_with(s, |_| {}).await
}

/// [`raw_buyer`] with the deal's terms changed by `tune` before it opens.
async fn raw_buyer_with(
    s: &Setup,
    tune: impl FnOnce(&mut OpenDeal),
) -> (Connection, iroh::endpoint::SendStream, bdc_contracts::Deal, iroh::Endpoint) {
    let ep = bind_endpoint(&NetConfig::test(), iroh::SecretKey::generate(), vec![]).await.unwrap();
    let buyer = s.devnet.contracts(BUYER);
    let now = buyer.chain_time().await.unwrap();
    let req = OpenDeal {
        provider: s.devnet.address(PROVIDER),
        provider_node_id: B256::from(*s.provider.addr().id.as_bytes()),
        dataset_root: B256::from(*s.root.as_bytes()),
        price_per_byte: PRICE,
        max_amount: U256::from(s.offer.full_price()),
        window: WINDOW,
        expiry: now + 3_600,
        arbiter: s.devnet.address(ARBITER),
    };
    let mut req = req;
    tune(&mut req);
    let deal = buyer.open_deal(s.devnet.address(BUYER), &req).await.unwrap();
    let conn = ep.connect(s.provider.addr(), PAID_ALPN).await.unwrap();
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&hello_frame(s, &deal, &ep)).await.unwrap();
    (conn, send, deal, ep)
}

/// The buyer's signed Hello for `deal` from endpoint `ep`, framed.
fn hello_frame(s: &Setup, deal: &bdc_contracts::Deal, ep: &iroh::Endpoint) -> Vec<u8> {
    let me = B256::from(*ep.id().as_bytes());
    let sig = sign_hello_sync(&s.devnet.signer(BUYER), &s.devnet.contracts(BUYER).domain(), deal.id, me).unwrap();
    PaidMessage::Hello(Hello {
        version: PAID_PROTOCOL_VERSION,
        deal_id: deal.id.0,
        terms: deal.terms.abi_encode(),
        buyer_node: me.0,
        sig: sig.as_bytes().to_vec(),
    })
    .frame()
}

fn receipt(s: &Setup, signer: usize, deal: B256, amount: u128) -> Vec<u8> {
    let sig =
        sign_receipt_sync(&s.devnet.signer(signer), &s.devnet.contracts(0).domain(), deal, U256::from(amount)).unwrap();
    PaidMessage::Receipt(SignedReceipt { deal_id: deal.0, cumulative: amount, sig: sig.as_bytes().to_vec() }).frame()
}

async fn close_code(conn: &Connection) -> u64 {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("provider closes") {
        ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("unexpected close: {other}"),
    }
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

/// Starts `bdc provider serve --sell` as a child process; returns it and its offer.
fn spawn_seller(
    node: &std::path::Path,
    deployment: &std::path::Path,
    keystore: &std::path::Path,
    pw: &std::path::Path,
) -> (std::process::Child, Offer) {
    use std::io::{BufRead, BufReader};
    let mut child = crate::common::bdc()
        .arg("--data-dir")
        .arg(node)
        .args([
            "provider",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--sell",
            "--arbiter",
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "--window",
            "262144",
            "--redeem-every",
            "524288",
        ])
        .args(["--max-rate", "4000000", "--price-per-gib"])
        .arg(((1u128 << 30) * PRICE).to_string())
        .arg("--deployment")
        .arg(deployment)
        .arg("--keystore")
        .arg(keystore)
        .arg("--password-file")
        .arg(pw)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let offer = loop {
        let line = lines.next().expect("serve printed an offer").unwrap();
        if let Some(o) = line.split('\t').nth(1).filter(|o| o.starts_with("bdcoffer")) {
            break o.parse().unwrap();
        }
    };
    // keep draining stdout so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    (child, offer)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_killed_mid_transfer_redeems_what_it_stored_and_the_buyer_resumes_the_same_deal() {
    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let deployment = dir.join("devnet.json");
    let info = serde_json::json!({ "rpc_url": devnet.rpc_url().to_string(), "deployment": devnet.deployment });
    std::fs::write(&deployment, info.to_string()).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::write(dir.join("p.key"), devnet.signer(PROVIDER).to_bytes().to_string()).unwrap();
    let keystore = dir.join("provider.json");
    let st = crate::common::bdc()
        .args(["key", "import", "--keystore"])
        .arg(&keystore)
        .arg("--private-key-file")
        .arg(dir.join("p.key"))
        .arg("--password-file")
        .arg(&pw)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(
        String::from_utf8(st.stdout).unwrap().trim().to_lowercase(),
        format!("{:?}", devnet.address(PROVIDER)).to_lowercase()
    );

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

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_is_closed_when_its_deal_expires() {
    let s = setup(200_000).await;
    let (conn, _send, _deal, _ep) = raw_buyer(&s).await;
    // admitted: nothing closes it while the deal is open
    assert!(tokio::time::timeout(Duration::from_secs(1), conn.closed()).await.is_err());
    // the deal enters the provider's 60 s safety margin before it expires: bytes sent then
    // might not be redeemed in time
    s.devnet.advance_time(3_545).await.unwrap();
    assert_eq!(close_code(&conn).await, codes::DEAL_EXPIRING as u64);
    s.provider.shutdown().await;
}

/// Signs a receipt, then sends it in a form the escrow refuses (high s, v in {0, 1}).
fn malleated_receipt(s: &Setup, deal: B256, amount: u128) -> Vec<u8> {
    let sig =
        sign_receipt_sync(&s.devnet.signer(BUYER), &s.devnet.contracts(0).domain(), deal, U256::from(amount)).unwrap();
    let bad = bdc_contracts::receipt::malleate(&sig).to_vec();
    PaidMessage::Receipt(SignedReceipt { deal_id: deal.0, cumulative: amount, sig: bad }).frame()
}

/// Fetches `req` on a raw paid connection, paying for every 64 KiB; the bytes verified.
async fn fetch_paying(
    conn: &Connection,
    send: &mut iroh::endpoint::SendStream,
    req: GetRequest,
    pay: impl Fn(u64) -> Vec<u8>,
) -> Result<u64, String> {
    let store = MemStore::new();
    let mut stream = store.remote().execute_get(conn.clone(), req).stream();
    let mut paid = 0;
    let mut got = 0;
    while let Some(item) = futures_lite::StreamExt::next(&mut stream).await {
        match item {
            GetProgressItem::Progress(n) => {
                got = n;
                if n >= paid + (64 << 10) {
                    paid = n;
                    send.write_all(&pay(n)).await.map_err(|e| e.to_string())?;
                }
            }
            GetProgressItem::Done(_) => break,
            GetProgressItem::Error(e) => return Err(format!("{e:?}")),
        }
    }
    send.write_all(&pay(got)).await.map_err(|e| e.to_string())?;
    Ok(got)
}

/// A buyer signing receipts in the forms alloy accepts but the escrow reverts on would be
/// served everything and never pay. The provider stores the canonical form, which redeems.
#[tokio::test(flavor = "multi_thread")]
async fn malleated_receipts_are_stored_in_the_form_the_escrow_redeems() {
    let s = setup(1 << 20).await;
    let (conn, mut send, deal, _ep) = raw_buyer(&s).await;
    let req = GetRequest::all(s.root);
    let got = fetch_paying(&conn, &mut send, req, |n| malleated_receipt(&s, deal.id, n as u128 * PRICE)).await.unwrap();
    assert_eq!(got, s.offer.size);
    send.finish().unwrap();
    assert_eq!(close_code(&conn).await, codes::DONE as u64);
    wait_redeemed(&s.devnet, deal.id, U256::from(got as u128 * PRICE)).await;
    s.provider.shutdown().await;
}

/// A buyer naming itself arbiter could dispute and rule in its own favour after downloading.
#[tokio::test(flavor = "multi_thread")]
async fn a_deal_naming_an_arbiter_the_provider_does_not_accept_is_refused() {
    let s = setup(200_000).await;
    let buyer = s.devnet.address(BUYER);
    assert_eq!(s.offer.arbiters, vec![s.devnet.address(ARBITER).into_array()], "the offer names the arbiters");
    let (conn, mut send, _deal, _ep) = raw_buyer_with(&s, |r| r.arbiter = buyer).await;
    let got = fetch_paying(&conn, &mut send, GetRequest::all(s.root), |_| Vec::new()).await;
    assert!(got.is_err(), "no data under a self-arbitrated deal");
    assert_eq!(close_code(&conn).await, codes::ARBITER_NOT_ACCEPTED as u64);
    // the fetcher does not even open such a deal
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let wallet = Wallet { chain: s.devnet.contracts(BUYER), signer: s.devnet.signer(BUYER) };
    let pay = PaidOptions::new(vec![buyer]);
    let err = fetcher
        .fetch_paid(&s.offer, &wallet, &s.dir.join("out"), &FetchOptions::default(), &pay, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Paid(PaidError::ArbiterNotAccepted { .. })), "{err}");
    assert!(bdc_fetcher::DealBook::load(&s.dir.join("buyer")).unwrap().deals.is_empty());
    fetcher.shutdown().await;
    s.provider.shutdown().await;
}

/// The deal copies vendor and royalty from the registry when it opens: a vendor raising its
/// royalty under a provider, or a squatter who registered the root first, must get no deal.
#[tokio::test(flavor = "multi_thread")]
async fn a_raised_royalty_or_a_squatted_root_gets_no_deal() {
    let s = setup(200_000).await;
    let root = B256::from(*s.root.as_bytes());
    let vendor = s.devnet.contracts(VENDOR);
    vendor.registry().update(root, 10_000, B256::ZERO, 0).send().await.unwrap().get_receipt().await.unwrap();
    let (conn, _send, deal, _ep) = raw_buyer(&s).await;
    assert_eq!(deal.terms.royaltyBps, 10_000, "the deal copied the raised royalty");
    assert_eq!(close_code(&conn).await, codes::TERMS_NOT_ACCEPTED as u64);
    // back at the royalty the provider started selling at: accepted again
    vendor.registry().update(root, 1_000, B256::ZERO, 0).send().await.unwrap().get_receipt().await.unwrap();
    let (conn, mut send, _deal, _ep) = raw_buyer(&s).await;
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    assert_eq!(fetch_paying(&conn, &mut send, small, |_| Vec::new()).await, Ok(32), "admitted");
    // the squatted root: its manifest names VENDOR, the registry SQUATTER
    let squatted = B256::from(*s.squatted.as_bytes());
    let (conn, _send, deal, _ep) = raw_buyer_with(&s, |r| r.dataset_root = squatted).await;
    assert_eq!(deal.terms.vendor, s.devnet.address(SQUATTER));
    assert_eq!(close_code(&conn).await, codes::TERMS_NOT_ACCEPTED as u64);
    s.provider.shutdown().await;
}

/// A vendor that hands its dataset to a new vendor (`transferVendor`): deals now pay the new
/// vendor, which the provider's pin refuses, until its operator re-pins (`bdc provider repin`,
/// which checks the registry names the vendor it is given).
#[tokio::test(flavor = "multi_thread")]
async fn a_vendor_transfer_is_sold_once_the_operator_repins() {
    let s = setup(200_000).await;
    let root = B256::from(*s.root.as_bytes());
    // the heir (an account with a key: it raises the royalty below)
    let heir = s.devnet.address(SQUATTER);
    let vendor = s.devnet.contracts(VENDOR);
    vendor.registry().transferVendor(root, heir).send().await.unwrap().get_receipt().await.unwrap();
    let (conn, _send, deal, _ep) = raw_buyer(&s).await;
    assert_eq!(deal.terms.vendor, heir, "the deal pays the new vendor");
    assert_eq!(close_code(&conn).await, codes::TERMS_NOT_ACCEPTED as u64);
    let (_key, deployment) = crate::common::buyer_chain_files(&s.devnet, ARBITER, &s.dir.join("op"));
    let (data_dir, root_text) = (s.dir.clone(), s.root.to_string());
    let repin = |vendor: String| {
        let (dir, deployment, root) = (data_dir.clone(), deployment.clone(), root_text.clone());
        tokio::task::spawn_blocking(move || {
            crate::common::bdc()
                .arg("--data-dir")
                .arg(&dir)
                .args(["provider", "repin", &root, "--vendor", &vendor, "--deployment"])
                .arg(&deployment)
                .output()
                .unwrap()
        })
    };
    let failed_with = |out: std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(what), "{what:?} not in: {err}");
    };
    // while serve runs, the ledger is open: refused with the reason
    failed_with(repin(format!("{heir:#x}")).await.unwrap(), "stop `bdc provider serve` first");
    let Setup { devnet, provider, root: ds, index, _tmp, dir, .. } = s;
    provider.shutdown().await;
    // a vendor the registry does not name is not pinned
    failed_with(repin(format!("{:#x}", devnet.address(BUYER))).await.unwrap(), "the registry names vendor");
    // the heir raised the royalty before the repin: the ceiling stays the old one
    set_royalty(&devnet, SQUATTER, root, 5_000).await;
    let out = repin(format!("{heir:#x}")).await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("re-pinned") && said.contains("up to 1000 bps"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("above the ceiling"));
    // restarted: a deal paying the heir its raised royalty is refused, at the old one served
    let store = ProviderStore::open(&dir.join("provider")).await.unwrap();
    let paid =
        PaidSetup { cfg: paid_config(&devnet), chain: devnet.contracts(PROVIDER), address: devnet.address(PROVIDER) };
    let provider = Provider::spawn(store, ServeConfig { paid: Some(paid), ..ServeConfig::test() }).await.unwrap();
    let offer = provider.offer(ds).unwrap();
    let s = Setup { devnet, provider, root: ds, offer, index, free_index: ds, squatted: ds, _tmp, dir };
    let (conn, _send, _deal, _ep) = raw_buyer(&s).await;
    assert_eq!(close_code(&conn).await, codes::TERMS_NOT_ACCEPTED as u64, "5,000 bps is above the pin");
    set_royalty(&s.devnet, SQUATTER, root, 1_000).await;
    let (conn, mut send, deal, _ep) = raw_buyer(&s).await;
    assert_eq!((deal.terms.vendor, deal.terms.royaltyBps), (heir, 1_000));
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    let pay = |n: u64| receipt(&s, BUYER, deal.id, n as u128 * PRICE);
    assert_eq!(fetch_paying(&conn, &mut send, small, pay).await, Ok(32), "admitted");
    s.provider.shutdown().await;
}

/// The registered vendor `who` sets `root`'s royalty.
async fn set_royalty(devnet: &Devnet, who: usize, root: B256, bps: u16) {
    devnet
        .contracts(who)
        .registry()
        .update(root, bps, B256::ZERO, 0)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
}

/// A squatter that registered a root first is never reached from a pinned vendor by transfers:
/// `repin` refuses it even when the registry names it.
#[tokio::test(flavor = "multi_thread")]
async fn repin_refuses_a_vendor_the_pinned_one_never_transferred_to() {
    let s = setup(50_000).await;
    let (_key, deployment) = crate::common::buyer_chain_files(&s.devnet, ARBITER, &s.dir.join("op"));
    let Setup { devnet, provider, squatted, dir, _tmp, .. } = s;
    provider.shutdown().await;
    let out = tokio::task::spawn_blocking(move || {
        crate::common::bdc()
            .arg("--data-dir")
            .arg(&dir)
            .args(["provider", "repin", &squatted.to_string(), "--vendor", &format!("{:#x}", devnet.address(SQUATTER))])
            .arg("--deployment")
            .arg(&deployment)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // the provider refused to pin the squatted root at start (its manifest names VENDOR)
    assert!(!out.status.success() && err.contains("nothing is pinned"), "{err}");
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
    s.provider.shutdown().await;
}

/// `serve --max-royalty-bps` caps the royalty outright, also for a dataset the provider never saw
/// registered at a lower one (a squatter on a raw blob is capped only by this).
#[tokio::test(flavor = "multi_thread")]
async fn a_royalty_above_the_providers_ceiling_gets_no_deal() {
    // registered at 1,000 bps (10%) by its vendor; this provider sells at no more than 5%
    let s = setup_with(200_000, |c| c.max_royalty_bps = Some(500)).await;
    let (conn, _send, deal, _ep) = raw_buyer(&s).await;
    assert_eq!(deal.terms.royaltyBps, 1_000);
    assert_eq!(close_code(&conn).await, codes::TERMS_NOT_ACCEPTED as u64);
    // the fetcher reports the refusal by name, and nothing is paid
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.deal_duration = Duration::from_secs(3_600);
    pay.receipt_every = 64 << 10;
    let wallet = Wallet { chain: s.devnet.contracts(BUYER), signer: s.devnet.signer(BUYER) };
    let out = s.dir.join("out");
    let err = fetcher.fetch_paid(&s.offer, &wallet, &out, &FetchOptions::default(), &pay, |_| {}).await.unwrap_err();
    assert!(
        matches!(err, FetchError::ProviderClosed { code, .. } if code == codes::TERMS_NOT_ACCEPTED as u64),
        "{err}"
    );
    assert!(!out.join("trades.bin").exists());
    let book = bdc_fetcher::DealBook::load(&s.dir.join("buyer")).unwrap();
    assert!(book.deals.len() == 1 && book.deals[0].spent, "a refused deal is not reused: {:?}", book.deals);
    // at the ceiling: accepted (on a new deal, which copies the royalty now registered)
    let root = B256::from(*s.root.as_bytes());
    let vendor = s.devnet.contracts(VENDOR);
    vendor.registry().update(root, 500, B256::ZERO, 0).send().await.unwrap().get_receipt().await.unwrap();
    let r = fetcher.fetch_paid(&s.offer, &wallet, &out, &FetchOptions::default(), &pay, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("trades.bin")).unwrap(), std::fs::read(s.dir.join("ds/trades.bin")).unwrap());
    assert!(r.paid > 0);
    fetcher.shutdown().await;
    s.provider.shutdown().await;
}

/// iroh-blobs serves the children of any blob read as a hash sequence: a blob whose bytes are
/// hashes would index the whole store.
#[tokio::test(flavor = "multi_thread")]
async fn children_of_a_plain_blob_are_refused_on_both_protocols() {
    let s = setup(200_000).await;
    let store = MemStore::new();
    let other = Hash::from_bytes(*blake3::hash(&std::fs::read(s.dir.join("other.bin")).unwrap()).as_bytes());
    // paid: a blob of the deal's dataset read as a hash sequence names another dataset
    let (conn, _send, _deal, _ep) = raw_buyer(&s).await;
    let err = store.remote().execute_get(conn.clone(), GetRequest::all(s.index)).await.unwrap_err();
    assert_eq!(err.iroh_error_code(), Some(iroh_blobs::protocol::ERR_PERMISSION), "{err:?}");
    assert!(!store.blobs().has(other).await.unwrap(), "nothing of the other dataset arrived");
    // free: a free blob read as a hash sequence names the sold file
    let ep = bind_endpoint(&NetConfig::test(), iroh::SecretKey::generate(), vec![]).await.unwrap();
    let free = ep.connect(s.provider.addr(), bdc_core::protocol::FREE_ALPN).await.unwrap();
    let err = store.remote().execute_get(free.clone(), GetRequest::all(s.free_index)).await.unwrap_err();
    assert_eq!(err.iroh_error_code(), Some(iroh_blobs::protocol::ERR_PERMISSION), "{err:?}");
    let trades = Hash::from_bytes(*blake3::hash(&std::fs::read(s.dir.join("ds/trades.bin")).unwrap()).as_bytes());
    assert!(!store.blobs().has(trades).await.unwrap(), "nothing of the sold file arrived");
    // Observe tells which ranges of a hash the provider holds: only for what the peer may read
    let observe = |h: Hash| {
        let stream = store.remote().observe(free.clone(), iroh_blobs::protocol::ObserveRequest::new(h));
        async move {
            let mut stream = std::pin::pin!(stream);
            tokio::time::timeout(Duration::from_secs(10), futures_lite::StreamExt::next(&mut stream))
                .await
                .expect("an answer")
        }
    };
    assert!(matches!(observe(trades).await, Some(Err(_)) | None), "a sold blob is not observable for free");
    assert!(matches!(observe(s.free_index).await, Some(Ok(_))), "a free blob is");
    // the free blob alone is served as before
    store.remote().execute_get(free, GetRequest::blob(s.free_index)).await.unwrap();
    assert!(store.blobs().has(s.free_index).await.unwrap());
    s.provider.shutdown().await;
}

/// Bytes sent after a deal expires can never be redeemed; a provider that admits Hellos until
/// the last second and notices expiry late gives them away.
#[tokio::test(flavor = "multi_thread")]
async fn no_hello_inside_the_expiry_margin_and_no_byte_after_it() {
    let s = setup(1 << 20).await;
    // 30 s left, inside the 60 s margin: refused
    let (conn, _send, _deal, _ep) = raw_buyer_with(&s, |r| r.expiry -= 3_600 - 30).await;
    assert_eq!(close_code(&conn).await, codes::DEAL_EXPIRING as u64);
    // admitted with about 5 s to spare (a small GET is served); once they pass, not one group
    // goes out
    let (conn, mut send, _deal, _ep) = raw_buyer_with(&s, |r| r.expiry -= 3_600 - 65).await;
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    assert_eq!(fetch_paying(&conn, &mut send, small, |_| Vec::new()).await, Ok(32), "admitted");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let got = fetch_paying(&conn, &mut send, GetRequest::all(s.root), |_| Vec::new()).await;
    assert!(got.is_err(), "nothing is served inside the margin");
    assert_eq!(close_code(&conn).await, codes::DEAL_EXPIRING as u64);
    // its gate can never be used again: it is dropped when its connection ends (memory does not
    // grow with every deal a provider ever admitted)
    drop((conn, send));
    let t = Instant::now();
    while s.provider.deal_gates() != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the expired deal's gate is kept: {:?}",
            s.provider.deal_gates()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (conn, mut send, _deal, _ep) = raw_buyer(&s).await;
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    assert_eq!(fetch_paying(&conn, &mut send, small, |_| Vec::new()).await, Ok(32), "admitted");
    assert_eq!(s.provider.deal_gates(), Some(1), "only the live deal's gate is kept");
    s.provider.shutdown().await;
}

/// With 2 s blocks and many deals entering the margin together, one transaction per deal would
/// redeem the last ones after they expire. Receipts of every deal are redeemed in time.
#[tokio::test(flavor = "multi_thread")]
async fn many_deals_expiring_together_are_all_redeemed_with_2s_blocks() {
    const DEALS: usize = 12;
    let s = setup_with(1 << 20, |c| {
        c.expiry_margin = Duration::from_secs(12);
        c.redeem_every = 1 << 40; // nothing is redeemed before the margin
    })
    .await;
    let start = s.devnet.contracts(0).chain_time().await.unwrap();
    let mut open = Vec::new();
    for _ in 0..DEALS {
        let (conn, mut send, deal, ep) = raw_buyer_with(&s, |r| r.expiry = start + 45).await;
        let req = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
        let got =
            fetch_paying(&conn, &mut send, req, |n| receipt(&s, BUYER, deal.id, n as u128 * PRICE)).await.unwrap();
        assert!(got > 0);
        open.push((conn, send, deal, ep, got));
    }
    let rpc = s.devnet.contracts(0);
    let _: () =
        alloy::providers::Provider::raw_request(rpc.provider(), "evm_setIntervalMining".into(), (2,)).await.unwrap();
    // every connection is closed at the margin, and every receipt redeemed before expiry
    for (conn, _, _, _, _) in &open {
        let code = match tokio::time::timeout(Duration::from_secs(60), conn.closed()).await.expect("closed") {
            ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("unexpected close: {other}"),
        };
        assert_eq!(code, codes::DEAL_EXPIRING as u64);
    }
    loop {
        if rpc.chain_time().await.unwrap() > start + 46 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, _, deal, _, got) in &open {
        let st = rpc.deal_state(deal.id).await.unwrap();
        assert_eq!(st.redeemed, U256::from(*got as u128 * PRICE), "deal {} lost its receipts", deal.id);
    }
    s.provider.shutdown().await;
}
