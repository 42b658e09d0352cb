//! Market against a real anvil devnet and a real HTTP server on 127.0.0.1, on SQLite and (when
//! `BDC_TEST_POSTGRES_URL` is set, as `make test` does) on Postgres: one suite for both.

use std::time::Duration;

use alloy::{
    primitives::{B256, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use bdc_contracts::{Devnet, DevnetConfig, client::OpenDeal, listing::market_domain, receipt::sign_receipt_sync};
use bdc_market::{Limits, ListingBody, SignedListing};
use bdc_market_api::{SignedFault, SignedReport};
use serde_json::{Value, json};

mod abuse;
mod env;

use env::*;

const VENDOR: usize = 1;

const BUYER: usize = 2;

const PROVIDER: usize = 3;

fn manifest(name: &str, tags: &[&str]) -> String {
    json!({
        "version": 1,
        "name": name,
        "description": "tick-level trades from a crypto exchange",
        "tags": tags,
        "files": [{"name": "trades.parquet", "size": 4096, "hash": blake3::hash(name.as_bytes()).to_hex().to_string(), "media_type": "application/vnd.apache.parquet",
                   "columns": [{"name": "ts", "type": "Int64"}, {"name": "vwap", "type": "Float64"}]}]
    })
    .to_string()
}

/// A CEL list literal of `n` integers.
fn big_list(n: usize) -> String {
    format!("[{}]", (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(","))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The arbiter every test listing names.
const REPUTATION_UNIT: u128 = 10_000_000;

const ARBITER_ADDR: &str = "0x00000000000000000000000000000000000000a1";

fn listing(root: B256, provider: &PrivateKeySigner, price_per_byte: u128, region: &str, issued_at: u64) -> ListingBody {
    ListingBody {
        dataset_root: root,
        provider: provider.address(),
        provider_node_id: B256::repeat_byte(7),
        price_per_byte: price_per_byte.into(),
        window: 8 << 20,
        size: 3 << 20,
        mirror: false,
        addrs: vec!["127.0.0.1:4433".into()],
        region: region.into(),
        capacity_mibps: 200,
        arbiters: vec![ARBITER_ADDR.parse().unwrap()],
        issued_at,
        expires_at: issued_at + 3600,
    }
}

fn sign(devnet: &Devnet, signer: &PrivateKeySigner, body: ListingBody, manifest: &str) -> SignedListing {
    let d = &devnet.deployment;
    SignedListing::sign(signer, &market_domain(d.chain_id, d.registry), body, manifest.to_string()).unwrap()
}

/// A deal of the buyer with `provider` for `root`: 1 unit a byte, 10,000,000 at most, an hour.
async fn deal_request(devnet: &Devnet, provider: alloy::primitives::Address, root: B256) -> OpenDeal {
    OpenDeal {
        provider,
        provider_node_id: B256::repeat_byte(7),
        dataset_root: root,
        price_per_byte: 1,
        max_amount: U256::from(10_000_000u64),
        window: 1 << 20,
        expiry: devnet.now().await.unwrap() + 3600,
        arbiter: devnet.address(0),
    }
}

async fn suite(db_url: String) {
    let devnet = Devnet::spawn_with(DevnetConfig::default()).await.unwrap();
    let vendor = devnet.contracts(VENDOR);
    let m_btc = manifest("BTC-USD trades 2024", &["btc", "trades"]);
    let m_eth = manifest("ETH-USD order book", &["eth", "book"]);
    let root_btc = B256::repeat_byte(0xb1);
    let root_eth = B256::repeat_byte(0xe1);
    let root_unreg = B256::repeat_byte(0x99);
    let hash = |m: &str| B256::from(*blake3::hash(m.as_bytes()).as_bytes());
    vendor.register_dataset(root_btc, 500, hash(&m_btc), 0).await.unwrap();
    vendor.register_dataset(root_eth, 0, B256::ZERO, 0).await.unwrap();
    let env = start(db_url.clone(), devnet).await;
    let devnet = &env.devnet;
    let provider = devnet.signer(PROVIDER);
    let t = now();

    // listings: accepted, searchable
    let good = sign(devnet, &provider, listing(root_btc, &provider, 1_000_000_000, "eu", t), &m_btc);
    let (code, body) = env.post("/listings", &serde_json::to_string(&good).unwrap()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["manifest_verified"], true);
    let eth = sign(devnet, &provider, listing(root_eth, &provider, 3_000_000_000, "us", t), &m_eth);
    assert_eq!(env.post("/listings", &serde_json::to_string(&eth).unwrap()).await.0, 201);
    let other = devnet.signer(4);
    // a mirror of the BTC dataset: its listing says so (signed), and so do the market's answers
    let cheap =
        sign(devnet, &other, ListingBody { mirror: true, ..listing(root_btc, &other, 500_000_000, "us", t) }, &m_btc);
    assert_eq!(env.post("/listings", &serde_json::to_string(&cheap).unwrap()).await.0, 201);

    let (code, res) = env.get("/datasets?q=btc%20trad").await;
    assert_eq!(code, 200);
    let items = res["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{res}");
    assert_eq!(items[0]["root"], format!("{root_btc:#x}"));
    assert_eq!(items[0]["offers"], 2);
    assert_eq!(env.get("/datasets?q=parquet").await.1["items"].as_array().unwrap().len(), 2, "file names are indexed");
    assert_eq!(env.get("/datasets?tag=book").await.1["items"][0]["root"], format!("{root_eth:#x}"));
    assert!(env.get("/datasets?q=solana").await.1["items"].as_array().unwrap().is_empty());
    assert_eq!(env.get("/datasets?q=vwap").await.1["items"].as_array().unwrap().len(), 2, "schema columns are indexed");
    let cheap_only = env.get("/datasets?max_price_gib=2").await.1;
    assert_eq!(cheap_only["items"].as_array().unwrap().len(), 1, "ETH is offered at 3.2 BDC/GiB only: {cheap_only}");
    let page = env.get("/datasets?limit=1").await.1;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["more"], true);
    let page2 = env.get("/datasets?limit=1&offset=1").await.1;
    assert_ne!(page["items"][0]["root"], page2["items"][0]["root"]);
    assert_eq!(page2["more"], false);
    // keyset pagination continues where the page stopped
    let next = page["next"].as_str().expect("a next cursor while more").to_string();
    assert_eq!(env.get(&format!("/datasets?limit=1&after={next}")).await.1["items"], page2["items"]);
    assert_eq!(env.get(&format!("/datasets?after={root_unreg:#x}")).await.0, 400);
    // a prefix expanding to a few terms is walked term by term and merged; one expanding to
    // more than MAX_WALKS terms is collected and sorted; both find the dataset once
    let many: Vec<String> = (0..40).map(|i| format!("zz{i:02}")).collect();
    let m_zz = json!({"version": 1, "name": "ZZ ticks", "description": many.join(" "), "files": []}).to_string();
    let root_zz = B256::repeat_byte(0x22);
    devnet.contracts(VENDOR).register_dataset(root_zz, 0, B256::ZERO, 0).await.unwrap();
    env.synced().await;
    let zz = sign(devnet, &provider, listing(root_zz, &provider, 1_000_000_000, "eu", t), &m_zz);
    assert_eq!(env.post("/listings", &serde_json::to_string(&zz).unwrap()).await.0, 201);
    for q in ["zz", "zz0", "zz3%20ticks", "zz39"] {
        let items = env.get(&format!("/datasets?q={q}")).await.1["items"].clone();
        assert_eq!(items.as_array().map(Vec::len), Some(1), "{q}: {items}");
        assert_eq!(items[0]["root"], format!("{root_zz:#x}"), "{q}");
    }
    assert!(env.get("/datasets?q=zz%20btc").await.1["items"].as_array().unwrap().is_empty());
    assert_eq!(env.get("/datasets?q=zz&max_price_gib=0.5").await.1["items"].as_array().unwrap().len(), 0);

    let (code, d) = env.get(&format!("/datasets/{root_btc:#x}")).await;
    assert_eq!(code, 200);
    assert_eq!(d["offers"].as_array().unwrap().len(), 2);
    assert_eq!(d["offers"][0]["provider"], format!("{:#x}", other.address()), "cheapest first");
    assert_eq!((&d["offers"][0]["mirror"], &d["offers"][1]["mirror"]), (&json!(true), &json!(false)), "{d}");
    let (code, m) = env.post("/match", &json!({"root": format!("{root_btc:#x}")}).to_string()).await;
    assert_eq!(code, 200, "{m}");
    let mirrored: Vec<&Value> =
        m["offers"].as_array().unwrap().iter().filter(|o| o["listing"]["mirror"] == true).collect();
    assert_eq!(mirrored.len(), 1, "{m}");
    let back = SignedListing {
        listing: serde_json::from_value(mirrored[0]["listing"].clone()).unwrap(),
        manifest: String::new(),
        signature: serde_json::from_value(mirrored[0]["signature"].clone()).unwrap(),
    };
    let domain = market_domain(devnet.deployment.chain_id, devnet.deployment.registry);
    assert_eq!(back.signer(&domain).unwrap(), other.address(), "the flag is the provider's signed word");
    assert_eq!(d["files"][0]["name"], "trades.parquet");
    assert_eq!(d["files"][0]["columns"][1], json!({"name": "vwap", "type": "Float64"}));

    // bad input: each a 4xx with a message
    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed JSON", "{\"listing\": ".into(), 400),
        ("missing field", json!({"listing": {}}).to_string(), 400),
        (
            "bad signature",
            {
                let mut s = sign(devnet, &other, listing(root_eth, &provider, 1, "eu", t), &m_eth);
                s.listing.issued_at += 1; // signed fields no longer match
                serde_json::to_string(&s).unwrap()
            },
            401,
        ),
        (
            "signed by someone else",
            serde_json::to_string(&sign(devnet, &other, listing(root_eth, &provider, 1, "eu", t + 5), &m_eth)).unwrap(),
            401,
        ),
        (
            "unknown root",
            serde_json::to_string(&sign(devnet, &provider, listing(root_unreg, &provider, 1, "eu", t), &m_eth))
                .unwrap(),
            422,
        ),
        (
            "manifest not the registered one",
            serde_json::to_string(&sign(devnet, &provider, listing(root_btc, &provider, 1, "eu", t + 9), &m_eth))
                .unwrap(),
            422,
        ),
        ("stale", serde_json::to_string(&good).unwrap(), 409),
        (
            "expired",
            {
                let mut l = listing(root_btc, &provider, 1, "eu", t - 7200);
                l.expires_at = t - 10;
                serde_json::to_string(&sign(devnet, &provider, l, &m_btc)).unwrap()
            },
            400,
        ),
        (
            "bad address",
            {
                let mut l = listing(root_btc, &provider, 1, "eu", t + 20);
                l.addrs = vec!["not-an-address".into()];
                serde_json::to_string(&sign(devnet, &provider, l, &m_btc)).unwrap()
            },
            400,
        ),
        (
            "no arbiter",
            {
                let mut l = listing(root_btc, &provider, 1, "eu", t + 20);
                l.arbiters.clear();
                serde_json::to_string(&sign(devnet, &provider, l, &m_btc)).unwrap()
            },
            400,
        ),
        (
            "window past 2^63 (stored as BIGINT, it would read back negative)",
            {
                let mut l = listing(root_btc, &provider, 1, "eu", t + 20);
                l.window = 1 << 63;
                serde_json::to_string(&sign(devnet, &provider, l, &m_btc)).unwrap()
            },
            400,
        ),
        (
            "squatted: the manifest names another vendor than the registry",
            {
                let mut m: Value = serde_json::from_str(&m_eth).unwrap();
                m["vendor"] = json!(format!("{:#x}", devnet.address(BUYER)));
                let l = listing(root_eth, &provider, 1, "eu", t + 20);
                serde_json::to_string(&sign(devnet, &provider, l, &m.to_string())).unwrap()
            },
            422,
        ),
        ("oversized body", format!("{{\"pad\": \"{}\"}}", "x".repeat(200_000)), 413),
    ];
    for (what, body, want) in cases {
        let (code, res) = env.post("/listings", &body).await;
        assert_eq!(code, want, "{what}: {res}");
        if code != 413 {
            assert!(res["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: message in {res}");
        }
    }
    for (path, want) in [
        ("/datasets/0x12", 400),
        (&format!("/datasets/{root_unreg:#x}") as &str, 404),
        ("/datasets?limit=0", 400),
        ("/datasets?limit=abc", 400),
        ("/datasets?vendor=nope", 400),
        ("/providers/0x1234", 400),
        ("/deals/0x00", 400),
        ("/nope", 404),
    ] {
        let (code, res) = env.get(path).await;
        assert_eq!(code, want, "{path}: {res}");
        assert!(res["error"].as_str().is_some(), "{path}: {res}");
    }

    // matchmaking: explainable, CEL-ranked
    let req = json!({
        "root": format!("{root_btc:#x}"),
        "require": "capacity_mibps >= 100.0",
        "rank": {"cheap": "-1.0 * price_gib", "eu": "region == 'eu' ? 1.0 : 0.0"}
    });
    let (code, res) = env.post("/match", &req.to_string()).await;
    assert_eq!(code, 200, "{res}");
    let offers = res["offers"].as_array().unwrap();
    assert_eq!(offers.len(), 2);
    // eu provider: -1.07 + 1 = -0.07; us provider: -0.54 + 0 → the eu one wins on the region bonus
    assert_eq!(offers[0]["provider"], format!("{:#x}", provider.address()), "{res}");
    assert_eq!(offers[0]["criteria"]["eu"], 1.0);
    let sum = offers[0]["criteria"]["cheap"].as_f64().unwrap() + 1.0;
    assert!((offers[0]["score"].as_f64().unwrap() - sum).abs() < 1e-9);
    let only_us = json!({"require": "region == 'us'", "rank": {"r": "reputation"}});
    assert_eq!(env.post("/match", &only_us.to_string()).await.1["offers"].as_array().unwrap().len(), 2);
    // a listing replaced after the offer book was loaded is matched on its new terms at once
    let cheapest = json!({"root": format!("{root_btc:#x}"), "rank": {"cheap": "-1.0 * price_gib"}});
    let top = |res: Value| res["offers"][0]["provider"].clone();
    assert_eq!(top(env.post("/match", &cheapest.to_string()).await.1), format!("{:#x}", other.address()));
    let dearer = sign(devnet, &other, listing(root_btc, &other, 5_000_000_000, "eu", t + 10), &m_btc);
    assert_eq!(env.post("/listings", &serde_json::to_string(&dearer).unwrap()).await.0, 201);
    let res = env.post("/match", &cheapest.to_string()).await.1;
    assert_eq!(top(res.clone()), format!("{:#x}", provider.address()), "{res}");
    assert_eq!(res["offers"][1]["price_per_byte"], "5000000000", "{res}");
    assert_eq!(res["offers"][1]["listing"]["issued_at"], t + 10);
    let us = env.post("/match", &only_us.to_string()).await.1;
    assert_eq!(us["offers"].as_array().unwrap().len(), 1, "the relisted offer left region us: {us}");
    for (what, body) in [
        ("does not parse", json!({"rank": {"x": "price_gib +"}})),
        ("wrong type", json!({"require": "price_gib"})),
        ("unknown attribute", json!({"rank": {"x": "secret_key"}})),
        ("runaway", json!({"rank": {"x": "[1,2,3].map(a, [1,2,3].map(b, a*b))".repeat(40)}})),
        ("nested comprehensions", json!({"require": format!("{0}.all(a, {0}.all(b, a + b > 0))", big_list(150))})),
        ("comprehension over a number (crashed the evaluator)", json!({"require": "price_gib.all(x, x > 0.0)"})),
        ("over the cost budget", json!({"require": format!("{}.all(a, a * a * a * a * a * a >= 0)", big_list(250))})),
        ("unknown field", json!({"sql": "DROP TABLE listings"})),
    ] {
        let (code, res) = env.post("/match", &body.to_string()).await;
        assert_eq!(code, 400, "{what}: {res}");
        assert!(res["error"].as_str().is_some(), "{what}: {res}");
    }

    // deals and reputation from chain events
    let buyer = devnet.contracts(BUYER);
    let req = deal_request(devnet, provider.address(), root_btc).await;
    let deal = buyer.open_deal(devnet.address(BUYER), &req).await.unwrap();
    let p = devnet.contracts(PROVIDER);
    for amount in [2_000_000u64, 5_000_000] {
        let sig = sign_receipt_sync(&devnet.signer(BUYER), &p.domain(), deal.id, U256::from(amount)).unwrap();
        p.redeem(&deal.terms, U256::from(amount), sig.as_bytes().into()).await.unwrap();
    }
    env.synced().await;
    let (code, d) = env.get(&format!("/deals/{:#x}", deal.id)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["redeemed"], "5000000");
    assert_eq!(d["state"], "open");
    assert_eq!(d["redemptions"].as_array().unwrap().len(), 2);
    assert_eq!(d["buyer_escrowed_unspent"], "5000000");
    assert_eq!(d["provider_at_risk"], (1u64 << 20).to_string(), "the window, not the rest of the deposit");
    // throughput reports: signed by the deal's buyer, bounded by what the deal can pay for,
    // newest per deal
    let domain = market_domain(devnet.deployment.chain_id, devnet.deployment.registry);
    let report = |who: usize, deal_id: B256, bytes: u64, at: u64| {
        serde_json::to_string(&SignedReport::sign(&devnet.signer(who), &domain, deal_id, bytes, 500, at).unwrap())
            .unwrap()
    };
    let (code, res) = env.post("/reports", &report(BUYER, deal.id, 4 << 20, t)).await;
    assert_eq!(code, 201, "{res}");
    assert_eq!(res["mibps"], 8.0);
    for (what, body, want) in [
        ("not the buyer", report(PROVIDER, deal.id, 4 << 20, t + 1), 401),
        ("more than the deal pays for", report(BUYER, deal.id, 20_000_000, t + 1), 422),
        ("unknown deal", report(BUYER, B256::repeat_byte(3), 1, t + 1), 422),
        ("older than the stored one", report(BUYER, deal.id, 1 << 20, t - 10), 409),
        ("within a minute of the stored one", report(BUYER, deal.id, 1 << 20, t + 30), 409),
        ("from last week", report(BUYER, deal.id, 1 << 20, t - 7 * 86_400), 400),
        ("from the end of time", report(BUYER, deal.id, 1 << 20, u64::MAX), 400),
        ("malformed", "{\"deal_id\": 5}".to_string(), 400),
    ] {
        let (code, res) = env.post("/reports", &body).await;
        assert_eq!(code, want, "{what}: {res}");
        assert!(res["error"].as_str().is_some(), "{what}: {res}");
    }
    let (code, pr) = env.get(&format!("/providers/{:#x}", provider.address())).await;
    assert_eq!(code, 200, "{pr}");
    assert_eq!(pr["reputation"]["deals"], 1);
    assert_eq!(pr["reputation"]["bytes_redeemed"], 5_000_000);
    assert_eq!(pr["reputation"]["throughput_mibps"], 8.0);
    assert_eq!(pr["reputation"]["throughput_buyers"], 1);
    assert_eq!(pr["reputation"]["faults_reported"], 0);
    // fault reports: the deal's buyer says bytes did not verify; one per deal, shown, not scored
    let fault = |who: usize, deal_id: B256, at: u64| {
        serde_json::to_string(&SignedFault::sign(&devnet.signer(who), &domain, deal_id, 1 << 20, at).unwrap()).unwrap()
    };
    for (what, body, want) in [
        ("not the buyer", fault(PROVIDER, deal.id, t), 401),
        ("unknown deal", fault(BUYER, B256::repeat_byte(3), t), 422),
        ("from last week", fault(BUYER, deal.id, t - 7 * 86_400), 400),
        ("from the end of time", fault(BUYER, deal.id, u64::MAX), 400),
        ("the buyer's", fault(BUYER, deal.id, t), 201),
        ("a second one for the same deal", fault(BUYER, deal.id, t + 1), 409),
    ] {
        let (code, res) = env.post("/faults", &body).await;
        assert_eq!(code, want, "{what}: {res}");
    }
    // the same buyer again, on a second paying deal: still one buyer's claim
    let deal2 = buyer
        .open_deal(devnet.address(BUYER), &deal_request(devnet, provider.address(), root_btc).await)
        .await
        .unwrap();
    let sig = sign_receipt_sync(&devnet.signer(BUYER), &p.domain(), deal2.id, U256::from(5_000_000u64)).unwrap();
    p.redeem(&deal2.terms, U256::from(5_000_000u64), sig.as_bytes().into()).await.unwrap();
    env.synced().await;
    assert_eq!(env.post("/faults", &fault(BUYER, deal2.id, t)).await.0, 201);
    let (_, after) = env.get(&format!("/providers/{:#x}", provider.address())).await;
    assert_eq!(after["reputation"]["faults_reported"], 1, "one buyer, however many deals: {after}");
    assert_eq!(after["reputation"]["score"], pr["reputation"]["score"], "an unchecked claim moves no score");
    let fast = json!({"root": format!("{root_btc:#x}"), "rank": {"speed": "throughput_mibps"}});
    let offers = env.post("/match", &fast.to_string()).await.1["offers"].clone();
    assert_eq!(offers[0]["provider"], format!("{:#x}", provider.address()), "measured speed ranks: {offers}");
    assert_eq!(offers[0]["criteria"]["speed"], 8.0);

    // web pages render what the API says, escaped
    for path in [
        "/?q=btc".to_string(),
        format!("/ui/datasets/{root_btc:#x}"),
        format!("/ui/providers/{:#x}", provider.address()),
        format!("/ui/deals/{:#x}", deal.id),
    ] {
        let r = env.http.get(format!("{}{path}", env.base)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let html = r.text().await.unwrap();
        assert!(html.to_ascii_lowercase().starts_with("<!doctype html>"), "{path}");
        if path.starts_with("/?") {
            assert!(html.contains("BTC-USD trades 2024") && !html.contains("ETH-USD"), "{path}");
        }
    }

    // openapi lists every API route; metrics count requests
    let (_, doc) = env.get("/openapi.json").await;
    for path in [
        "/datasets",
        "/datasets/{root}",
        "/providers/{id}",
        "/deals/{id}",
        "/listings",
        "/reports",
        "/faults",
        "/match",
        "/status",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from openapi.json");
    }
    let metrics = env.http.get(format!("{}/metrics", env.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("bdc_market_requests_total{route=\"/listings\",status=\"201\"} 5"), "{metrics}");
    assert!(metrics.contains("bdc_market_listings 4"), "{metrics}");

    // reorg: a registration that the chain forgets disappears from the index
    let rpc = devnet.contracts(0);
    let snap: U256 = rpc.provider().raw_request("evm_snapshot".into(), ()).await.unwrap();
    let root_fork = B256::repeat_byte(0xf0);
    vendor.register_dataset(root_fork, 0, B256::ZERO, 0).await.unwrap();
    env.synced().await;
    assert_eq!(env.get(&format!("/datasets/{root_fork:#x}")).await.0, 200);
    let _: bool = rpc.provider().raw_request("evm_revert".into(), (snap,)).await.unwrap();
    // the new branch is longer than the old one
    let _: Value = rpc.provider().raw_request("anvil_mine".into(), (U256::from(3),)).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if env.get(&format!("/datasets/{root_fork:#x}")).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the reorged registration is still indexed");
    env.synced().await;
    assert_eq!(env.get(&format!("/deals/{:#x}", deal.id)).await.1["redeemed"], "5000000", "rebuilt from events");

    // restart on the same database: nothing indexed twice, listings kept
    let Env { devnet, market, .. } = env;
    market.shutdown();
    let env = start(db_url.clone(), devnet).await;
    env.synced().await;
    let d = env.get(&format!("/deals/{:#x}", deal.id)).await.1;
    assert_eq!(d["redemptions"].as_array().unwrap().len(), 2, "{d}");
    let offers = env.get(&format!("/datasets/{root_btc:#x}")).await.1["offers"].clone();
    assert_eq!(offers.as_array().unwrap().len(), 2);
    assert_eq!(offers[0]["arbiters"], json!([ARBITER_ADDR]), "listings carry the arbiters the provider accepts");

    // outcomes from real escrow events: a buyer reclaiming its deposit slack after a completed
    // deal leaves it completed; a withdraw after a lost dispute leaves the loss on the record
    let devnet = &env.devnet;
    let (buyer, p) = (devnet.contracts(BUYER), devnet.contracts(PROVIDER));
    let second = buyer
        .open_deal(devnet.address(BUYER), &OpenDeal { expiry: devnet.now().await.unwrap() + 3600, ..req.clone() })
        .await
        .unwrap();
    let redeem = |d: &bdc_contracts::Deal, amount: u64| {
        let sig = sign_receipt_sync(&devnet.signer(BUYER), &p.domain(), d.id, U256::from(amount)).unwrap();
        let (p, terms) = (p.clone(), d.terms.clone());
        async move { p.redeem(&terms, U256::from(amount), sig.as_bytes().into()).await.unwrap() }
    };
    redeem(&second, 1_000).await;
    buyer.dispute(devnet.address(BUYER), &second.terms, B256::repeat_byte(0xee)).await.unwrap();
    devnet.contracts(0).resolve(&second.terms, U256::from(1_000), true).await.unwrap();
    redeem(&second, 3_000).await;
    devnet.advance_time(61).await.unwrap();
    p.withdraw(&deal.terms).await.unwrap();
    p.withdraw(&second.terms).await.unwrap();
    devnet.advance_time(3_600).await.unwrap();
    assert_eq!(buyer.refund(&deal.terms).await.unwrap(), U256::from(5_000_000u64));
    buyer.refund(&second.terms).await.unwrap();
    env.synced().await;
    assert_eq!(env.get(&format!("/deals/{:#x}", deal.id)).await.1["state"], "completed", "the refund of the slack");
    // the disputed deal shows the evidence committed, the arbiter's deadline, and the page says so
    let d2 = env.get(&format!("/deals/{:#x}", second.id)).await.1;
    assert_eq!(d2["dispute"]["evidence"], format!("{:#x}", B256::repeat_byte(0xee)), "{d2}");
    assert!(
        d2["dispute"]["rule_by"].as_i64().unwrap() > 0 && d2["arbiter"] == format!("{:#x}", devnet.address(0)),
        "{d2}"
    );
    let html =
        env.http.get(format!("{}/ui/deals/{:#x}", env.base, second.id)).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("id=\"dispute\"") && html.contains("rules by"), "{html}");
    assert!(env.get(&format!("/deals/{:#x}", deal.id)).await.1["dispute"].is_null(), "never disputed");
    let pr = env.get(&format!("/providers/{:#x}", provider.address())).await.1;
    assert_eq!(pr["reputation"]["completed"], 1, "{pr}");
    assert_eq!(pr["reputation"]["disputes_lost"], 1, "{pr}");
    assert_eq!(pr["reputation"]["failed"], 0, "{pr}");
    // weighed: the buyer paid half a unit on its completed deal; the arbiter that ruled is trusted
    assert_eq!(pr["reputation"]["paying_buyers"], 1, "{pr}");
    assert_eq!(pr["reputation"]["weighed"]["completed"], 0.5, "{pr}");
    assert_eq!(pr["reputation"]["weighed"]["disputes_lost"], 1.0, "{pr}");
    let expect = bdc_market::reputation::Weighed { completed: 0.5, disputes_lost: 1.0 }.score();
    assert_eq!(pr["reputation"]["score"].as_f64(), Some(expect), "{pr}");
    // a market that indexed these deals before it kept their arbiters (migration 0006): at start
    // it reads them back from the chain, so the lost dispute is not erased (also on a rebuild)
    let pool = &env.market.db.pool;
    sqlx::query("UPDATE deals SET arbiter = ''").execute(pool).await.unwrap();
    for r in sqlx::query("SELECT block, log_index, body FROM events WHERE kind = 'deal_opened'")
        .fetch_all(pool)
        .await
        .unwrap()
    {
        use sqlx::Row;
        let mut body: Value = serde_json::from_str(&r.get::<String, _>(2)).unwrap();
        body.as_object_mut().unwrap().remove("arbiter");
        sqlx::query("UPDATE events SET body = $3 WHERE block = $1 AND log_index = $2")
            .bind(r.get::<i64, _>(0))
            .bind(r.get::<i64, _>(1))
            .bind(body.to_string())
            .execute(pool)
            .await
            .unwrap();
    }
    let lost = |pr: &Value| pr["reputation"]["weighed"]["disputes_lost"].as_f64();
    assert_eq!(lost(&env.get(&format!("/providers/{:#x}", provider.address())).await.1), Some(0.0), "erased");
    let Env { devnet, market, .. } = env;
    market.shutdown();
    let env = start(db_url.clone(), devnet).await;
    env.synced().await;
    assert_eq!(lost(&env.get(&format!("/providers/{:#x}", provider.address())).await.1), Some(1.0), "read back");
    env.market.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn market_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(format!("sqlite://{}?mode=rwc", dir.path().join("market.db").display())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn market_on_postgres() {
    let Ok(url) = std::env::var("BDC_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("BDC_REQUIRE_POSTGRES").is_none(),
            "BDC_REQUIRE_POSTGRES set but no BDC_TEST_POSTGRES_URL"
        );
        eprintln!("skipped: set BDC_TEST_POSTGRES_URL (make test does)");
        return;
    };
    // a fresh database per run
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let name = format!("bdc_test_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    suite(format!("{base}/{name}")).await;
}
