//! The market under abuse: listing floods from throwaway keys, and listings that would rewrite
//! a dataset's registered description.

use super::*;

/// Listing intake under abuse: throwaway keys cannot push honest offers out of a root, nobody
/// but the registered vendor rewrites a dataset's description, and one key cannot post without
/// bound.
#[tokio::test(flavor = "multi_thread")]
async fn listing_floods_and_rewrites_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}?mode=rwc", tmp.path().join("m.db").display());
    let devnet = Devnet::spawn_with(DevnetConfig::default()).await.unwrap();
    let (m_a, m_b) = (manifest("Honest ticks", &["btc"]), manifest("SCAM: send tokens to 0xbad", &["btc"]));
    let root = B256::repeat_byte(0x5a);
    // registered without a manifest hash: the market cannot check manifests against the chain
    devnet.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let intake = bdc_market::intake::IntakeLimits { burst: 5.0, per_minute: 6.0, per_root: 4, per_provider: 100 };
    let env = start_with(db_url, devnet, Limits { intake, ..Limits::default() }).await;
    env.synced().await;
    let devnet = &env.devnet;
    let t = now();
    let post = |who: &PrivateKeySigner, m: &str, at: u64| {
        let body = serde_json::to_string(&sign(devnet, who, listing(root, who, 1_000_000_000, "eu", at), m)).unwrap();
        let env = &env;
        async move { env.post("/listings", &body).await }
    };
    let name = || async { env.get(&format!("/datasets/{root:#x}")).await.1["name"].clone() };
    let honest = devnet.signer(PROVIDER);
    assert_eq!(post(&honest, &m_a, t).await.0, 201);
    // a stranger's listing cannot rewrite the description the first listing set
    let stranger = PrivateKeySigner::random();
    let (code, res) = post(&stranger, &m_b, t).await;
    assert_eq!(code, 422, "{res}");
    assert!(res["error"].as_str().unwrap().contains("registered vendor"), "{res}");
    assert_eq!(name().await, "Honest ticks");
    // the registered vendor's own listing may
    let vendor = devnet.signer(VENDOR);
    assert_eq!(post(&vendor, &m_b, t).await.0, 201);
    assert_eq!(name().await, "SCAM: send tokens to 0xbad", "the vendor's word replaces an unverified description");
    assert_eq!(post(&honest, &m_b, t + 1).await.0, 201, "listing with the pinned manifest is fine");
    // throwaway keys fill the root up to its bound, then are refused
    for _ in 0..2 {
        assert_eq!(post(&PrivateKeySigner::random(), &m_b, t).await.0, 201);
    }
    let (code, res) = post(&PrivateKeySigner::random(), &m_b, t).await;
    assert_eq!(code, 429, "{res}");
    assert!(res["error"].as_str().unwrap().contains("completed deal"), "{res}");
    let offers = env.get(&format!("/datasets/{root:#x}")).await.1["offers"].as_array().unwrap().len();
    assert_eq!(offers, 4, "the flood was bounded");
    // a provider with standing (a deal, and a buyer's throughput report) takes the place of the
    // oldest listing by a provider without
    let veteran = devnet.signer(4);
    let buyer = devnet.contracts(BUYER);
    let req = deal_request(devnet, veteran.address(), root).await;
    let deal = buyer.open_deal(devnet.address(BUYER), &req).await.unwrap();
    env.synced().await;
    // a report from a deal that paid nothing (a dust deal costs only gas) gives no standing
    let domain = market_domain(devnet.deployment.chain_id, devnet.deployment.registry);
    let report = SignedReport::sign(&devnet.signer(BUYER), &domain, deal.id, 4 << 20, 500, t).unwrap();
    assert_eq!(env.post("/reports", &serde_json::to_string(&report).unwrap()).await.0, 201);
    let (code, res) = post(&veteran, &m_b, t + 2).await;
    assert_eq!(code, 429, "a report from an unpaid deal: {res}");
    // a report counts once its deal paid a hundredth of the reputation unit
    let paid = U256::from(REPUTATION_UNIT / 100);
    let sig = sign_receipt_sync(&devnet.signer(BUYER), &devnet.contracts(4).domain(), deal.id, paid).unwrap();
    devnet.contracts(4).redeem(&deal.terms, paid, sig.as_bytes().into()).await.unwrap();
    env.synced().await;
    let (code, res) = post(&veteran, &m_b, t + 3).await;
    assert_eq!(code, 201, "{res}");
    let d = env.get(&format!("/datasets/{root:#x}")).await.1;
    let listed: Vec<String> =
        d["offers"].as_array().unwrap().iter().map(|o| o["provider"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed.len(), 4, "{d}");
    assert!(listed.contains(&format!("{:#x}", veteran.address())), "{d}");
    // one key posting as fast as it can is stopped at its burst
    let mut codes = Vec::new();
    for i in 0..8 {
        codes.push(post(&honest, &m_b, t + 10 + i).await.0);
    }
    assert!(codes.contains(&429) && codes.iter().filter(|c| **c == 201).count() <= 5, "{codes:?}");
    env.market.shutdown();
}
