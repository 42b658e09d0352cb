//! What a deal must agree to before a byte is sent: signature forms the escrow redeems, the
//! arbiter, the vendor and royalty, and what a GET may read.

use bdc_core::ticket::BlobTicket;
use iroh_blobs::BlobFormat;

use super::*;

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

/// A hostile provider (here: one that serves without any check) sells a root a squatter
/// registered first: the deal pays the squatter's royalty. The dataset's own manifest, covered
/// by the root, names the real vendor: the buyer reads it first and stops, paying for the
/// manifest only, and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_stops_at_the_manifest_of_a_squatted_root() {
    let s = setup(64 << 10).await;
    // the hostile provider's own copy of the squatted dataset (same bytes, same root)
    let mut store = ProviderStore::open(&s.dir.join("hostile")).await.unwrap();
    let vendored = PublishOptions { vendor: Some(format!("{:#x}", s.devnet.address(VENDOR))), ..Default::default() };
    let root = publish(&mut store, &s.dir.join("vendored"), &vendored, |_| {}).await.unwrap().root;
    assert_eq!(root, s.squatted);
    let blobs: iroh_blobs::api::Store = store.blobs().clone().into();
    let ep = bdc_core::net::bind_endpoint(
        &bdc_core::net::NetConfig::test(),
        iroh::SecretKey::generate(),
        vec![bdc_core::protocol::PAID_ALPN.to_vec()],
    )
    .await
    .unwrap();
    let router = iroh::protocol::Router::builder(ep.clone())
        .accept(bdc_core::protocol::PAID_ALPN, Unchecked { store: blobs })
        .spawn();
    let ticket = BlobTicket::new(bdc_core::net::dialable_addr(&ep), root, BlobFormat::HashSeq);
    let offer = Offer { ticket: ticket.to_string(), ..s.offer.clone() };
    let buyer = s.devnet.contracts(BUYER);
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 16 << 10;
    let wallet = Wallet { chain: buyer.clone(), signer: s.devnet.signer(BUYER) };
    let out = s.dir.join("out-squatted");
    let err = fetcher.fetch_paid(&offer, &wallet, &out, &FetchOptions::default(), &pay, |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Paid(PaidError::VendorMismatch { registered, .. }) if *registered == s.devnet.address(SQUATTER)),
        "{err}"
    );
    assert!(!out.join("data.bin").exists(), "nothing exported");
    // it paid for the probe and the manifest, never for the 20 KB file
    let book = bdc_fetcher::DealBook::load(&s.dir.join("buyer")).unwrap();
    let deal = book.deals.iter().find(|d| d.root == root).expect("a deal was opened");
    assert!(deal.paid < 20_000 * PRICE, "paid {} for bytes it never wanted", deal.paid);
    fetcher.shutdown().await;
    router.shutdown().await.unwrap();
    store.shutdown().await;
    s.provider.shutdown().await;
}

/// Serves `bdc/paid/1` GETs without a gate or any check of the deal (a provider that does not
/// care whom the deal pays), and ignores the Hello and receipts.
#[derive(Debug, Clone)]
struct Unchecked {
    store: iroh_blobs::api::Store,
}

impl iroh::protocol::ProtocolHandler for Unchecked {
    async fn accept(&self, conn: Connection) -> Result<(), iroh::protocol::AcceptError> {
        let control = conn.clone();
        tokio::spawn(async move {
            if let Ok(mut recv) = control.accept_uni().await {
                let _ = recv.read_to_end(1 << 20).await;
            }
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            let pair = iroh_blobs::provider::StreamPair::new(
                conn.stable_id() as u64,
                recv,
                send,
                iroh_blobs::provider::events::EventSender::DEFAULT,
            );
            tokio::spawn(iroh_blobs::provider::handle_stream(pair, self.store.clone()));
        }
        Ok(())
    }
}
