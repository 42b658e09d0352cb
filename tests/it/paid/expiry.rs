//! Deals near their expiry: no Hello and no byte inside the margin, every receipt redeemed in
//! time.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_is_closed_when_its_deal_expires() {
    let s = setup(200_000).await;
    let (conn, _send, _deal, _ep) = raw_buyer(&s).await;
    // admitted: nothing closes it while the deal is open
    assert!(tokio::time::timeout(Duration::from_secs(1), conn.closed()).await.is_err());
    // the deal enters the provider's 60 s safety margin before it expires: bytes sent then
    // might not be redeemed in time
    s.devnet.advance_time(3_545).await.unwrap();
    assert_eq!(close_code(&conn).await, codes::DEAL_EXPIRING as u64);
    s.provider.shutdown().await;
}

/// Bytes sent after a deal expires can never be redeemed; a provider that admits Hellos until
/// the last second and notices expiry late gives them away.
#[tokio::test(flavor = "multi_thread")]
async fn no_hello_inside_the_expiry_margin_and_no_byte_after_it() {
    let s = setup(1 << 20).await;
    // 30 s left, inside the 60 s margin: refused
    let (conn, _send, _deal, _ep) = raw_buyer_with(&s, |r| r.expiry -= 3_600 - 30).await;
    assert_eq!(close_code(&conn).await, codes::DEAL_EXPIRING as u64);
    // admitted with about 5 s to spare (a small GET is served); once they pass, not one group
    // goes out
    let (conn, mut send, _deal, _ep) = raw_buyer_with(&s, |r| r.expiry -= 3_600 - 65).await;
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    assert_eq!(fetch_paying(&conn, &mut send, small, |_| Vec::new()).await, Ok(32), "admitted");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let got = fetch_paying(&conn, &mut send, GetRequest::all(s.root), |_| Vec::new()).await;
    assert!(got.is_err(), "nothing is served inside the margin");
    assert_eq!(close_code(&conn).await, codes::DEAL_EXPIRING as u64);
    // its gate can never be used again: it is dropped when its connection ends (memory does not
    // grow with every deal a provider ever admitted)
    drop((conn, send));
    let t = Instant::now();
    while s.provider.deal_gates() != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the expired deal's gate is kept: {:?}",
            s.provider.deal_gates()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (conn, mut send, _deal, _ep) = raw_buyer(&s).await;
    let small = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
    assert_eq!(fetch_paying(&conn, &mut send, small, |_| Vec::new()).await, Ok(32), "admitted");
    assert_eq!(s.provider.deal_gates(), Some(1), "only the live deal's gate is kept");
    s.provider.shutdown().await;
}

/// With 2 s blocks and many deals entering the margin together, one transaction per deal would
/// redeem the last ones after they expire. Receipts of every deal are redeemed in time.
#[tokio::test(flavor = "multi_thread")]
async fn many_deals_expiring_together_are_all_redeemed_with_2s_blocks() {
    const DEALS: usize = 12;
    let s = setup_with(1 << 20, |c| {
        c.expiry_margin = Duration::from_secs(12);
        c.redeem_every = 1 << 40; // nothing is redeemed before the margin
    })
    .await;
    let start = s.devnet.contracts(0).chain_time().await.unwrap();
    let mut open = Vec::new();
    for _ in 0..DEALS {
        let (conn, mut send, deal, ep) = raw_buyer_with(&s, |r| r.expiry = start + 45).await;
        let req = GetRequest::blob_ranges(s.index, iroh_blobs::protocol::ChunkRanges::all());
        let got =
            fetch_paying(&conn, &mut send, req, |n| receipt(&s, BUYER, deal.id, n as u128 * PRICE)).await.unwrap();
        assert!(got > 0);
        open.push((conn, send, deal, ep, got));
    }
    let rpc = s.devnet.contracts(0);
    let _: () =
        alloy::providers::Provider::raw_request(rpc.provider(), "evm_setIntervalMining".into(), (2,)).await.unwrap();
    // every connection is closed at the margin, and every receipt redeemed before expiry
    for (conn, _, _, _, _) in &open {
        let code = match tokio::time::timeout(Duration::from_secs(60), conn.closed()).await.expect("closed") {
            ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("unexpected close: {other}"),
        };
        assert_eq!(code, codes::DEAL_EXPIRING as u64);
    }
    loop {
        if rpc.chain_time().await.unwrap() > start + 46 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, _, deal, _, got) in &open {
        let st = rpc.deal_state(deal.id).await.unwrap();
        assert_eq!(st.redeemed, U256::from(*got as u128 * PRICE), "deal {} lost its receipts", deal.id);
    }
    s.provider.shutdown().await;
}

/// A provider shut down while a buyer's paid connection is open, and started again at once on
/// the same data dir: its receipt ledger is closed by the time `shutdown` returns (before, a
/// connection's task could still hold it, and the restart failed with the database open).
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_restarted_at_once_reopens_its_ledger() {
    let s = setup(256 << 10).await;
    let (conn, mut send, deal, _ep) = raw_buyer(&s).await;
    // the provider admits the Hello (a receipt is stored for the deal), so tasks hold the ledger
    send.write_all(&receipt(&s, BUYER, deal.id, 0)).await.unwrap();
    let Setup { devnet, provider, dir, _tmp, .. } = s;
    provider.shutdown().await;
    drop(conn);
    let store = ProviderStore::open(&dir.join("provider")).await.unwrap();
    let paid =
        PaidSetup { cfg: paid_config(&devnet), chain: devnet.contracts(PROVIDER), address: devnet.address(PROVIDER) };
    let again = Provider::spawn(store, ServeConfig { paid: Some(paid), ..ServeConfig::test() }).await;
    assert!(again.is_ok(), "{:?}", again.err());
    again.unwrap().shutdown().await;
}
