//! The `bdc` binary as a user runs it: exit codes, one-line errors, signals, kill -9 and resume.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use bdc_provider::{Provider, ProviderStore, PublishOptions, ServeConfig, publish};

use crate::common::{bdc, random_file};

#[test]
fn help_lists_every_subcommand() {
    let out = bdc().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["provider", "fetch", "compute", "market", "dataset"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
    let out = bdc().args(["provider", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["publish", "serve", "ticket", "list", "config", "mirror"] {
        assert!(text.contains(cmd), "{cmd} missing from provider --help:\n{text}");
    }
    // serve's flags come in groups
    let out = bdc().args(["provider", "serve", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for heading in ["Network:", "Selling (bdc/paid/1):", "Market listings:", "Compute jobs (bdc/jobs/1):", "Chain:"] {
        assert!(text.contains(heading), "{heading} missing from serve --help:\n{text}");
    }
}

#[test]
fn malformed_ticket_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["not-a-ticket", "blobaaaa"] {
        let out = bdc()
            .arg("--data-dir")
            .arg(tmp.path())
            .args(["fetch", bad, "-o"])
            .arg(tmp.path().join("o"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("error: malformed ticket"), "{bad}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn publishing_a_missing_path_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bdc()
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["provider", "publish"])
        .arg(tmp.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("nope: no such file or directory"), "{err}");
    assert!(!tmp.path().join("provider/store").exists(), "no store created for a failed publish");
}

#[test]
fn publish_prints_root_and_json_record() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_file(&tmp.path().join("one.bin"), 70_000, 11);
    let out = bdc()
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["provider", "publish", "--raw"])
        .arg(tmp.path().join("one.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), blake3::hash(&data).to_hex().as_str());
    let out = bdc()
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["provider", "publish", "--free", "--json", "--name", "n"])
        .arg(tmp.path().join("one.bin"))
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((rec["name"].as_str(), rec["free"].as_bool(), rec["files"].as_u64()), (Some("n"), Some(true), Some(1)));
    assert_eq!(rec["format"], "hashseq");
}

#[test]
fn serve_prints_tickets_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ds");
    let data = random_file(&src.join("d.csv"), 123_456, 12);
    let dd = tmp.path().join("node");
    let st = bdc().arg("--data-dir").arg(&dd).args(["provider", "publish", "--free"]).arg(&src).output().unwrap();
    assert!(st.status.success());
    let root = String::from_utf8(st.stdout).unwrap().trim().to_string();
    let mut serve = bdc()
        .arg("--data-dir")
        .arg(&dd)
        .args(["provider", "serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ticket = line.trim().split('\t').nth(1).expect("name<TAB>ticket").to_string();
    // `provider ticket` reads the running serve's address
    let t2 = bdc().arg("--data-dir").arg(&dd).args(["provider", "ticket", &root]).output().unwrap();
    assert_eq!(String::from_utf8(t2.stdout).unwrap().trim(), ticket);

    let out_dir = tmp.path().join("got");
    let f = bdc()
        .arg("--data-dir")
        .arg(tmp.path().join("buyer"))
        .args(["fetch", &ticket, "-o"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
    assert_eq!(std::fs::read(out_dir.join("d.csv")).unwrap(), data);

    let pid = serve.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc_kill(pid, 15) }, 0);
    let status = wait_timeout(&mut serve, Duration::from_secs(10)).expect("serve exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!dd.join("provider/serve.json").exists());
    // the store was closed properly: it opens again and still has the dataset
    let again = bdc().arg("--data-dir").arg(&dd).args(["provider", "publish", "--free"]).arg(&src).output().unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), root);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_fetch_resumes_with_only_the_missing_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_file(&tmp.path().join("big.bin"), 24 << 20, 13);
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let opts = PublishOptions { free: true, raw: true, ..Default::default() };
    let rec = publish(&mut store, &tmp.path().join("big.bin"), &opts, |_| {}).await.unwrap();
    // an upload cap makes the transfer slow enough to be interrupted
    let cfg = ServeConfig { max_rate: Some(6 << 20), ..ServeConfig::test() };
    let provider = Provider::spawn(store, cfg).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap().to_string();
    let buyer = tmp.path().join("buyer");
    let out = tmp.path().join("out");
    let (b, o, t) = (buyer.clone(), out.clone(), ticket.clone());
    let fetch = move |json: bool| {
        let (buyer, out, ticket) = (&b, &o, &t);
        let mut c = bdc();
        c.arg("--data-dir").arg(buyer).args(["fetch", ticket, "--name", "big.bin", "-o"]).arg(out);
        if json {
            c.arg("--json");
        }
        c
    };
    let mut child = fetch(false).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // wait until the fetcher has stored a good part of the data, then kill -9
    let store_dir = buyer.join("fetcher/store");
    let t = Instant::now();
    while dir_size(&store_dir) < (6 << 20) {
        assert!(t.elapsed() < Duration::from_secs(60), "fetch made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("big.bin").exists(), "no output before verification completes");

    let res = tokio::task::spawn_blocking(move || fetch(true).output().unwrap()).await.unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let (total, local, fetched) = (
        report["total_bytes"].as_u64().unwrap(),
        report["local_bytes"].as_u64().unwrap(),
        report["fetched_bytes"].as_u64().unwrap(),
    );
    assert_eq!(total, 24 << 20);
    assert!(local >= 4 << 20, "resumed from what was stored: {report}");
    assert!(fetched <= total - local + (64 << 10), "fetched only what was missing: {report}");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data);
    provider.shutdown().await;
}

/// Bytes actually written to the store's data files (they are sparse: a partial blob's file has
/// its full length from the first chunk on, so count allocated blocks).
fn dir_size(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    crate::common::files_with_ext(p, "data")
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn wait_timeout(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().ok();
    None
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread")]
async fn devnet_deploys_prints_its_record_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = bdc()
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["devnet", "--port", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "devnet exited early: {text}");
        text.push_str(&line);
        if line == "}\n" {
            break;
        }
    }
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    let deployment: bdc_contracts::Deployment = serde_json::from_value(info["deployment"].clone()).unwrap();
    let url = info["rpc_url"].as_str().unwrap().parse().unwrap();
    let key: alloy::signers::local::PrivateKeySigner =
        info["accounts"][2]["private_key"].as_str().unwrap().parse().unwrap();
    assert_eq!(info["accounts"][2]["role"], "buyer");
    let c = bdc_contracts::client::connect(url, key.clone(), deployment);
    // the contracts are there and the buyer is funded
    assert_eq!(c.escrow().dealCount().call().await.unwrap(), 1);
    assert!(c.balance(key.address()).await.unwrap() > alloy::primitives::U256::ZERO);
    assert!(tmp.path().join("devnet.json").exists());

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc_kill(child.id() as i32, 15) }, 0);
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("devnet exits on SIGTERM");
    assert!(status.success());
    assert!(!tmp.path().join("devnet.json").exists());
    assert!(c.balance(key.address()).await.is_err(), "anvil is gone");
}

#[test]
fn market_status_names_an_unreachable_market() {
    // a port nothing listens on: bind one, then free it
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out =
        crate::common::bdc().args(["market", "status", "--url", &format!("http://127.0.0.1:{port}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot reach the market at http://127.0.0.1:{port}/status")), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_prints_a_csv_result_and_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ds");
    std::fs::create_dir_all(&data).unwrap();
    bdc_provider::jobs::worker::write_sample_trades(&data.join("trades.parquet"), 1000).await.unwrap();
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let rec = publish(&mut store, &data, &PublishOptions { free: true, ..Default::default() }, |_| {}).await.unwrap();
    let key = alloy::signers::local::PrivateKeySigner::random();
    let jobs = bdc_provider::JobsConfig::new(env!("CARGO_BIN_EXE_bdc").into(), key.clone());
    let provider = Provider::spawn(store, ServeConfig { jobs: Some(jobs), ..ServeConfig::test() }).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap().to_string();
    let dir = tmp.path().join("buyer");
    let run = move |args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || bdc().arg("-q").arg("--data-dir").arg(&dir).args(args).output().unwrap())
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let ok = run(s(&[
        "compute",
        &ticket,
        "--sql",
        "SELECT side, count(*) AS n FROM trades GROUP BY side ORDER BY side",
        "--provider-address",
        &key.address().to_string(),
    ]))
    .await
    .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // side is buy when (v / 3) % 2 == 0 for v in 1..=1000: 2 + 166 * 3 = 500 of them
    assert_eq!(String::from_utf8(ok.stdout).unwrap(), "side,n\nbuy,500\nsell,500\n");
    // refused query: exit 2, one line naming the provider and the reason
    let bad = run(s(&["compute", &ticket, "--sql", "DROP TABLE trades"])).await.unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.starts_with("error: job failed on provider") && err.contains("query refused"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // a manifest signed by someone else than --provider-address is refused: the result failed
    // verification, exit 1 (as for data that does not verify)
    let other = alloy::signers::local::PrivateKeySigner::random().address().to_string();
    let wrong = run(s(&["compute", &ticket, "--sql", "SELECT 1", "--provider-address", &other])).await.unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8(wrong.stderr).unwrap().contains("expected the provider's address"));
    let parquet = run(s(&["compute", &ticket, "--sql", "SELECT 1", "--format", "parquet"])).await.unwrap();
    assert!(String::from_utf8(parquet.stderr).unwrap().contains("not printed"));
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_pay_buys_one_job_on_a_sold_dataset() {
    use alloy::primitives::{B256, U256};
    const JOB_PRICE: u128 = 7_000;
    let devnet = bdc_contracts::Devnet::spawn_with(bdc_contracts::DevnetConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ds");
    std::fs::create_dir_all(&data).unwrap();
    bdc_provider::jobs::worker::write_sample_trades(&data.join("trades.parquet"), 1000).await.unwrap();
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let rec = publish(&mut store, &data, &PublishOptions::default(), |_| {}).await.unwrap();
    devnet.contracts(1).register_dataset(B256::from(*rec.root.as_bytes()), 0, B256::ZERO, 0).await.unwrap();
    let mut jobs = bdc_provider::JobsConfig::new(env!("CARGO_BIN_EXE_bdc").into(), devnet.signer(3));
    jobs.job_price = Some(JOB_PRICE);
    // two base units per byte: the job price buys a 3,500-byte result (and a seller at one
    // ranks first below)
    let paid = bdc_provider::PaidSetup {
        cfg: bdc_provider::PaidConfig { arbiters: vec![devnet.address(0)], price_per_byte: 2, ..Default::default() },
        chain: devnet.contracts(3),
        address: devnet.address(3),
    };
    let cfg = ServeConfig { jobs: Some(jobs), paid: Some(paid), ..ServeConfig::test() };
    let provider = Provider::spawn(store, cfg).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap().to_string();
    let dir = tmp.path().join("buyer");
    let (keystore, deployment) = crate::common::buyer_chain_files(&devnet, 2, &dir);
    let arbiter = format!("{:#x}", devnet.address(0));
    let run = move |extra: Vec<String>| {
        let (dir, keystore, deployment) = (dir.clone(), keystore.clone(), deployment.clone());
        tokio::task::spawn_blocking(move || {
            bdc()
                .arg("-q")
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["compute", "--sql", "SELECT side, count(*) AS n FROM trades GROUP BY side ORDER BY side"])
                .arg("--keystore")
                .arg(&keystore)
                .arg("--deployment")
                .arg(&deployment)
                .args(extra)
                .env("BDC_PASSWORD", "pw")
                .output()
                .unwrap()
        })
    };
    // without --pay: the provider's price, one line, exit 2
    let unpaid = run(vec![ticket.clone()]).await.unwrap();
    assert_eq!(unpaid.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unpaid.stderr);
    assert!(err.contains("payment required") && err.contains(&JOB_PRICE.to_string()), "{err}");
    // --pay needs an arbiter for the deal
    let no_arbiter = run(vec![ticket.clone(), "--pay".into()]).await.unwrap();
    assert!(String::from_utf8_lossy(&no_arbiter.stderr).contains("--arbiter"));
    let ok = run(vec![ticket.clone(), "--pay".into(), "--arbiter".into(), arbiter.clone()]).await.unwrap();
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{err}");
    assert_eq!(String::from_utf8(ok.stdout).unwrap(), "side,n\nbuy,500\nsell,500\n");
    let deal: B256 = err
        .split("under job deal ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job deal named in: {err}"));
    crate::common::wait_redeemed(&devnet, deal, U256::from(JOB_PRICE)).await;

    // by root alone, through a market: it ranks the provider's signed listing, the buyer checks
    // the listing, pays the job, and takes only a result signed by the listing's provider
    let market = bdc_market::Market::spawn(
        bdc_market::MarketConfig {
            database_url: format!("sqlite://{}?mode=rwc", tmp.path().join("market.db").display()),
            bind: "127.0.0.1:0".parse().unwrap(),
            poll: Duration::from_millis(100),
            limits: bdc_market::Limits::default(),
            reputation: Default::default(),
        },
        devnet.contracts(0),
    )
    .await
    .unwrap();
    let ann = bdc_provider::Announce {
        market: format!("http://{}", market.addr),
        signer: devnet.signer(3),
        region: "eu".into(),
        capacity_mibps: 50,
        ttl: Duration::from_secs(600),
    };
    assert_eq!(crate::common::announce_when_indexed(&provider, &ann).await, Ok(1));
    // a cheaper seller that runs no jobs ranks first: the buyer passes over it
    let mut other = ProviderStore::open(&tmp.path().join("p2")).await.unwrap();
    publish(&mut other, &data, &PublishOptions::default(), |_| {}).await.unwrap();
    let cheap = bdc_provider::PaidConfig { price_per_byte: 1, arbiters: vec![devnet.address(0)], ..Default::default() };
    let paid = bdc_provider::PaidSetup { cfg: cheap, chain: devnet.contracts(4), address: devnet.address(4) };
    let no_jobs = Provider::spawn(other, ServeConfig { paid: Some(paid), ..ServeConfig::test() }).await.unwrap();
    let ann4 = bdc_provider::Announce { signer: devnet.signer(4), ..ann.clone() };
    assert_eq!(bdc_provider::announce_once(&no_jobs, &ann4).await.map_err(|e| e.to_string()), Ok(1));
    let root = format!("{:#x}", B256::from(*rec.root.as_bytes()));
    let no_market = run(vec![root.clone()]).await.unwrap();
    assert_eq!(no_market.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_market.stderr).contains("needs --market"));
    let by_root = run(vec![root, "--market".into(), ann.market.clone(), "--pay".into(), "--arbiter".into(), arbiter])
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&by_root.stderr);
    assert!(by_root.status.success(), "{err}");
    let (first, second) = (
        err.find(&format!("market picked provider {:#x}", devnet.address(4))),
        err.find(&format!("market picked provider {:#x}", devnet.address(3))),
    );
    assert!(first.is_some() && first < second, "the cheaper offer first, then the next: {err}");
    assert!(err.contains("failed: ") && err.contains("moving to the next offer (2 of"), "{err}");
    assert!(err.to_lowercase().contains(&format!("signed by {:#x}", devnet.address(3))), "{err}");
    assert_eq!(String::from_utf8(by_root.stdout).unwrap(), "side,n\nbuy,500\nsell,500\n");
    market.shutdown();
    no_jobs.shutdown().await;
    provider.shutdown().await;
}

/// `bdc market serve` stops on SIGTERM (a service manager's stop): it finishes what it is doing
/// and exits 0, instead of being killed by the default signal action.
#[tokio::test(flavor = "multi_thread")]
async fn market_serve_shuts_down_gracefully_on_sigterm() {
    let devnet = bdc_contracts::Devnet::spawn_with(bdc_contracts::DevnetConfig::default()).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (_, deployment) = crate::common::buyer_chain_files(&devnet, 1, &tmp.path().join("keys"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bdc"))
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["market", "serve", "--bind", "127.0.0.1:0", "--poll-ms", "100", "--deployment"])
        .arg(&deployment)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line =
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("the market's URL").to_string();
    let status = bdc_market_api::MarketClient::new(&url).unwrap().status().await.unwrap();
    assert_eq!(status.backend, "sqlite");
    // SIGTERM, as systemd sends it
    let pid = child.id().unwrap() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutting down"));
    // and it comes back on the same database, caught up
    assert!(tmp.path().join("market/market.db").exists());
}

/// Several tickets of one dataset: a dead provider is left for the next, a provider given twice
/// is tried once, and tickets of different datasets are refused before anything is dialled.
#[tokio::test(flavor = "multi_thread")]
async fn fetch_moves_past_a_dead_ticket_and_refuses_mixed_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_file(&tmp.path().join("ds/a.bin"), 300_000, 31);
    random_file(&tmp.path().join("other.bin"), 1_000, 32);
    let free = PublishOptions { free: true, ..Default::default() };
    let mut tickets = Vec::new();
    let mut providers = Vec::new();
    for p in ["p1", "p2"] {
        let mut store = ProviderStore::open(&tmp.path().join(p)).await.unwrap();
        let rec = publish(&mut store, &tmp.path().join("ds"), &free, |_| {}).await.unwrap();
        let other = publish(&mut store, &tmp.path().join("other.bin"), &free, |_| {}).await.unwrap();
        let provider = Provider::spawn(store, ServeConfig::test()).await.unwrap();
        tickets
            .push((provider.ticket(rec.root).unwrap().to_string(), provider.ticket(other.root).unwrap().to_string()));
        providers.push(provider);
    }
    // the first provider dies; its ticket still names it
    providers.remove(0).shutdown().await;
    let dir = tmp.path().join("buyer");
    let out = tmp.path().join("out");
    let (dead, alive, other) = (tickets[0].0.clone(), tickets[1].0.clone(), tickets[1].1.clone());
    let run = {
        let (dir, out) = (dir.clone(), out.clone());
        move |args: Vec<String>| {
            let (dir, out) = (dir.clone(), out.clone());
            tokio::task::spawn_blocking(move || {
                bdc().arg("--data-dir").arg(&dir).arg("fetch").args(args).arg("-o").arg(&out).output().unwrap()
            })
        }
    };
    let res = run(vec![dead, alive.clone(), alive.clone(), "--timeout".into(), "2s".into()]).await.unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(err.contains("is given twice: trying it once"), "{err}");
    assert!(err.contains("moving to the next ticket (2 of 2)"), "{err}");
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), data);
    // two datasets on one command line: a clear error, exit 2, nothing fetched
    let res = run(vec![other, alive.clone()]).await.unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(err.contains("tickets name different datasets"), "{err}");
    // the same root claimed as a raw blob by one ticket: which format served would decide what
    // is written (or mirrored), so it is refused too
    let t: bdc_core::ticket::BlobTicket = alive.parse().unwrap();
    let raw = bdc_core::ticket::BlobTicket::new(t.addr().clone(), t.hash(), bdc_core::BlobFormat::Raw);
    let res = run(vec![alive, raw.to_string()]).await.unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(err.contains("disagree on its format"), "{err}");
    providers.remove(0).shutdown().await;
}

/// `bdc provider mirror <ticket>`: a free dataset, fetched verified into the node's provider
/// store, is served free from there once the origin is gone, under the same root.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirrored_free_dataset_is_served_free_by_the_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_file(&tmp.path().join("ds/ticks.csv"), 700_000, 71);
    let mut store = ProviderStore::open(&tmp.path().join("origin")).await.unwrap();
    let opts = PublishOptions { free: true, ..Default::default() };
    let rec = publish(&mut store, &tmp.path().join("ds"), &opts, |_| {}).await.unwrap();
    let origin = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let ticket = origin.ticket(rec.root).unwrap();

    let node = tmp.path().join("mirror");
    let out = bdc().arg("--data-dir").arg(&node).args(["provider", "mirror", &ticket.to_string(), "--json"]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mirrored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((mirrored["root"].as_str(), mirrored["free"].as_bool()), (Some(&*rec.root.to_string()), Some(true)));
    assert_eq!(mirrored["name"], "ds");
    // mirroring it again changes nothing of the record
    let again = bdc().arg("--data-dir").arg(&node).args(["provider", "mirror", &ticket.to_string()]).output();
    let again = again.unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("already in this node's catalog"), "{err}");
    origin.shutdown().await;
    // nothing was written outside the store
    assert!(!node.join("provider/ticks.csv").exists());

    let store = ProviderStore::open(&node.join("provider")).await.unwrap();
    let mirror = Provider::spawn(store, ServeConfig::test()).await.unwrap();
    let fetcher = bdc_fetcher::Fetcher::open(bdc_fetcher::FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let got = tmp.path().join("got");
    let ticket = mirror.ticket(rec.root).unwrap();
    fetcher.fetch(&ticket, &got, &bdc_fetcher::FetchOptions::default(), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(got.join("ticks.csv")).unwrap(), data);
    fetcher.shutdown().await;
    mirror.shutdown().await;
}
