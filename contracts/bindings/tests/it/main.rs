//! Binding tests against a real anvil (spawned by `Devnet`).

use alloy::{
    primitives::{B256, U256, keccak256},
    providers::Provider,
    sol_types::SolValue,
};
use bdc_contracts::{
    ChainError, Devnet, DevnetConfig,
    bindings::TransferEscrow::{self, TransferEscrowErrors},
    client::{OpenDeal, RedeemFailure, Revert},
    devnet::BDC,
    receipt::{Receipt, malleate, receipt_digest, recover_canonical, sign_receipt},
};

const VENDOR: usize = 1;
const BUYER: usize = 2;
const PROVIDER: usize = 3;
const ARBITER: usize = 4;

fn bdc(n: u64) -> U256 {
    BDC * U256::from(n)
}

async fn open(d: &Devnet, root: B256, max: U256, expiry_in: u64) -> bdc_contracts::Deal {
    let now = d.now().await.unwrap();
    let req = OpenDeal {
        provider: d.address(PROVIDER),
        provider_node_id: B256::repeat_byte(7),
        dataset_root: root,
        price_per_byte: 1_000_000_000,
        max_amount: max,
        window: 4 << 20,
        expiry: now + expiry_in,
        arbiter: d.address(ARBITER),
    };
    d.contracts(BUYER).open_deal(d.address(BUYER), &req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_receipt_digest_equals_the_contracts() {
    let d = Devnet::spawn().await.unwrap();
    let c = d.contracts(0);
    let domain = c.domain();
    for (id, amount) in [(B256::ZERO, U256::ZERO), (B256::repeat_byte(0xAB), bdc(123)), (keccak256("x"), U256::MAX)] {
        let on_chain = c.escrow().receiptDigest(id, amount).call().await.unwrap();
        let ours = receipt_digest(&domain, &Receipt { dealId: id, cumulativeAmount: amount });
        assert_eq!(on_chain, ours, "digest for ({id}, {amount})");
    }
    let sep = c.escrow().domainSeparator().call().await.unwrap();
    assert_eq!(sep, domain.separator());
}

#[tokio::test(flavor = "multi_thread")]
async fn deal_lifecycle_pays_exactly_what_was_receipted() {
    let d = Devnet::spawn_with(DevnetConfig { dispute_window: 60, ..Default::default() }).await.unwrap();
    let root = keccak256("kaiko-trades");
    d.contracts(VENDOR).register_dataset(root, 1_000, keccak256("manifest"), 0).await.unwrap();
    let start = d.contracts(0).balance(d.address(BUYER)).await.unwrap();
    let deal = open(&d, root, bdc(100), 3_600).await;
    assert_eq!(deal.id, keccak256(deal.terms.abi_encode()), "deal id is the hash of the terms");
    assert_eq!(deal.terms.royaltyBps, 1_000);
    assert_eq!(deal.terms.vendor, d.address(VENDOR));

    let p = d.contracts(PROVIDER);
    let domain = p.domain();
    let sig = sign_receipt(&d.signer(BUYER), &domain, deal.id, bdc(40)).await.unwrap();
    assert_eq!(p.redeem(&deal.terms, bdc(40), sig.as_bytes().into()).await.unwrap(), bdc(40));
    // an older receipt is a no-op, not a revert
    let old = sign_receipt(&d.signer(BUYER), &domain, deal.id, bdc(10)).await.unwrap();
    assert_eq!(p.redeem(&deal.terms, bdc(10), old.as_bytes().into()).await.unwrap(), U256::ZERO);
    let st = p.deal_state(deal.id).await.unwrap();
    assert_eq!((st.redeemed, st.paid_out, st.disputed, st.refunded), (bdc(40), U256::ZERO, false, false));

    // too early to withdraw; then after the dispute window it splits 10% to the vendor
    let err = p.withdraw(&deal.terms).await.unwrap_err();
    assert!(
        matches!(&err, ChainError::Reverted { error: Revert::Escrow(TransferEscrowErrors::NotReleasable(_)), .. }),
        "{err}"
    );
    d.advance_time(61).await.unwrap();
    assert_eq!(p.withdraw(&deal.terms).await.unwrap(), (bdc(36), bdc(4)));
    assert_eq!(p.balance(d.address(PROVIDER)).await.unwrap(), bdc(1_000_000) + bdc(36));
    assert_eq!(p.balance(d.address(VENDOR)).await.unwrap(), bdc(1_000_000) + bdc(4));

    // refund after expiry returns the rest; the buyer paid exactly 40
    let err = p.refund(&deal.terms).await.unwrap_err();
    assert!(
        matches!(&err, ChainError::Reverted { error: Revert::Escrow(TransferEscrowErrors::DealNotExpired(_)), .. }),
        "{err}"
    );
    d.advance_time(3_600).await.unwrap();
    assert_eq!(d.contracts(BUYER).refund(&deal.terms).await.unwrap(), bdc(60));
    assert_eq!(p.balance(d.address(BUYER)).await.unwrap(), start - bdc(40));
    assert_eq!(p.balance(d.deployment.escrow).await.unwrap(), U256::ZERO);

    // every state change is an event, in order
    let head = p.provider().get_block_number().await.unwrap();
    let evs = p.escrow_events(d.deployment.deploy_block, head).await.unwrap();
    let names: Vec<&str> = evs
        .iter()
        .map(|(_, e)| match e {
            TransferEscrow::TransferEscrowEvents::DealOpened(_) => "opened",
            TransferEscrow::TransferEscrowEvents::Redeemed(_) => "redeemed",
            TransferEscrow::TransferEscrowEvents::Withdrawn(_) => "withdrawn",
            TransferEscrow::TransferEscrowEvents::Refunded(_) => "refunded",
            _ => "other",
        })
        .collect();
    assert_eq!(names, ["opened", "redeemed", "withdrawn", "refunded"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_replayed_receipts_are_rejected_with_decoded_errors() {
    let d = Devnet::spawn().await.unwrap();
    let root = keccak256("r");
    d.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let a = open(&d, root, bdc(10), 3_600).await;
    let b = open(&d, root, bdc(10), 3_600).await;
    let p = d.contracts(PROVIDER);
    let domain = p.domain();
    // signed by the provider itself
    let forged = sign_receipt(&d.signer(PROVIDER), &domain, a.id, bdc(5)).await.unwrap();
    let err = p.redeem(&a.terms, bdc(5), forged.as_bytes().into()).await.unwrap_err();
    assert!(
        matches!(&err, ChainError::Reverted { error: Revert::Escrow(TransferEscrowErrors::BadSigner(_)), .. }),
        "{err}"
    );
    // a valid receipt for deal a presented for deal b
    let for_a = sign_receipt(&d.signer(BUYER), &domain, a.id, bdc(5)).await.unwrap();
    let err = p.redeem(&b.terms, bdc(5), for_a.as_bytes().into()).await.unwrap_err();
    assert!(
        matches!(&err, ChainError::Reverted { error: Revert::Escrow(TransferEscrowErrors::BadSigner(_)), .. }),
        "{err}"
    );
    // a receipt for another chain id
    let other_chain = bdc_contracts::escrow_domain(1, d.deployment.escrow);
    let wrong = sign_receipt(&d.signer(BUYER), &other_chain, a.id, bdc(5)).await.unwrap();
    let err = p.redeem(&a.terms, bdc(5), wrong.as_bytes().into()).await.unwrap_err();
    assert!(
        matches!(&err, ChainError::Reverted { error: Revert::Escrow(TransferEscrowErrors::BadSigner(_)), .. }),
        "{err}"
    );
    assert_eq!(p.deal_state(a.id).await.unwrap().redeemed, U256::ZERO);
}

#[tokio::test(flavor = "multi_thread")]
async fn dispute_freezes_until_the_arbiter_resolves() {
    let d = Devnet::spawn().await.unwrap();
    let root = keccak256("d");
    d.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let deal = open(&d, root, bdc(10), 3_600).await;
    let p = d.contracts(PROVIDER);
    let sig = sign_receipt(&d.signer(BUYER), &p.domain(), deal.id, bdc(8)).await.unwrap();
    p.redeem(&deal.terms, bdc(8), sig.as_bytes().into()).await.unwrap();
    d.contracts(BUYER).dispute(d.address(BUYER), &deal.terms, B256::repeat_byte(0xEE)).await.unwrap();
    assert!(p.deal_state(deal.id).await.unwrap().disputed);
    d.advance_time(120).await.unwrap();
    let err = p.withdraw(&deal.terms).await.unwrap_err();
    assert!(
        matches!(&err, ChainError::Reverted { error: Revert::Escrow(TransferEscrowErrors::DealDisputed(_)), .. }),
        "{err}"
    );
    let before = p.balance(d.address(BUYER)).await.unwrap();
    d.contracts(ARBITER).resolve(&deal.terms, bdc(3), true).await.unwrap();
    // buyer gets 3 back plus its 10 BDC bond; provider 5
    assert_eq!(p.balance(d.address(BUYER)).await.unwrap(), before + bdc(13));
    assert_eq!(p.balance(d.address(PROVIDER)).await.unwrap(), bdc(1_000_000) + bdc(5));
}

/// The premise of the provider's canonical-signature rule: the escrow refuses the malleated
/// forms alloy accepts, and takes their canonical form.
#[tokio::test(flavor = "multi_thread")]
async fn escrow_refuses_malleated_receipts_and_takes_their_canonical_form() {
    let d = Devnet::spawn().await.unwrap();
    let root = keccak256("m");
    d.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let deal = open(&d, root, bdc(10), 3_600).await;
    let p = d.contracts(PROVIDER);
    let sig = sign_receipt(&d.signer(BUYER), &p.domain(), deal.id, bdc(5)).await.unwrap();
    let bad = malleate(&sig);
    let err = p.redeem(&deal.terms, bdc(5), bad.to_vec().into()).await.unwrap_err();
    assert!(matches!(&err, ChainError::Reverted { .. }), "{err}");
    let digest = receipt_digest(&p.domain(), &Receipt { dealId: deal.id, cumulativeAmount: bdc(5) });
    let (who, canonical) = recover_canonical(&digest, &bad).unwrap();
    assert_eq!(who, d.address(BUYER));
    assert_eq!(p.redeem(&deal.terms, bdc(5), canonical.to_vec().into()).await.unwrap(), bdc(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_cannot_redeem_to_restart_the_dispute_window() {
    let d = Devnet::spawn().await.unwrap();
    let root = keccak256("w");
    d.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let deal = open(&d, root, bdc(10), 3_600).await;
    let buyer = d.contracts(BUYER);
    let sig = sign_receipt(&d.signer(BUYER), &buyer.domain(), deal.id, U256::from(1)).await.unwrap();
    let err = buyer.redeem(&deal.terms, U256::from(1), sig.as_bytes().into()).await.unwrap_err();
    assert!(
        matches!(err.escrow_error(), Some(TransferEscrowErrors::OnlyProvider(_))),
        "a buyer's 1-wei redeem must revert: {err}"
    );
}

/// Many deals in one transaction; the ones that cannot be redeemed are reported by type.
#[tokio::test(flavor = "multi_thread")]
async fn redeem_batch_redeems_the_good_and_reports_the_rest() {
    let d = Devnet::spawn().await.unwrap();
    let root = keccak256("b");
    d.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let p = d.contracts(PROVIDER);
    let good = open(&d, root, bdc(10), 3_600).await;
    let soon = open(&d, root, bdc(10), 30).await;
    let forged = open(&d, root, bdc(10), 3_600).await;
    let sig = |id, n| {
        let s = bdc_contracts::receipt::sign_receipt_sync(&d.signer(BUYER), &p.domain(), id, bdc(n)).unwrap();
        alloy::primitives::Bytes::from(s.as_bytes().to_vec())
    };
    let bad = bdc_contracts::receipt::sign_receipt_sync(&d.signer(PROVIDER), &p.domain(), forged.id, bdc(3)).unwrap();
    let batch = vec![
        (good.terms.clone(), bdc(4), sig(good.id, 4)),
        (soon.terms.clone(), bdc(5), sig(soon.id, 5)),
        (forged.terms.clone(), bdc(3), alloy::primitives::Bytes::from(bad.as_bytes().to_vec())),
    ];
    d.advance_time(31).await.unwrap();
    let (added, failed) = p.redeem_batch(&batch).await.unwrap();
    assert_eq!(added, bdc(4));
    assert_eq!(failed, vec![(soon.id, RedeemFailure::Expired), (forged.id, RedeemFailure::BadSigner)]);
    assert!(failed.iter().all(|(_, f)| f.is_final()));
    assert_eq!(p.deal_state(good.id).await.unwrap().redeemed, bdc(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unruled_dispute_is_settled_by_default_after_the_deadline() {
    let d = Devnet::spawn_with(DevnetConfig { arbitration_period: 120, ..Default::default() }).await.unwrap();
    let root = keccak256("s");
    d.contracts(VENDOR).register_dataset(root, 0, B256::ZERO, 0).await.unwrap();
    let deal = open(&d, root, bdc(10), 3_600).await;
    let p = d.contracts(PROVIDER);
    let sig = sign_receipt(&d.signer(BUYER), &p.domain(), deal.id, bdc(8)).await.unwrap();
    p.redeem(&deal.terms, bdc(8), sig.as_bytes().into()).await.unwrap();
    d.contracts(BUYER).dispute(d.address(BUYER), &deal.terms, B256::repeat_byte(1)).await.unwrap();
    let err = p.settle_dispute(&deal.terms).await.unwrap_err();
    assert!(matches!(err.escrow_error(), Some(TransferEscrowErrors::RulingPeriodNotOver(_))), "{err}");
    d.advance_time(121).await.unwrap();
    let err = d.contracts(ARBITER).resolve(&deal.terms, bdc(8), true).await.unwrap_err();
    assert!(matches!(err.escrow_error(), Some(TransferEscrowErrors::RulingPeriodOver(_))), "{err}");
    let before = p.balance(d.address(PROVIDER)).await.unwrap();
    d.contracts(0).settle_dispute(&deal.terms).await.unwrap();
    // receipts stand (8) and the buyer's bond (10) goes to the provider
    assert_eq!(p.balance(d.address(PROVIDER)).await.unwrap(), before + bdc(18));
    assert!(!p.deal_state(deal.id).await.unwrap().disputed);
}

/// Heads signed in Rust (`bdc_contracts::feed`) are what the feed registry checks: the struct
/// hash agrees, and two heads of one slot slash the vendor's stake for whoever shows them.
#[tokio::test(flavor = "multi_thread")]
async fn two_rust_signed_heads_of_one_slot_slash_the_feed_on_chain() {
    use bdc_contracts::{
        bindings::{BDCToken, FeedRegistry},
        feed::{FeedHead, SignedHead, equivocation, feed_domain, feed_id},
    };
    let d = Devnet::spawn_with(DevnetConfig::default()).await.unwrap();
    let vendor = d.contracts(VENDOR);
    let (feeds, token) = (d.deployment.feeds, d.deployment.token);
    let vendor_provider = vendor.provider().clone();
    BDCToken::new(token, &vendor_provider).approve(feeds, U256::MAX).send().await.unwrap().get_receipt().await.unwrap();
    let registry = FeedRegistry::new(feeds, &vendor_provider);
    let name = "kaiko/btc-usd/trades";
    let receipt = registry.register(name.into(), 1_000, B256::ZERO, 100 * 10u128.pow(18)).send().await.unwrap();
    assert!(receipt.get_receipt().await.unwrap().status());
    let id = feed_id(d.address(VENDOR), name);
    assert_eq!(registry.feedId(d.address(VENDOR), name.into()).call().await.unwrap(), id, "the same feed id");
    assert_eq!(registry.get(id).call().await.unwrap().vendor, d.address(VENDOR));

    let domain = feed_domain(d.deployment.chain_id, feeds);
    let head = |root: u8| FeedHead {
        feedId: id,
        seq: 4,
        segmentRoot: B256::repeat_byte(root),
        segmentSize: 1 << 20,
        prevHead: B256::repeat_byte(9),
        time: 1_800_000_000,
    };
    let a = SignedHead::sign(&d.signer(VENDOR), &domain, head(1)).unwrap();
    let b = SignedHead::sign(&d.signer(VENDOR), &domain, head(2)).unwrap();
    // the second head reached the subscriber in the high-s form the registry refuses: the proof
    // carries the canonical one
    let high = SignedHead {
        head: b.head.clone(),
        sig: malleate(&alloy::primitives::Signature::try_from(&b.sig[..]).unwrap()),
    };
    let proof = equivocation(&domain, d.address(VENDOR), name, &a, &high).expect("an equivocation");
    let (a, b) = (proof.a, proof.b);
    let onchain = |h: &SignedHead| FeedRegistry::FeedHead {
        feedId: h.head.feedId,
        seq: h.head.seq,
        segmentRoot: h.head.segmentRoot,
        segmentSize: h.head.segmentSize,
        prevHead: h.head.prevHead,
        time: h.head.time,
    };
    assert_eq!(registry.hashHead(onchain(&a)).call().await.unwrap(), a.hash(), "Rust's struct hash is the contract's");
    // a stranger shows both: it takes half the stake, the feed is marked for good
    let reporter = d.contracts(BUYER);
    let as_reporter = FeedRegistry::new(feeds, reporter.provider().clone());
    let before = reporter.balance(d.address(BUYER)).await.unwrap();
    let call = as_reporter.slash(onchain(&a), a.sig.to_vec().into(), onchain(&b), b.sig.to_vec().into());
    assert!(call.send().await.unwrap().get_receipt().await.unwrap().status());
    assert_eq!(reporter.balance(d.address(BUYER)).await.unwrap() - before, bdc(50));
    assert!(registry.get(id).call().await.unwrap().equivocated);
}
