//! Binding tests against a real anvil (spawned by `Devnet`).

use alloy::{
    primitives::{B256, U256, keccak256},
    providers::Provider,
    sol_types::SolValue,
};
use bdc_contracts::{
    ChainError, Devnet, DevnetConfig,
    bindings::TransferEscrow,
    client::OpenDeal,
    devnet::BDC,
    receipt::{Receipt, receipt_digest, sign_receipt},
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
    assert!(matches!(&err, ChainError::Reverted { reason, .. } if reason.contains("NotReleasable")), "{err}");
    d.advance_time(61).await.unwrap();
    assert_eq!(p.withdraw(&deal.terms).await.unwrap(), (bdc(36), bdc(4)));
    assert_eq!(p.balance(d.address(PROVIDER)).await.unwrap(), bdc(1_000_000) + bdc(36));
    assert_eq!(p.balance(d.address(VENDOR)).await.unwrap(), bdc(1_000_000) + bdc(4));

    // refund after expiry returns the rest; the buyer paid exactly 40
    let err = p.refund(&deal.terms).await.unwrap_err();
    assert!(matches!(&err, ChainError::Reverted { reason, .. } if reason.contains("DealNotExpired")), "{err}");
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
    assert!(matches!(&err, ChainError::Reverted { reason, .. } if reason.contains("BadSigner")), "{err}");
    // a valid receipt for deal a presented for deal b
    let for_a = sign_receipt(&d.signer(BUYER), &domain, a.id, bdc(5)).await.unwrap();
    let err = p.redeem(&b.terms, bdc(5), for_a.as_bytes().into()).await.unwrap_err();
    assert!(matches!(&err, ChainError::Reverted { reason, .. } if reason.contains("BadSigner")), "{err}");
    // a receipt for another chain id
    let other_chain = bdc_contracts::escrow_domain(1, d.deployment.escrow);
    let wrong = sign_receipt(&d.signer(BUYER), &other_chain, a.id, bdc(5)).await.unwrap();
    let err = p.redeem(&a.terms, bdc(5), wrong.as_bytes().into()).await.unwrap_err();
    assert!(matches!(&err, ChainError::Reverted { reason, .. } if reason.contains("BadSigner")), "{err}");
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
    d.contracts(BUYER).dispute(d.address(BUYER), &deal.terms).await.unwrap();
    assert!(p.deal_state(deal.id).await.unwrap().disputed);
    d.advance_time(120).await.unwrap();
    let err = p.withdraw(&deal.terms).await.unwrap_err();
    assert!(matches!(&err, ChainError::Reverted { reason, .. } if reason.contains("DealDisputed")), "{err}");
    let before = p.balance(d.address(BUYER)).await.unwrap();
    d.contracts(ARBITER).resolve(&deal.terms, bdc(3), true).await.unwrap();
    // buyer gets 3 back plus its 10 BDC bond; provider 5
    assert_eq!(p.balance(d.address(BUYER)).await.unwrap(), before + bdc(13));
    assert_eq!(p.balance(d.address(PROVIDER)).await.unwrap(), bdc(1_000_000) + bdc(5));
}
