//! Jobs on sold datasets, paid through a job deal: paid only for a verified result.

use super::*;

/// One job request with `payment`, sent from the fetcher's endpoint; the final update.
async fn raw_job(
    fetcher: &Fetcher,
    ticket: &BlobTicket,
    spec: JobSpec,
    payment: Option<bdc_core::jobs::JobPayment>,
) -> bdc_core::jobs::JobUpdate {
    use bdc_core::jobs::{JOBS_PROTOCOL_VERSION, JobRequest, JobUpdate, MAX_UPDATE_BYTES, decode, frame};
    let conn = fetcher.endpoint().connect(ticket.addr().clone(), bdc_core::protocol::JOBS_ALPN).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = JobRequest { version: JOBS_PROTOCOL_VERSION, dataset: ticket.hash(), spec, payment };
    send.write_all(&frame(&req)).await.unwrap();
    send.finish().unwrap();
    loop {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        recv.read_exact(&mut body).await.unwrap();
        let u: JobUpdate = decode(&body, MAX_UPDATE_BYTES).unwrap();
        if !matches!(u, JobUpdate::Queued { .. } | JobUpdate::Running) {
            conn.close(0u32.into(), b"done");
            return u;
        }
    }
}

/// A provider that sells its data at `price_per_byte` (account 3, arbiter account 0) and runs jobs.
async fn selling(
    store: ProviderStore,
    devnet: &bdc_contracts::Devnet,
    jc: bdc_provider::JobsConfig,
    price_per_byte: u128,
) -> Provider {
    use bdc_provider::{PaidConfig, PaidSetup};
    let paid = PaidSetup {
        cfg: PaidConfig { arbiters: vec![devnet.address(0)], price_per_byte, ..Default::default() },
        chain: devnet.contracts(3),
        address: devnet.address(3),
    };
    Provider::spawn(store, ServeConfig { paid: Some(paid), jobs: Some(jc), ..ServeConfig::test() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_jobs_pay_on_the_verified_result_and_failed_ones_refund() {
    use alloy::primitives::{B256, U256};
    use bdc_contracts::{Devnet, DevnetConfig, client::OpenDeal, receipt::sign_hello_sync};
    use bdc_core::jobs::{JobPayment, JobUpdate};
    use bdc_fetcher::{DealBook, Wallet, jobs::JobPay};
    const JOB_PRICE: u128 = 5_000_000;

    let devnet = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let mut store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let opts = PublishOptions { name: Some("trades".into()), ..Default::default() };
    let rec = publish(&mut store, &data, &opts, |_| {}).await.unwrap();
    let root = B256::from(*rec.root.as_bytes());
    devnet.contracts(1).register_dataset(root, 1_000, B256::ZERO, 0).await.unwrap();
    let key = devnet.signer(3);
    let mut jc = jobs_config(&key);
    jc.job_price = Some(JOB_PRICE);
    // this vendor accepts container jobs on its sold data (off by default, tested at the end)
    jc.containers_on_sold = true;
    // the data sells at 100 per byte: one job's price buys 50,000 bytes of it
    const PRICE_PER_BYTE: u128 = 100;
    let provider = selling(store, &devnet, jc, PRICE_PER_BYTE).await;
    let ticket = provider.ticket(rec.root).unwrap();
    let fdir = tmp.path().join("f");
    let fetcher = Fetcher::open(FetcherConfig::test(fdir.clone())).await.unwrap();
    let out = tmp.path().join("out");
    let q = "SELECT symbol, count(*) AS n, sum(qty) AS volume FROM trades GROUP BY symbol ORDER BY symbol";

    // a sold dataset: without payment the provider quotes its price and runs nothing
    let err = fetcher.run_job(&ticket, sql(q, ResultFormat::Parquet), None, &out, "x.parquet", |_| {}).await;
    match err {
        Err(JobError::Failed { code, reason, .. }) => {
            assert_eq!(code, codes::PAYMENT_REQUIRED);
            assert!(reason.contains(&JOB_PRICE.to_string()), "{reason}");
        }
        other => panic!("expected payment required, got {other:?}"),
    }

    // paid: a job deal for the price, the result verified, then one receipt, redeemed on chain
    let buyer = devnet.contracts(2);
    let before = buyer.balance(devnet.address(2)).await.unwrap();
    let mut pay = JobPay {
        wallet: Wallet { chain: buyer.clone(), signer: devnet.signer(2) },
        arbiters: vec![devnet.address(0)],
        deal_duration: Duration::from_secs(3_600),
        max_price: Some(JOB_PRICE),
    };
    let got = fetcher
        .run_paid_job(&ticket, sql(q, ResultFormat::Parquet), Some(key.address()), &pay, &out, "r.parquet", |_| {})
        .await
        .unwrap();
    let deal = got.deal.expect("a paid job names its deal");
    assert_eq!(got.paid, JOB_PRICE);
    assert_eq!(got.signed.result.deal_id, deal.0, "the signed manifest names the deal");
    assert_eq!(read_result(&got.file, ResultFormat::Parquet).await, direct(&data, q).await);
    assert_eq!(buyer.balance(devnet.address(2)).await.unwrap(), before - U256::from(JOB_PRICE), "escrowed the price");
    crate::common::wait_redeemed(&devnet, deal, U256::from(JOB_PRICE)).await;
    let c = devnet.contracts(0);
    let book = DealBook::load(&fdir).unwrap();
    assert_eq!(book.get(&deal).unwrap().paid, JOB_PRICE, "the buyer's book records what it signed");
    let terms = book.get(&deal).unwrap().terms().unwrap();
    assert_eq!((terms.pricePerByte, terms.window), (0, 0), "a job deal");

    // a deal pays for one job; a deal of another dataset or a transfer deal pays for none; a
    // request not signed by the deal's buyer is refused
    let me = B256::from(*fetcher.endpoint().id().as_bytes());
    let hello = |terms: &bdc_contracts::client::Terms, who: usize| {
        let id = alloy::primitives::keccak256(terms.abi_encode());
        let sig = sign_hello_sync(&devnet.signer(who), &buyer.domain(), id, me).unwrap();
        JobPayment { deal_id: id.0, terms: terms.abi_encode(), hello_sig: sig.as_bytes().to_vec() }
    };
    let open = |root: B256, ppb: u128, window: u64| OpenDeal {
        provider: devnet.address(3),
        provider_node_id: B256::from(*ticket.addr().id.as_bytes()),
        dataset_root: root,
        price_per_byte: ppb,
        max_amount: U256::from(JOB_PRICE),
        window,
        expiry: u64::MAX / 2,
        arbiter: devnet.address(0),
    };
    let transfer = buyer.open_deal(devnet.address(2), &open(root, 1, 1 << 20)).await.unwrap();
    let other_root = B256::repeat_byte(0x42);
    devnet.contracts(1).register_dataset(other_root, 0, B256::ZERO, 0).await.unwrap();
    let elsewhere = buyer.open_deal(devnet.address(2), &open(other_root, 0, 0)).await.unwrap();
    let fresh = buyer.open_deal(devnet.address(2), &open(root, 0, 0)).await.unwrap();
    // a deal that would expire before the job's receipt (queue + run + receipt wait) could
    // not be redeemed: refused before the job runs
    let now = buyer.chain_time().await.unwrap();
    let short = buyer.open_deal(devnet.address(2), &OpenDeal { expiry: now + 500, ..open(root, 0, 0) }).await.unwrap();
    let never_opened = bdc_contracts::client::Terms { nonce: 999, ..fresh.terms.clone() };
    let mut lying = hello(&fresh.terms, 2);
    lying.deal_id = deal.0;
    for (what, payment, want) in [
        ("used deal", hello(&terms, 2), "already used"),
        ("transfer deal", hello(&transfer.terms, 2), "transfer deal"),
        ("another dataset", hello(&elsewhere.terms, 2), "is for dataset"),
        ("not the buyer", hello(&fresh.terms, 4), "not signed by"),
        ("unknown deal", hello(&never_opened, 2), "not on chain"),
        ("terms of another deal", lying, "not to deal"),
        ("too short for queue, run and receipt", hello(&short.terms, 2), "expires too soon"),
    ] {
        match raw_job(&fetcher, &ticket, sql(q, ResultFormat::Csv), Some(payment)).await {
            JobUpdate::Failed { code, reason } => {
                assert_eq!(code, codes::BAD_DEAL, "{what}: {reason}");
                assert!(reason.contains(want), "{what}: {reason}");
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(c.deal_state(deal).await.unwrap().redeemed, U256::from(JOB_PRICE), "nothing paid twice");

    // a provider above the buyer's limit: no deal is opened
    let deals_before = DealBook::load(&fdir).unwrap().deals.len();
    pay.max_price = Some(JOB_PRICE - 1);
    let err = fetcher
        .run_paid_job(&ticket, sql(q, ResultFormat::Csv), None, &pay, &out, "y.csv", |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("above"), "{err}");
    assert_eq!(DealBook::load(&fdir).unwrap().deals.len(), deals_before);

    // a failed job gets no receipt: the provider redeems nothing and the buyer refunds it all
    pay.max_price = None;
    let err = fetcher
        .run_paid_job(
            &ticket,
            sql("SELECT no_such_column FROM trades", ResultFormat::Csv),
            None,
            &pay,
            &out,
            "z.csv",
            |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Failed { code: codes::QUERY_REFUSED, .. }), "{err}");
    let book = DealBook::load(&fdir).unwrap();
    let failed = book.deals.last().unwrap().clone();
    assert_ne!(failed.id, deal);
    assert_eq!(failed.paid, 0);
    assert_eq!(c.deal_state(failed.id).await.unwrap().redeemed, U256::ZERO);

    // the attack: one job price for the whole sold dataset (`SELECT *`), read before paying.
    // The result may hold only what the price buys at the data's price per byte, so the job
    // fails, no result becomes readable and nothing is owed
    for (spec, what) in [
        (sql("SELECT * FROM trades", ResultFormat::Csv), "sql"),
        (sql("SELECT * FROM trades", ResultFormat::Parquet), "sql parquet"),
        // five symbols dictionary-encode to a few KB of Parquet: the file fits the cap, the
        // 20,000 values it carries do not
        (sql("SELECT symbol FROM trades LIMIT 20000", ResultFormat::Parquet), "compressed parquet"),
        // the query picks a compact encoding itself: one dictionary value per row counts as the
        // value, not as its 1-byte key
        (
            sql(
                "SELECT arrow_cast(symbol, 'Dictionary(Int8, Utf8)') AS s FROM trades LIMIT 20000",
                ResultFormat::Parquet,
            ),
            "dictionary parquet",
        ),
    ] {
        let err = fetcher.run_paid_job(&ticket, spec, None, &pay, &out, "all.csv", |_| {}).await.unwrap_err();
        match &err {
            JobError::Failed { code, reason, .. } => {
                assert_eq!(*code, codes::RESULT_TOO_LARGE, "{what}: {reason}");
                let cap = (JOB_PRICE / PRICE_PER_BYTE).to_string();
                assert!(reason.contains(&cap) && reason.contains("sold dataset"), "{what}: {reason}");
                if what.ends_with(" parquet") && what != "sql parquet" {
                    assert!(reason.contains("bytes of data"), "{what}: caught by its data, not its file: {reason}");
                    // and says no size the query chose (a refunded job must carry no number out)
                    assert!(!reason.contains("20000") && !reason.contains("bytes as a file"), "{what}: {reason}");
                }
            }
            other => panic!("{what}: expected RESULT_TOO_LARGE, got {other:?}"),
        }
        assert!(!out.join("all.csv").exists(), "{what}: no result written");
        let stolen = DealBook::load(&fdir).unwrap().deals.last().unwrap().clone();
        assert_eq!((stolen.paid, c.deal_state(stolen.id).await.unwrap().redeemed), (0, U256::ZERO), "{what}");
    }

    // the attack through a container: data written into file names (empty files) counts
    // against the same cap (names and 32 bytes per file): 300 names of 193 bytes are over it
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let names = "n=$(head -c 190 /dev/zero | tr '\\0' x); for i in $(seq 100 399); do : > /out/$n$i; done";
    let err = fetcher
        .run_container(&ticket, &image, sh(names), None, Some(&pay), &tmp.path().join("names"), |_| {})
        .await
        .unwrap_err();
    match &err {
        JobError::Failed { code, reason, .. } => {
            assert_eq!(*code, codes::RESULT_TOO_LARGE, "{reason}");
            assert!(reason.contains(&(JOB_PRICE / PRICE_PER_BYTE).to_string()), "{reason}");
        }
        other => panic!("expected RESULT_TOO_LARGE, got {other:?}"),
    }

    // the attack: a failed job is not paid, so its error must not carry the data (a cast
    // error quotes the value it could not cast, one value per free failed job)
    let err = fetcher
        .run_paid_job(
            &ticket,
            sql("SELECT CAST(symbol AS INT) AS x FROM trades", ResultFormat::Csv),
            None,
            &pay,
            &out,
            "c.csv",
            |_| {},
        )
        .await
        .unwrap_err();
    match &err {
        JobError::Failed { code, reason, .. } => {
            assert_eq!(*code, codes::QUERY_FAILED, "{reason}");
            assert!(!reason.contains("-USD") && reason.contains("not returned"), "{reason}");
        }
        other => panic!("expected QUERY_FAILED, got {other:?}"),
    }

    devnet.advance_time(3_700).await.unwrap();
    assert_eq!(buyer.refund(&failed.terms().unwrap()).await.unwrap(), U256::from(JOB_PRICE));
    provider.shutdown().await;

    // by default a provider runs no container on a sold dataset (a program can compress what it
    // copies out past the cap): refused before any deal is opened
    let store = ProviderStore::open(&tmp.path().join("p")).await.unwrap();
    let mut jc = jobs_config(&key);
    jc.job_price = Some(JOB_PRICE);
    let provider = selling(store, &devnet, jc, PRICE_PER_BYTE).await;
    let ticket = provider.ticket(rec.root).unwrap();
    let deals_before = DealBook::load(&fdir).unwrap().deals.len();
    let err = fetcher
        .run_container(&ticket, &image, sh("cp -r /data /out/"), None, Some(&pay), &tmp.path().join("gz"), |_| {})
        .await
        .unwrap_err();
    match &err {
        JobError::Failed { code, reason, .. } => {
            assert_eq!(*code, codes::UNSUPPORTED_JOB, "{reason}");
            assert!(reason.contains("no container jobs on sold datasets"), "{reason}");
        }
        other => panic!("expected UNSUPPORTED_JOB, got {other:?}"),
    }
    assert_eq!(DealBook::load(&fdir).unwrap().deals.len(), deals_before, "no deal for a refused job");
    provider.shutdown().await;
}
