//! Receipts: verified offline against the deal, stored durably before the gate counts them.

use super::*;

/// A verified receipt waiting to be stored.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) amount: u128,
    pub(super) bytes: u64,
    pub(super) sig: Vec<u8>,
}

/// Verifies a receipt offline. Ok(None) if it is not above `newest` (stale or repeated: harmless).
pub(super) fn check_receipt(
    shared: &Shared,
    gate: &DealGate,
    r: &SignedReceipt,
    newest: u128,
) -> Result<Option<Pending>, ReceiptRefusal> {
    let id = gate.deal.id;
    let t = &gate.deal.terms;
    if r.deal_id != id.0 {
        return Err(ReceiptRefusal::OtherDeal { deal: id, got: B256::from(r.deal_id) });
    }
    let receipt = Receipt { dealId: id, cumulativeAmount: alloy::primitives::U256::from(r.cumulative) };
    // the escrow accepts one form of each signature: store that one, never the bytes sent
    let sig = match receipt_signer_canonical(&shared.chain.domain(), &receipt, &r.sig) {
        Ok((a, canonical)) if a == t.buyer => canonical.to_vec(),
        _ => return Err(ReceiptRefusal::BadSignature(id)),
    };
    if r.cumulative > t.maxAmount.to::<u128>() {
        return Err(ReceiptRefusal::AboveMax { amount: r.cumulative, max: t.maxAmount.to::<u128>() });
    }
    let bytes = bytes_for(r.cumulative, gate.price);
    let s = gate.state.lock().expect("gate lock");
    // a group is counted before it is written, so `sent` (plus what an earlier process may
    // have sent) covers all the buyer can have
    if bytes > s.sent + s.carry {
        return Err(ReceiptRefusal::AboveSent { bytes, sent: s.sent + s.carry });
    }
    if r.cumulative <= s.receipted_amount.max(newest) {
        return Ok(None);
    }
    Ok(Some(Pending { amount: r.cumulative, bytes, sig }))
}

/// Stores the newest verified receipt of a connection durably, then lets the gate count it.
/// Receipts that arrive while a commit runs are coalesced: only the newest of them is stored
/// next (they are cumulative), so one fsync covers many receipts when the disk is slow.
pub(super) async fn store_receipts(
    shared: Arc<Shared>,
    gate: Arc<DealGate>,
    mut rx: watch::Receiver<Option<Pending>>,
) -> Result<(), LedgerError> {
    let id = gate.deal.id;
    loop {
        let more = rx.changed().await.is_ok();
        let newest = rx.borrow_and_update().clone();
        if let Some(p) = newest
            && p.amount > gate.state.lock().expect("gate lock").receipted_amount
        {
            let (ledger, amount, sig) = (shared.ledger.clone(), p.amount, p.sig);
            // off the async workers: a commit fsyncs
            tokio::task::spawn_blocking(move || {
                ledger.update(&id, |e| {
                    if amount > e.amount {
                        e.amount = amount;
                        e.sig = sig;
                    }
                })
            })
            .await
            .map_err(LedgerError::Task)
            .and_then(|r| r)?;
            let trigger = {
                let mut s = gate.state.lock().expect("gate lock");
                if p.amount > s.receipted_amount {
                    s.receipted_amount = p.amount;
                    shared.metrics.paid_bytes_receipted.inc_by(p.bytes.saturating_sub(s.receipted_bytes));
                    s.receipted_bytes = p.bytes;
                }
                let every = bdc_core::paid::amount_for(shared.cfg.redeem_every, gate.price);
                if s.receipted_amount >= s.last_trigger.saturating_add(every) {
                    s.last_trigger = s.receipted_amount;
                    true
                } else {
                    false
                }
            };
            gate.notify.notify_waiters();
            if trigger {
                let _ = shared.redeem_tx.send(id);
            }
        }
        if !more {
            return Ok(());
        }
    }
}
