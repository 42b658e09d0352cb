//! Disputes with proof, through the CLI as buyer and arbiter run it: `bdc deal dispute
//! --result`, `bdc arbiter review`, `bdc arbiter resolve`, against a real anvil, a real
//! provider and a real SQL job.

use std::path::PathBuf;

use alloy::primitives::{B256, U256};
use bdc_core::jobs::SignedJobResult;
use bdc_provider::{Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use serde_json::Value;

use crate::common::bdc;

const JOB_PRICE: u128 = 7_000;
const QUERY: &str = "SELECT side, count(*) AS n FROM trades GROUP BY side ORDER BY side";

/// One party's CLI: its data dir and chain files (a devnet account).
#[derive(Clone)]
struct Party {
    dir: PathBuf,
    keystore: PathBuf,
    deployment: PathBuf,
}

impl Party {
    fn new(devnet: &bdc_contracts::Devnet, who: usize, dir: PathBuf) -> Self {
        let (keystore, deployment) = crate::common::buyer_chain_files(devnet, who, &dir);
        Self { dir, keystore, deployment }
    }

    /// Runs `bdc <args> --keystore … --deployment …` in this party's data dir.
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let (p, args) = (self.clone(), args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        tokio::task::spawn_blocking(move || {
            bdc()
                .arg("-q")
                .arg("--data-dir")
                .arg(p.dir.join("data"))
                .args(&args)
                .arg("--keystore")
                .arg(&p.keystore)
                .arg("--deployment")
                .arg(&p.deployment)
                .env("BDC_PASSWORD", "pw")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args).await;
        let (o, e) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "bdc {args:?} failed:\n{e}\n{o}");
        (o, e)
    }

    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "bdc {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A paid SQL job: its deal, signed manifest file and result file.
async fn paid_job(buyer: &Party, ticket: &str, arbiter: &str, n: u32) -> (B256, PathBuf, PathBuf) {
    let result = buyer.dir.join(format!("r{n}.csv"));
    let (manifest, err) = buyer
        .ok(&[
            "compute",
            ticket,
            "--sql",
            QUERY,
            "-o",
            result.to_str().unwrap(),
            "--json",
            "--pay",
            "--arbiter",
            arbiter,
        ])
        .await;
    let deal: B256 = err
        .split("under job deal ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job deal named in: {err}"));
    let path = buyer.dir.join(format!("m{n}.json"));
    std::fs::write(&path, manifest).unwrap();
    (deal, path, result)
}

fn review_json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn findings(v: &Value) -> String {
    v["review"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn evidence_of(buyer: &Party, deal: B256) -> PathBuf {
    buyer.dir.join("data").join("fetcher").join("evidence").join(format!("{deal:#x}.json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_arbiter_reruns_a_disputed_job_and_the_provider_that_signed_a_wrong_result_loses() {
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
    let paid = bdc_provider::PaidSetup {
        cfg: bdc_provider::PaidConfig { arbiters: vec![devnet.address(0)], price_per_byte: 2, ..Default::default() },
        chain: devnet.contracts(3),
        address: devnet.address(3),
    };
    let provider = Provider::spawn(store, ServeConfig { jobs: Some(jobs), paid: Some(paid), ..ServeConfig::test() })
        .await
        .unwrap();
    let ticket = provider.ticket(rec.root).unwrap().to_string();
    let offer = provider.offer(rec.root).unwrap().to_string();
    let buyer = Party::new(&devnet, 2, tmp.path().join("buyer"));
    let arbiter = Party::new(&devnet, 0, tmp.path().join("arbiter"));
    let arbiter_addr = format!("{:#x}", devnet.address(0));
    let chain = devnet.contracts(0);

    // two paid jobs, each redeemed by the provider
    let (deal1, manifest1, _) = paid_job(&buyer, &ticket, &arbiter_addr, 1).await;
    let (deal2, manifest2, result2) = paid_job(&buyer, &ticket, &arbiter_addr, 2).await;
    for d in [deal1, deal2] {
        crate::common::wait_redeemed(&devnet, d, U256::from(JOB_PRICE)).await;
    }

    // the arbiter buys its own verified copy of the dataset
    let copy = arbiter.dir.join("copy");
    arbiter.ok(&["fetch", &offer, "--pay", "--arbiter", &arbiter_addr, "-o", copy.to_str().unwrap()]).await;

    // 1. an honest result disputed: the re-run gives the signed root, the review finds for the
    // provider, and the ruling pays the provider the pot and the bond
    let (out, _) = buyer
        .ok(&["deal", "dispute", &format!("{deal1:#x}"), "--result", manifest1.to_str().unwrap(), "--dataset", &offer])
        .await;
    assert!(out.contains("evidence written to"), "{out}");
    let ev1 = evidence_of(&buyer, deal1);
    let (out, _) =
        arbiter.ok(&["arbiter", "review", &format!("{deal1:#x}"), "--evidence", ev1.to_str().unwrap(), "--json"]).await;
    let v = review_json(&out);
    assert_eq!(v["review"]["ruling"], "provider", "{out}");
    assert!(findings(&v).contains("gives the signed result root"), "{out}");
    assert_eq!(v["frozen"], JOB_PRICE.to_string());
    let provider_before = chain.balance(devnet.address(3)).await.unwrap();
    arbiter.ok(&["arbiter", "resolve", &format!("{deal1:#x}"), "--for", "provider"]).await;
    let bond = bdc_contracts::DevnetConfig::default().dispute_bond;
    assert_eq!(chain.balance(devnet.address(3)).await.unwrap(), provider_before + U256::from(JOB_PRICE) + bond);
    assert!(!chain.deal_state(deal1).await.unwrap().disputed);

    // 2. a hostile provider signs a wrong result (the same row count, other counts): the
    // buyer disputes with the signed manifest and the bytes it was served
    let mut forged: SignedJobResult = serde_json::from_slice(&std::fs::read(&manifest2).unwrap()).unwrap();
    let wrong = b"side,n\nbuy,499\nsell,501\n";
    forged.result.result_root = bdc_core::Hash::new(wrong);
    forged.result.bytes = wrong.len() as u64;
    let forged = bdc_contracts::jobs::sign_job_result(&devnet.signer(3), forged.result).unwrap();
    let (forged_path, wrong_path) = (buyer.dir.join("forged.json"), buyer.dir.join("wrong.csv"));
    std::fs::write(&forged_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    std::fs::write(&wrong_path, wrong).unwrap();
    // a manifest of another deal is no evidence for this one: refused before anything is sent
    let err = buyer.fails(&["deal", "dispute", &format!("{deal2:#x}"), "--result", manifest1.to_str().unwrap()]).await;
    assert!(err.contains("none of the --result manifests is for deal"), "{err}");
    buyer
        .ok(&[
            "deal",
            "dispute",
            &format!("{deal2:#x}"),
            "--result",
            forged_path.to_str().unwrap(),
            "--dataset",
            &offer,
            "--note",
            "the counts are off",
        ])
        .await;
    let ev2 = evidence_of(&buyer, deal2);
    let d2 = format!("{deal2:#x}");
    let ev2s = ev2.to_str().unwrap();
    let review = ["arbiter", "review", &d2, "--evidence", ev2s, "--json"];
    // without the result bytes: the roots differ, the row counts agree: not decided
    let (out, _) = arbiter.ok(&review).await;
    assert_eq!(review_json(&out)["review"]["ruling"], "inconclusive", "{out}");
    // the buyer's honest copy is not what the provider signed: the arbiter refuses it
    let err = arbiter.fails(&[&review[..], &["--result-file", result2.to_str().unwrap()]].concat()).await;
    assert!(err.contains("is not the signed result"), "{err}");
    // with the bytes the provider signed: the rows differ, the review finds for the buyer
    let (out, _) = arbiter.ok(&[&review[..], &["--result-file", wrong_path.to_str().unwrap()]].concat()).await;
    let v = review_json(&out);
    assert_eq!(v["review"]["ruling"], "buyer", "{out}");
    let f = findings(&v);
    assert!(
        f.contains("signed but wrong: [buy|499] [sell|501]")
            && f.contains("missing from the signed result: [buy|500] [sell|500]"),
        "{f}"
    );
    assert_eq!(v["note"], "the counts are off");
    // evidence changed after the dispute does not match what was committed
    let mut tampered = std::fs::read(&ev2).unwrap();
    tampered.extend_from_slice(b" ");
    let tampered_path = buyer.dir.join("tampered.json");
    std::fs::write(&tampered_path, tampered).unwrap();
    let err = arbiter
        .fails(&[
            "arbiter",
            "review",
            &d2,
            "--evidence",
            tampered_path.to_str().unwrap(),
            "--result-file",
            wrong_path.to_str().unwrap(),
        ])
        .await;
    assert!(err.contains("is not what the buyer committed to on chain"), "{err}");
    // the buyer cannot rule on its own dispute
    let err = buyer.fails(&["arbiter", "resolve", &d2, "--for", "buyer"]).await;
    assert!(err.contains("is not the arbiter of deal"), "{err}");
    // the arbiter rules for the buyer: the pot and the bond go back to it
    let buyer_before = chain.balance(devnet.address(2)).await.unwrap();
    let (out, _) = arbiter.ok(&["arbiter", "resolve", &d2, "--for", "buyer"]).await;
    assert!(out.contains("for the buyer"), "{out}");
    assert_eq!(chain.balance(devnet.address(2)).await.unwrap(), buyer_before + U256::from(JOB_PRICE) + bond);
    // a second ruling: nothing is disputed any more
    let err = arbiter.fails(&["arbiter", "resolve", &d2, "--for", "provider"]).await;
    assert!(err.contains("is not disputed"), "{err}");
    provider.shutdown().await;
}
