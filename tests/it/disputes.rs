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
async fn paid_job(buyer: &Party, ticket: &str, arbiter: &str, n: u32, query: &str) -> (B256, PathBuf, PathBuf) {
    let result = buyer.dir.join(format!("r{n}.csv"));
    let (manifest, err) = buyer
        .ok(&[
            "compute",
            ticket,
            "--sql",
            query,
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

/// What a hostile provider signs: the manifest of `honest` with the result `bytes` (claiming
/// `rows` rows), and the bytes it served; both written next to the buyer's files.
fn forge(
    devnet: &bdc_contracts::Devnet,
    buyer: &Party,
    honest: &PathBuf,
    bytes: &[u8],
    rows: u64,
    n: u32,
) -> (PathBuf, PathBuf) {
    let mut r: SignedJobResult = serde_json::from_slice(&std::fs::read(honest).unwrap()).unwrap();
    r.result.result_root = bdc_core::Hash::new(bytes);
    r.result.bytes = bytes.len() as u64;
    r.result.rows = rows;
    let forged = bdc_contracts::jobs::sign_job_result(&devnet.signer(3), r.result).unwrap();
    let (m, f) = (buyer.dir.join(format!("forged{n}.json")), buyer.dir.join(format!("served{n}.csv")));
    std::fs::write(&m, serde_json::to_vec(&forged).unwrap()).unwrap();
    std::fs::write(&f, bytes).unwrap();
    (m, f)
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
    let bond = bdc_contracts::DevnetConfig::default().dispute_bond;

    // the arbiter buys its own verified copy of the dataset
    let copy = arbiter.dir.join("copy");
    arbiter.ok(&["fetch", &offer, "--pay", "--arbiter", &arbiter_addr, "-o", copy.to_str().unwrap()]).await;

    // a paid job, redeemed; the buyer disputes it citing `manifest`; the arbiter reviews
    let job = async |n: u32, query: &str| {
        let (deal, manifest, result) = paid_job(&buyer, &ticket, &arbiter_addr, n, query).await;
        crate::common::wait_redeemed(&devnet, deal, U256::from(JOB_PRICE)).await;
        (deal, manifest, result)
    };
    let dispute = async |deal: B256, manifest: &PathBuf| {
        let d = format!("{deal:#x}");
        let (out, _) = buyer
            .ok(&["deal", "dispute", &d, "--result", manifest.to_str().unwrap(), "--dataset", &offer, "--note", "off"])
            .await;
        assert!(out.contains("evidence written to"), "{out}");
    };
    let review = async |deal: B256, file: Option<&PathBuf>| {
        let (d, ev) = (format!("{deal:#x}"), evidence_of(&buyer, deal));
        let mut args = vec!["arbiter", "review", &d, "--evidence", ev.to_str().unwrap(), "--json"];
        if let Some(f) = file {
            args.extend(["--result-file", f.to_str().unwrap()]);
        }
        let (out, _) = arbiter.ok(&args).await;
        let v = review_json(&out);
        (v["review"]["ruling"].as_str().unwrap().to_string(), findings(&v), v)
    };

    // 1. an honest result disputed: the re-runs give the signed root, the review finds for the
    // provider, and the ruling pays the provider the pot and the bond
    let (deal1, manifest1, _) = job(1, QUERY).await;
    dispute(deal1, &manifest1).await;
    let (ruling, f, v) = review(deal1, None).await;
    assert_eq!((ruling.as_str(), f.contains("gives the signed result root")), ("provider", true), "{f}");
    assert_eq!((v["frozen"].as_str(), v["note"].as_str()), (Some(JOB_PRICE.to_string().as_str()), Some("off")));
    let provider_before = chain.balance(devnet.address(3)).await.unwrap();
    arbiter.ok(&["arbiter", "resolve", &format!("{deal1:#x}"), "--for", "provider"]).await;
    assert_eq!(chain.balance(devnet.address(3)).await.unwrap(), provider_before + U256::from(JOB_PRICE) + bond);
    assert!(!chain.deal_state(deal1).await.unwrap().disputed);

    // 2. a hostile provider signs a wrong result (the same row count, other counts)
    let (deal2, manifest2, result2) = job(2, QUERY).await;
    let (forged, served) = forge(&devnet, &buyer, &manifest2, b"side,n\nbuy,499\nsell,501\n", 2, 2);
    // a manifest of another deal is no evidence for this one: the buyer's CLI says so
    let err = buyer.fails(&["deal", "dispute", &format!("{deal2:#x}"), "--result", manifest1.to_str().unwrap()]).await;
    assert!(err.contains("none of the --result manifests is for deal"), "{err}");
    dispute(deal2, &forged).await;
    // without the bytes served: the roots differ, the row counts agree: not decided
    let (ruling, f, _) = review(deal2, None).await;
    assert_eq!(ruling, "inconclusive", "{f}");
    // the buyer's honest copy is not what the provider signed: the arbiter refuses it
    let (d2, ev2) = (format!("{deal2:#x}"), evidence_of(&buyer, deal2));
    let err = arbiter
        .fails(&[
            "arbiter",
            "review",
            &d2,
            "--evidence",
            ev2.to_str().unwrap(),
            "--result-file",
            result2.to_str().unwrap(),
        ])
        .await;
    assert!(err.contains("is not the signed result"), "{err}");
    // with the bytes the provider signed: the rows differ, the review finds for the buyer
    let (ruling, f, _) = review(deal2, Some(&served)).await;
    assert_eq!(ruling, "buyer", "{f}");
    assert!(
        f.contains(r#"signed but wrong: ("buy", "499") ("sell", "501")"#)
            && f.contains(r#"missing from the signed result: ("buy", "500") ("sell", "500")"#),
        "{f}"
    );
    // evidence changed after the dispute does not match what was committed
    let mut tampered = std::fs::read(&ev2).unwrap();
    tampered.extend_from_slice(b" ");
    let tampered_path = buyer.dir.join("tampered.json");
    std::fs::write(&tampered_path, tampered).unwrap();
    let err = arbiter.fails(&["arbiter", "review", &d2, "--evidence", tampered_path.to_str().unwrap()]).await;
    assert!(err.contains("is not what the buyer committed to on chain"), "{err}");
    // the buyer cannot rule on its own dispute: refused before sending, and by the escrow
    let err = buyer.fails(&["arbiter", "resolve", &d2, "--for", "buyer"]).await;
    assert!(err.contains("is not the arbiter of deal"), "{err}");
    let terms = chain.find_deal(deal2).await.unwrap().unwrap().terms;
    assert!(devnet.contracts(2).resolve(&terms, U256::from(JOB_PRICE), true).await.is_err());
    // the arbiter rules for the buyer: the pot and the bond go back to it
    let buyer_before = chain.balance(devnet.address(2)).await.unwrap();
    let (out, _) = arbiter.ok(&["arbiter", "resolve", &d2, "--for", "buyer"]).await;
    assert!(out.contains("for the buyer"), "{out}");
    assert_eq!(chain.balance(devnet.address(2)).await.unwrap(), buyer_before + U256::from(JOB_PRICE) + bond);
    let err = arbiter.fails(&["arbiter", "resolve", &d2, "--for", "provider"]).await;
    assert!(err.contains("is not disputed"), "{err}");

    // 3. the right rows in another order are not a wrong result
    let (deal3, manifest3, _) = job(3, QUERY).await;
    let (forged, served) = forge(&devnet, &buyer, &manifest3, b"side,n\nsell,500\nbuy,500\n", 2, 3);
    dispute(deal3, &forged).await;
    let (ruling, f, _) = review(deal3, Some(&served)).await;
    assert_eq!((ruling.as_str(), f.contains("in another order")), ("provider", true), "{f}");

    // 4. a signed row count the query does not give: wrong, no result file needed
    let (deal4, manifest4, _) = job(4, QUERY).await;
    let (forged, _) = forge(&devnet, &buyer, &manifest4, b"side,n\nbuy,500\nsell,500\nhold,1\n", 3, 4);
    dispute(deal4, &forged).await;
    let (ruling, f, _) = review(deal4, None).await;
    assert_eq!(
        (ruling.as_str(), f.contains("signed a result of 3 rows; the query gives 2 rows")),
        ("buyer", true),
        "{f}"
    );

    // 5. signed bytes that are not a CSV file at all (a ragged row): wrong, not "no ruling"
    let (deal5, manifest5, _) = job(5, QUERY).await;
    let (forged, served) = forge(&devnet, &buyer, &manifest5, b"side,n\nbuy\nsell,500,1\n", 2, 5);
    dispute(deal5, &forged).await;
    let (ruling, f, _) = review(deal5, Some(&served)).await;
    assert_eq!((ruling.as_str(), f.contains("not a readable csv file")), ("buyer", true), "{f}");

    // 6. a buyer's own nondeterministic query cannot be turned against an honest provider
    let (deal6, manifest6, result6) = job(6, "SELECT side, random() AS r FROM trades ORDER BY side LIMIT 2").await;
    dispute(deal6, &manifest6).await;
    let (ruling, f, _) = review(deal6, Some(&result6)).await;
    assert_eq!((ruling.as_str(), f.contains("not deterministic: it calls random")), ("inconclusive", true), "{f}");

    // 7. evidence that cites another deal's manifest (written by hand, past the CLI's check)
    let (deal7, _, _) = job(7, QUERY).await;
    let doc = bdc_core::evidence::Evidence {
        version: bdc_core::evidence::EVIDENCE_VERSION,
        deal: format!("{deal7:#x}"),
        claim: bdc_core::evidence::Claim::WrongResult {
            results: vec![serde_json::from_slice(&std::fs::read(&manifest1).unwrap()).unwrap()],
        },
        dataset_ticket: Some(offer.clone()),
        note: String::new(),
    };
    let path = evidence_of(&buyer, deal7);
    std::fs::write(&path, doc.to_bytes()).unwrap();
    buyer.ok(&["deal", "dispute", &format!("{deal7:#x}"), "--evidence", path.to_str().unwrap()]).await;
    let (ruling, f, _) = review(deal7, None).await;
    assert_eq!((ruling.as_str(), f.contains("holds no result manifest for deal")), ("provider", true), "{f}");

    // 8. a claim that the data contradicts its manifest, through the CLI: the arbiter checks every
    // claim of bdc.json on its verified copy (this dataset is honest)
    let (deal8, _, _) = job(8, QUERY).await;
    let (out, _) =
        buyer.ok(&["deal", "dispute", &format!("{deal8:#x}"), "--manifest-claim", "--dataset", &offer]).await;
    assert!(out.contains("evidence written to"), "{out}");
    let (ruling, f, v) = review(deal8, None).await;
    assert_eq!(v["review"]["claim"], "data_contradicts_manifest");
    assert_eq!((ruling.as_str(), f.contains("every claim of the manifest holds")), ("provider", true), "{f}");
    provider.shutdown().await;
}
