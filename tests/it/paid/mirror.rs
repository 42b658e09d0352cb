//! Mirrors: a provider buys a sold dataset (`bdc provider mirror <offer> --pay`), then sells it
//! with the vendor's royalty intact.

use super::*;

/// The vendor's provider sells a dataset; a mirror buys it through the CLI, verified into its
/// own provider store, and sells it on; a buyer of the mirror gets identical files, pays the
/// mirror exactly the bytes it verified, and the vendor's royalty is paid out of that.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_buys_a_sold_dataset_and_sells_it_with_the_vendors_royalty() {
    const MIRROR: usize = SQUATTER;
    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (keystore, deployment, pw) = chain_files(&devnet, PROVIDER, dir);
    let (mirror_keystore, _, mirror_pw) = chain_files(&devnet, MIRROR, dir);

    // the vendor's dataset, served and sold by PROVIDER
    let origin = dir.join("origin");
    random_file(&dir.join("ds/ticks.bin"), 3 << 20, 41);
    random_file(&dir.join("ds/sub/book.bin"), 300_000, 42);
    let mut store = ProviderStore::open(&origin.join("provider")).await.unwrap();
    let opts = PublishOptions { name: Some("ticks".into()), ..Default::default() };
    let rec = publish(&mut store, &dir.join("ds"), &opts, |_| {}).await.unwrap();
    store.shutdown().await;
    let root = B256::from(*rec.root.as_bytes());
    devnet.contracts(VENDOR).register_dataset(root, 1_000, B256::ZERO, 0).await.unwrap();
    let (mut seller, offer) = spawn_seller(&origin, &deployment, &keystore, &pw);

    // the mirror buys it: paid, verified, straight into its provider store
    let node = dir.join("mirror");
    let out = crate::common::bdc()
        .arg("--data-dir")
        .arg(&node)
        .args(["provider", "mirror", &offer.to_string(), "--pay", "--json", "--receipt-every", "128KiB"])
        .args(["--arbiter", "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "--deployment"])
        .arg(&deployment)
        .arg("--keystore")
        .arg(&mirror_keystore)
        .arg("--password-file")
        .arg(&mirror_pw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mirrored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mirrored["root"], rec.root.to_string());
    assert_eq!(mirrored["name"], "ticks", "the manifest's name");
    let (size, files, free) = (mirrored["size"].as_u64(), mirrored["files"].as_u64(), mirrored["free"].as_bool());
    assert_eq!((size, files, free), (Some(rec.size), Some(2), Some(false)), "as the origin published it");
    assert_eq!(mirrored["mirror"], true, "its market listings will say it is a mirror");
    let bought = bdc_fetcher::DealBook::load(&node.join("fetcher")).unwrap();
    assert_eq!(bought.deals.len(), 1, "the mirror paid for its copy");
    assert_eq!(bought.deals[0].paid, offer.size as u128 * PRICE);
    seller.kill().unwrap();
    seller.wait().unwrap();

    // the origin is gone; the mirror sells the dataset under the same root
    let (mut mirror, mirror_offer) = spawn_seller(&node, &deployment, &mirror_keystore, &mirror_pw);
    assert_eq!(mirror_offer.provider, devnet.address(MIRROR).into_array());
    let wallet = Wallet { chain: devnet.contracts(BUYER), signer: devnet.signer(BUYER) };
    let mut pay = PaidOptions::new(vec![devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    pay.deal_duration = Duration::from_secs(3_600);
    let fetcher = Fetcher::open(FetcherConfig::test(dir.join("buyer"))).await.unwrap();
    let got = dir.join("got");
    let r = fetcher.fetch_paid(&mirror_offer, &wallet, &got, &FetchOptions::default(), &pay, |_| {}).await.unwrap();
    for f in ["ticks.bin", "sub/book.bin"] {
        assert_eq!(std::fs::read(got.join(f)).unwrap(), std::fs::read(dir.join("ds").join(f)).unwrap(), "{f}");
    }
    assert_eq!(r.paid, r.fetch.fetched_bytes as u128 * PRICE);
    let deal = r.deal.unwrap();
    wait_redeemed(&devnet, deal, U256::from(r.paid)).await;
    let terms = bdc_fetcher::DealBook::load(&dir.join("buyer")).unwrap().get(&deal).unwrap().terms().unwrap();
    assert_eq!(
        (terms.provider, terms.vendor, terms.royaltyBps),
        (devnet.address(MIRROR), devnet.address(VENDOR), 1_000)
    );
    devnet.advance_time(61).await.unwrap();
    let (to_mirror, to_vendor) = devnet.contracts(MIRROR).withdraw(&terms).await.unwrap();
    assert_eq!(to_vendor, U256::from(r.paid / 10), "the vendor's 10% of what the mirror sold");
    assert_eq!(to_mirror + to_vendor, U256::from(r.paid));
    fetcher.shutdown().await;
    mirror.kill().unwrap();
    mirror.wait().unwrap();
}
