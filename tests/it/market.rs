//! A selling provider announces its datasets to a market: signed listings land, searchable, with
//! the manifest verified against the hash the vendor registered.

use std::time::Duration;

use alloy::primitives::B256;
use bdc_contracts::{Devnet, DevnetConfig};
use bdc_market::{Limits, Market, MarketConfig};
use bdc_provider::{Announce, PaidConfig, PaidSetup, Provider, ProviderStore, PublishOptions, ServeConfig, publish};

use crate::common::{bdc, buyer_chain_files, random_file};

#[tokio::test(flavor = "multi_thread")]
async fn a_selling_provider_announces_signed_listings_to_the_market() {
    let devnet = Devnet::spawn_with(DevnetConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    random_file(&dir.join("ds/trades.csv"), 64 << 10, 5);
    std::fs::write(dir.join("ds/quotes.csv"), "ts,bid,ask\n1,100.5,100.7\n2,100.4,100.6\n").unwrap();
    let mut store = ProviderStore::open(&dir.join("provider")).await.unwrap();
    let opts = PublishOptions { name: Some("kaiko BTC trades".into()), tags: vec!["btc".into()], ..Default::default() };
    let rec = publish(&mut store, &dir.join("ds"), &opts, |_| {}).await.unwrap();
    store.shutdown().await;

    let setup = PaidSetup {
        cfg: PaidConfig { arbiters: vec![devnet.address(0)], ..Default::default() },
        chain: devnet.contracts(3),
        address: devnet.address(3),
    };
    let store = ProviderStore::open(&dir.join("provider")).await.unwrap();
    let provider = Provider::spawn(store, ServeConfig { paid: Some(setup), ..ServeConfig::test() }).await.unwrap();
    let market = Market::spawn(
        MarketConfig {
            database_url: format!("sqlite://{}?mode=rwc", dir.join("market.db").display()),
            bind: "127.0.0.1:0".parse().unwrap(),
            poll: Duration::from_millis(100),
            limits: Limits::default(),
            // this dataset costs a few thousandths of a BDC: a smaller unit than the default 1 BDC,
            // so the buyer's deal pays the hundredth of it a throughput report needs to count
            reputation: bdc_market::reputation::Weights::new(10u128.pow(15), [devnet.address(0)]),
        },
        devnet.contracts(0),
    )
    .await
    .unwrap();
    let ann = Announce {
        market: format!("http://{}", market.addr),
        signer: devnet.signer(3),
        region: "eu".into(),
        capacity_mibps: 50,
        ttl: Duration::from_secs(600),
    };

    // not registered yet: the market refuses, and the error says why
    let err = bdc_provider::announce_once(&provider, &ann).await.unwrap_err().to_string();
    assert!(err.contains("not registered"), "{err}");

    // the vendor registers the root with the manifest's hash
    let listings = provider.listings(&ann).await.unwrap();
    assert_eq!(listings.len(), 1);
    assert!(!listings[0].listing.mirror, "published here, not mirrored");
    let manifest_hash = B256::from(*blake3::hash(listings[0].manifest.as_bytes()).as_bytes());
    // what `bdc dataset register` reads from the store by default
    let stored = provider.store().manifest_hash(rec.root).await.unwrap().expect("a collection has a manifest");
    assert_eq!(B256::from(*stored.as_bytes()), manifest_hash);
    let root = B256::from(*rec.root.as_bytes());
    devnet.contracts(1).register_dataset(root, 100, manifest_hash, 0).await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(crate::common::announce_when_indexed(&provider, &ann).await, Ok(1));
    let d: serde_json::Value =
        http.get(format!("{}/datasets/{root:#x}", ann.market)).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["name"], "kaiko BTC trades");
    assert_eq!(d["manifest_verified"], true, "{d}");
    assert_eq!(d["offers"][0]["provider"], format!("{:#x}", devnet.address(3)));
    assert_eq!(d["offers"][0]["node_id"], format!("0x{}", hex::encode(provider.addr().id.as_bytes())));
    let addr = provider.addr().addrs.iter().find_map(|a| match a {
        iroh::TransportAddr::Ip(s) => Some(s.to_string()),
        _ => None,
    });
    assert_eq!(d["offers"][0]["addrs"][0].as_str(), addr.as_deref());
    let found: serde_json::Value =
        http.get(format!("{}/datasets?q=kaiko", ann.market)).send().await.unwrap().json().await.unwrap();
    assert_eq!(found["items"][0]["root"], format!("{root:#x}"));
    // the schema read at publish is in the manifest, shown and searchable
    let quotes = d["files"].as_array().unwrap().iter().find(|f| f["name"] == "quotes.csv").expect("quotes.csv listed");
    assert_eq!(quotes["columns"][1], serde_json::json!({"name": "bid", "type": "Float64"}), "{d}");
    let by_column: serde_json::Value =
        http.get(format!("{}/datasets?q=bid", ann.market)).send().await.unwrap().json().await.unwrap();
    assert_eq!(by_column["items"][0]["root"], format!("{root:#x}"));

    // a buyer fetches by root alone: the market picks the provider, the buyer checks the signed
    // listing, pays, and reports the throughput it measured, signed with its key
    let buyer = dir.join("buyer");
    let fetch = fetch_by_root(&devnet, &ann.market, root, &buyer);
    let refused = fetch(&["--require", "price_gib < 0.0"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("no current offer") && err.lines().count() == 1, "{err}");
    let out = fetch(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("market picked provider {:#x}", devnet.address(3))), "{err}");
    assert!(err.contains("MiB/s for deal"), "the throughput report was taken: {err}");
    assert_eq!(std::fs::read(buyer.join("out/trades.csv")).unwrap(), std::fs::read(dir.join("ds/trades.csv")).unwrap());
    // the report counts once the deal's redeem (which the provider sends after the download) is
    // indexed: a report from a deal that paid nothing says nothing
    let mut p = serde_json::Value::Null;
    for _ in 0..100 {
        p = http
            .get(format!("{}/providers/{:#x}", ann.market, devnet.address(3)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["reputation"]["throughput_buyers"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p["reputation"]["throughput_buyers"], 1, "{p}");
    assert!(p["reputation"]["throughput_mibps"].as_f64().unwrap() > 0.0, "{p}");

    // the web pages, rendered by a real browser: the DOM holds what the API says, and the
    // screenshot is a page with content (kept under the target dir for a look)
    if let Some(chromium) = chromium() {
        let page = format!("{}/ui/datasets/{root:#x}", ann.market);
        let dom = headless(&chromium, dir, &["--dump-dom", &page]);
        let dom = String::from_utf8_lossy(&dom);
        assert!(dom.contains("kaiko BTC trades") && dom.contains("quotes.csv"), "{dom}");
        assert!(dom.contains("bid <span class=\"ty\">Float64</span>"), "the schema is shown: {dom}");
        assert!(dom.contains(&format!("{:#x}", devnet.address(3))), "the provider is listed: {dom}");
        assert!(dom.contains("<svg id=\"sales\"") && dom.contains("<rect"), "the sales chart is drawn: {dom}");
        let prov =
            headless(&chromium, dir, &["--dump-dom", &format!("{}/ui/providers/{:#x}", ann.market, devnet.address(3))]);
        let prov = String::from_utf8_lossy(&prov);
        assert!(prov.contains("(median of 1)"), "the buyer's report is shown");
        assert!(prov.contains("<svg id=\"throughput\"") && prov.contains("<circle"), "and charted: {prov}");
        // the deal the buyer paid: amounts in BDC, its receipts charted over time
        let deal = p["deals"][0]["id"].as_str().unwrap().to_string();
        let deal_page = format!("{}/ui/deals/{deal}", ann.market);
        let dom = headless(&chromium, dir, &["--dump-dom", &deal_page]);
        let dom = String::from_utf8_lossy(&dom);
        assert!(dom.contains("<svg id=\"receipts\"") && dom.contains("<circle"), "receipts are charted: {dom}");
        assert!(dom.contains(" BDC") && dom.contains(" UTC"), "amounts in BDC, times as dates: {dom}");
        let redeemed = p["deals"][0]["redeemed"].as_str().unwrap();
        assert!(!dom.contains(redeemed), "no base units on the page ({redeemed}): {dom}");
        let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        for (name, url) in [
            ("dataset", page.clone()),
            ("provider", format!("{}/ui/providers/{:#x}", ann.market, devnet.address(3))),
            ("search", format!("{}/?q=kaiko", ann.market)),
            ("deal", deal_page.clone()),
        ] {
            let file = shots.join(format!("{name}.png"));
            let _ = std::fs::remove_file(&file);
            headless(&chromium, dir, &["--window-size=1200,800", &format!("--screenshot={}", file.display()), &url]);
            let (w, h, ink) = png_ink(&file);
            assert_eq!((w, h), (1200, 800), "{name}: screenshot size");
            // text and table rules cover some of a rendered page, never none and never most
            assert!((0.002..0.5).contains(&ink), "{name}: {:.4} of the screenshot is ink ({})", ink, file.display());
            eprintln!("screenshot {}: {:.1}% ink", file.display(), ink * 100.0);
        }
    }
    market.shutdown();
    provider.shutdown().await;
}

/// `bdc fetch <root> --market URL` as devnet account 2 (paying, arbiter account 0), into
/// `buyer/out`, with `extra` arguments.
fn fetch_by_root<'a>(
    devnet: &Devnet,
    market: &'a str,
    root: B256,
    buyer: &'a std::path::Path,
) -> impl Fn(&[&str]) -> std::process::Output + 'a {
    let (keystore, deployment) = buyer_chain_files(devnet, 2, buyer);
    let arbiter = format!("{:#x}", devnet.address(0));
    move |extra: &[&str]| {
        bdc()
            .args(["fetch", &format!("{root:#x}"), "-q", "--market", market, "--arbiter", &arbiter])
            .arg("--data-dir")
            .arg(buyer.join("data"))
            .arg("--deployment")
            .arg(&deployment)
            .arg("--keystore")
            .arg(&keystore)
            .arg("-o")
            .arg(buyer.join("out"))
            .args(extra)
            .env("BDC_PASSWORD", "pw")
            .output()
            .unwrap()
    }
}

/// Debian's chromium, if installed; `make test` (BDC_REQUIRE_CHROMIUM) requires it.
fn chromium() -> Option<std::path::PathBuf> {
    let found =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(std::path::PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var_os("BDC_REQUIRE_CHROMIUM").is_none(), "BDC_REQUIRE_CHROMIUM set but no chromium");
        eprintln!("skipped the browser checks: no chromium (make test installs it)");
    }
    found
}

/// Runs headless chromium with the flags this machine's closed network needs; its stdout.
fn headless(chromium: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let run = || {
        let profile = tempfile::tempdir_in(dir).unwrap();
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .output()
            .unwrap()
    };
    // chromium itself sometimes crashes on a loaded 2-core machine (crashpad, no page involved):
    // one more try before the page is blamed
    let mut out = run();
    if !out.status.success() {
        eprintln!("chromium {args:?} failed once, retrying: {}", String::from_utf8_lossy(&out.stderr));
        out = run();
    }
    assert!(out.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Width, height and the share of pixels that are not near-white.
fn png_ink(path: &std::path::Path) -> (u32, u32, f64) {
    let mut dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let ink = pixels.chunks(px).filter(|p| p.iter().take(3).any(|&c| c < 200)).count();
    (info.width, info.height, ink as f64 / (info.width as f64 * info.height as f64))
}

/// `bdc fetch <root> --market` moves past a provider that cannot serve to the next offer, in
/// one command, says so, and escrows nothing for the one it could not reach.
#[tokio::test(flavor = "multi_thread")]
async fn fetch_by_root_moves_past_a_dead_provider_to_the_next_offer() {
    let devnet = Devnet::spawn_with(DevnetConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    random_file(&dir.join("ds/trades.csv"), 96 << 10, 7);
    let opts = PublishOptions { name: Some("failover".into()), ..Default::default() };
    // two providers of the same root: publishing is deterministic
    let mut roots = Vec::new();
    for p in ["a", "b"] {
        let mut store = ProviderStore::open(&dir.join(p)).await.unwrap();
        roots.push(publish(&mut store, &dir.join("ds"), &opts, |_| {}).await.unwrap().root);
        store.shutdown().await;
    }
    assert_eq!(roots[0], roots[1]);
    let root = B256::from(*roots[0].as_bytes());
    let market = Market::spawn(
        MarketConfig {
            database_url: format!("sqlite://{}?mode=rwc", dir.join("market.db").display()),
            bind: "127.0.0.1:0".parse().unwrap(),
            poll: Duration::from_millis(100),
            limits: Limits::default(),
            reputation: Default::default(),
        },
        devnet.contracts(0),
    )
    .await
    .unwrap();
    // b is the cheaper, so the market ranks it first
    let mut providers = Vec::new();
    for (p, account, price) in [("a", 3, 1_000_000_000u128), ("b", 4, 500_000_000)] {
        let setup = PaidSetup {
            cfg: PaidConfig { arbiters: vec![devnet.address(0)], price_per_byte: price, ..Default::default() },
            chain: devnet.contracts(account),
            address: devnet.address(account),
        };
        let store = ProviderStore::open(&dir.join(p)).await.unwrap();
        let provider = Provider::spawn(store, ServeConfig { paid: Some(setup), ..ServeConfig::test() }).await.unwrap();
        let ann = Announce {
            market: format!("http://{}", market.addr),
            signer: devnet.signer(account),
            region: "eu".into(),
            capacity_mibps: 50,
            ttl: Duration::from_secs(600),
        };
        if providers.is_empty() {
            let listings = provider.listings(&ann).await.unwrap();
            let manifest_hash = B256::from(*blake3::hash(listings[0].manifest.as_bytes()).as_bytes());
            devnet.contracts(1).register_dataset(root, 100, manifest_hash, 0).await.unwrap();
        }
        assert_eq!(crate::common::announce_when_indexed(&provider, &ann).await, Ok(1));
        providers.push(provider);
    }
    // b dies after listing: its offer is still the market's first
    let b = providers.pop().unwrap();
    b.shutdown().await;

    let buyer = dir.join("buyer");
    let out = fetch_by_root(&devnet, &format!("http://{}", market.addr), root, &buyer)(&["--timeout", "2s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let (a, b) = (format!("{:#x}", devnet.address(3)), format!("{:#x}", devnet.address(4)));
    let picked_b = err.find(&format!("market picked provider {b}")).expect(&err);
    let moved = err.find(&format!("warning: provider {b} failed")).expect(&err);
    let picked_a = err.find(&format!("market picked provider {a}")).expect(&err);
    assert!(picked_b < moved && moved < picked_a, "{err}");
    assert!(err.contains("moving to the next offer (2 of 2)"), "{err}");
    assert_eq!(std::fs::read(buyer.join("out/trades.csv")).unwrap(), std::fs::read(dir.join("ds/trades.csv")).unwrap());
    // one deal, with a: the unreachable provider was dialled before any escrow
    let book = bdc_fetcher::DealBook::load(&buyer.join("data/fetcher")).unwrap();
    let providers_paid: Vec<_> = book.deals.iter().map(|d| d.terms().unwrap().provider).collect();
    assert_eq!(providers_paid, [devnet.address(3)], "{err}");
    // the deposit is the size a signed in its listing, at its price (not the market's figure)
    let signed_size = providers[0].offer(roots[0]).unwrap().size;
    assert_eq!(book.deals[0].terms().unwrap().maxAmount.to::<u128>(), signed_size as u128 * 1_000_000_000);
    market.shutdown();
    providers.pop().unwrap().shutdown().await;
}
