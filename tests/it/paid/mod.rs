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

mod expiry;
mod flows;
mod mirror;
mod multi;
mod partial;
mod terms;

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

/// Account `who`'s chain files for the CLI under `dir/<who>`: its keystore, the deployment, and
/// a file holding the keystore's password.
fn chain_files(
    devnet: &Devnet,
    who: usize,
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = dir.join(format!("account-{who}"));
    let (keystore, deployment) = crate::common::buyer_chain_files(devnet, who, &dir);
    let pw = dir.join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    (keystore, deployment, pw)
}
