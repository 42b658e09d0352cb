//! Partial purchase: a buyer takes one file of a sold collection and pays for that file (and the
//! names and sizes it chose by), not for the rest.

use super::*;
use bdc_fetcher::{BadRequest, DealBook, Select};

#[tokio::test(flavor = "multi_thread")]
async fn one_file_of_a_sold_collection_costs_that_file_not_the_dataset() {
    const BIG: usize = 2 << 20;
    let s = setup(BIG).await;
    let buyer = s.devnet.contracts(BUYER);
    let fetcher = Fetcher::open(FetcherConfig::test(s.dir.join("buyer"))).await.unwrap();
    let mut pay = PaidOptions::new(vec![s.devnet.address(ARBITER)]);
    pay.receipt_every = 64 << 10;
    let wallet = Wallet { chain: buyer.clone(), signer: s.devnet.signer(BUYER) };

    // a pattern that matches nothing: a clear error, after paying for the names and sizes only
    let none = FetchOptions { select: Select::files(&["*.csv"]).unwrap(), ..Default::default() };
    let err = fetcher.fetch_paid(&s.offer, &wallet, &s.dir.join("o0"), &none, &pay, |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::BadRequest(BadRequest::NothingMatches { .. })), "{err}");
    assert!(err.to_string().contains("*.csv"), "{err}");
    // a range is for raw blobs: refused before any deal
    let ranged = FetchOptions { select: Select::range(0..10).unwrap(), ..Default::default() };
    let err = fetcher.fetch_paid(&s.offer, &wallet, &s.dir.join("o0"), &ranged, &pay, |_| {}).await.unwrap_err();
    assert!(matches!(err, FetchError::BadRequest(BadRequest::RangeNeedsBlob)), "{err}");

    // the 32-byte index file alone
    let small = FetchOptions { select: Select::files(&["index.*"]).unwrap(), ..Default::default() };
    let out = s.dir.join("o1");
    let r = fetcher.fetch_paid(&s.offer, &wallet, &out, &small, &pay, |_| {}).await.unwrap();
    assert_eq!(r.fetch.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["index.bin"]);
    assert_eq!(std::fs::read(out.join("index.bin")).unwrap(), std::fs::read(s.dir.join("ds/index.bin")).unwrap());
    assert!(!out.join("trades.bin").exists());
    let book = DealBook::load(&s.dir.join("buyer")).unwrap();
    let paid_total: u128 = book.deals.iter().map(|d| d.paid).sum();
    assert_eq!(paid_total, book.deals.iter().map(|d| d.verified as u128).sum::<u128>() * PRICE, "per verified byte");
    // (no last chunk of the files not bought: a 16 KiB group of trades.bin would be over this)
    assert!(paid_total < (8 << 10) * PRICE, "names, the manifest and a 32-byte file, not 2 MiB: paid {paid_total}");
    // and the provider sent no more than that (what it could take unpaid is the window)
    let url = format!("http://{}/metrics", s.provider.metrics_addr().unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let sent: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("bdc_provider_paid_bytes_sent_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(sent < 8 << 10, "the provider sent {sent} bytes for a 32-byte file");

    // then the big file: it costs its bytes, and only once
    let big = FetchOptions { select: Select::files(&["trades.bin"]).unwrap(), ..Default::default() };
    let out = s.dir.join("o2");
    let r = fetcher.fetch_paid(&s.offer, &wallet, &out, &big, &pay, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("trades.bin")).unwrap(), std::fs::read(s.dir.join("ds/trades.bin")).unwrap());
    assert!(!out.join("index.bin").exists());
    // the file's bytes, no more
    assert_eq!(r.fetch.total_bytes, BIG as u64, "the chosen file's size is known before its bytes: {:?}", r.fetch);
    assert_eq!(r.fetch.fetched_bytes + r.fetch.local_bytes, BIG as u64, "{:?}", r.fetch);
    let book = DealBook::load(&s.dir.join("buyer")).unwrap();
    let paid_now: u128 = book.deals.iter().map(|d| d.paid).sum();
    assert_eq!(paid_now - paid_total, r.fetch.fetched_bytes as u128 * PRICE, "this run paid for what it fetched");
    // asking again for what is local dials nobody and pays nothing
    let again = fetcher.fetch_paid(&s.offer, &wallet, &s.dir.join("o3"), &big, &pay, |_| {}).await.unwrap();
    assert_eq!((again.deal, again.paid, again.fetch.fetched_bytes), (None, 0, 0));
    s.provider.shutdown().await;
}
