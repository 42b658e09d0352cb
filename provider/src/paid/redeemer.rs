//! The redeemer: submits the newest receipt of each deal on chain — every `redeem_every` bytes,
//! when a deal's connection ends, when a deal enters its expiry margin, and for everything left
//! unredeemed at start; a redeem that did not go through is tried again every sweep.
//!
//! Deals due together go into one `redeemBatch` transaction, soonest expiry first, so many deals
//! expiring together cost one block, not one block each. The batch is simulated first
//! (`eth_call`, no gas): a deal the escrow reports it can never redeem (expired, refunded,
//! unknown, bad signature: a typed [`RedeemFailure`]) is marked lost, one it cannot redeem now is
//! left for the next sweep, and only what will redeem is sent — a batch in which nothing would
//! redeem sends no transaction.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use alloy::{
    primitives::{B256, Bytes, U256},
    providers::DynProvider,
    sol_types::SolValue,
};
use bdc_contracts::{
    Contracts,
    client::{RedeemFailure, Terms},
    receipt::{Receipt, receipt_signer_canonical},
};
use tokio::sync::mpsc;

use super::ledger::{Ledger, LedgerEntry};
use crate::metrics::ProviderMetrics;

/// Most deals in one transaction (a redeem costs ~40k gas; this stays far below a block).
const MAX_BATCH: usize = 100;

/// Runs until `rx` closes. `sweep_every` is the period of the expiry check.
pub(crate) async fn run(
    ledger: Arc<Ledger>,
    chain: Contracts<DynProvider>,
    mut rx: mpsc::UnboundedReceiver<B256>,
    expiry_margin: Duration,
    sweep_every: Duration,
    metrics: Arc<ProviderMetrics>,
) {
    let m = &metrics;
    // deals whose redeem did not go through (a failed simulation or transaction, or a refusal
    // that may pass): tried again every tick rather than only at the next trigger or at expiry
    // first: whatever a previous run left unredeemed (a provider killed right after its last
    // receipt was stored), kept for the next tick if it does not go through now
    let first = sweep(&ledger, &chain, None, m).await;
    let mut retry = still_due(&ledger, first);
    let mut tick = tokio::time::interval(sweep_every);
    tick.tick().await;
    loop {
        tokio::select! {
            id = rx.recv() => match id {
                Some(id) => {
                    // take every request queued meanwhile into the same transaction
                    let mut due = BTreeSet::from([id]);
                    while let Ok(more) = rx.try_recv() {
                        due.insert(more);
                    }
                    due.append(&mut retry);
                    redeem(&ledger, &chain, due.iter().copied().collect(), m).await;
                    retry = still_due(&ledger, due);
                }
                None => break,
            },
            _ = tick.tick() => {
                let swept = sweep(&ledger, &chain, Some(expiry_margin), m).await;
                retry.extend(still_due(&ledger, swept));
                if !retry.is_empty() {
                    let due = std::mem::take(&mut retry);
                    redeem(&ledger, &chain, due.iter().copied().collect(), m).await;
                    retry = still_due(&ledger, due);
                }
            }
        }
    }
    // final flush on shutdown
    sweep(&ledger, &chain, None, m).await;
}

/// Those of `ids` whose newest receipt is still unredeemed (and not lost).
fn still_due(ledger: &Ledger, ids: BTreeSet<B256>) -> BTreeSet<B256> {
    ids.into_iter().filter(|id| matches!(ledger.get(id), Ok(Some(e)) if redeemable(&e))).collect()
}

fn redeemable(e: &LedgerEntry) -> bool {
    !e.lost && e.amount > e.redeemed && !e.terms_abi.is_empty()
}

/// Redeems deals with unredeemed receipts; with a margin, only those expiring within it. The
/// deals it tried.
async fn sweep(
    ledger: &Ledger,
    chain: &Contracts<DynProvider>,
    margin: Option<Duration>,
    m: &ProviderMetrics,
) -> BTreeSet<B256> {
    let entries = match ledger.all() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("redeemer cannot read the ledger: {e}");
            return BTreeSet::new();
        }
    };
    let now = match margin {
        Some(_) => chain.chain_time().await.unwrap_or(0),
        None => 0,
    };
    let due: Vec<B256> = entries
        .into_iter()
        .filter(|(_, e)| redeemable(e) && margin.is_none_or(|m| e.expiry <= now + m.as_secs()))
        .map(|(id, _)| id)
        .collect();
    if !due.is_empty() {
        redeem(ledger, chain, due.clone(), m).await;
    }
    due.into_iter().collect()
}

/// Redeems the newest receipts of `ids` in as few transactions as possible.
async fn redeem(ledger: &Ledger, chain: &Contracts<DynProvider>, ids: Vec<B256>, m: &ProviderMetrics) {
    let mut batch: Vec<(B256, LedgerEntry, Terms)> = Vec::new();
    for id in ids {
        let e = match ledger.get(&id) {
            Ok(Some(e)) if redeemable(&e) => e,
            Ok(_) => continue,
            Err(err) => {
                tracing::error!(deal = %id, "redeemer cannot read the ledger: {err}");
                continue;
            }
        };
        match Terms::abi_decode(&e.terms_abi) {
            Ok(t) => batch.push((id, e, t)),
            Err(err) => tracing::error!(deal = %id, "ledger holds undecodable terms: {err}"),
        }
    }
    batch.sort_by_key(|(_, e, _)| e.expiry);
    let domain = chain.domain();
    for chunk in batch.chunks(MAX_BATCH) {
        let calls: Vec<(Terms, U256, Bytes)> = chunk
            .iter()
            .map(|(id, e, t)| {
                // a ledger written before signatures were stored canonically: the escrow takes
                // only the canonical form of the same signature
                let receipt = Receipt { dealId: *id, cumulativeAmount: U256::from(e.amount) };
                let sig = match receipt_signer_canonical(&domain, &receipt, &e.sig) {
                    Ok((_, canonical)) => canonical.to_vec(),
                    Err(_) => e.sig.clone(),
                };
                (t.clone(), U256::from(e.amount), Bytes::from(sig))
            })
            .collect();
        let verdicts = match chain.simulate_redeem_batch(&calls).await {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(deals = chunk.len(), "cannot simulate the redeem, will retry: {err}");
                continue;
            }
        };
        let mut send = Vec::new();
        let mut sent = Vec::new();
        for (((id, e, _), call), verdict) in chunk.iter().zip(calls).zip(verdicts) {
            match verdict {
                None => {
                    send.push(call);
                    sent.push((*id, e.amount));
                }
                Some(why) => {
                    m.redeem_failures.inc();
                    record_failure(ledger, *id, e.amount, why)
                }
            }
        }
        if send.is_empty() {
            continue;
        }
        let failed = match chain.redeem_batch(&send).await {
            Ok((added, failed)) => {
                tracing::info!(deals = chunk.len(), %added, failed = failed.len(), "redeemed");
                m.redeem_transactions.inc();
                failed
            }
            Err(err) => {
                tracing::warn!(deals = chunk.len(), "redeem failed, will retry: {err}");
                m.redeem_failures.inc();
                continue;
            }
        };
        for (id, amount) in sent {
            match failed.iter().find(|(f, _)| *f == id) {
                // the chain moved between the simulation and the block
                Some((_, why)) => {
                    m.redeem_failures.inc();
                    record_failure(ledger, id, amount, *why)
                }
                None => {
                    if let Some((_, e, t)) = chunk.iter().find(|(d, _, _)| *d == id) {
                        let ppb: u128 = t.pricePerByte;
                        if let Some(bytes) = amount.saturating_sub(e.redeemed).checked_div(ppb) {
                            m.paid_bytes_redeemed.inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
                        }
                    }
                    if let Err(err) = ledger.update(&id, |x| x.redeemed = x.redeemed.max(amount)) {
                        tracing::error!(deal = %id, "redeemed on chain but cannot record it: {err}");
                    }
                }
            }
        }
    }
}

/// A deal the escrow would not redeem: lost for good, or left for the next sweep.
fn record_failure(ledger: &Ledger, id: B256, amount: u128, why: RedeemFailure) {
    if why.is_final() {
        tracing::error!(deal = %id, amount, ?why, "receipt can no longer be redeemed");
        if let Err(err) = ledger.update(&id, |x| x.lost = true) {
            tracing::error!(deal = %id, "cannot record the loss: {err}");
        }
    } else {
        tracing::warn!(deal = %id, ?why, "the escrow refuses this redeem now; will retry");
    }
}
