//! The redeemer: submits the newest receipt of each deal on chain — every `redeem_every` bytes,
//! when a deal's connection ends, ahead of expiry, and for everything left unredeemed at start.

use std::{sync::Arc, time::Duration};

use alloy::{
    primitives::{B256, Bytes, U256},
    providers::DynProvider,
    sol_types::SolValue,
};
use bdc_contracts::{ChainError, Contracts, client::Terms};
use tokio::sync::mpsc;

use super::ledger::Ledger;

/// Runs until `rx` closes. `sweep_every` is the period of the expiry check.
pub(crate) async fn run(
    ledger: Arc<Ledger>,
    chain: Contracts<DynProvider>,
    mut rx: mpsc::UnboundedReceiver<B256>,
    expiry_margin: Duration,
    sweep_every: Duration,
) {
    // first: whatever a previous run left unredeemed
    sweep(&ledger, &chain, None).await;
    let mut tick = tokio::time::interval(sweep_every);
    tick.tick().await;
    loop {
        tokio::select! {
            id = rx.recv() => match id {
                Some(id) => redeem(&ledger, &chain, id).await,
                None => break,
            },
            _ = tick.tick() => sweep(&ledger, &chain, Some(expiry_margin)).await,
        }
    }
    // final flush on shutdown
    sweep(&ledger, &chain, None).await;
}

/// Redeems deals with unredeemed receipts; with a margin, only those expiring within it.
async fn sweep(ledger: &Ledger, chain: &Contracts<DynProvider>, margin: Option<Duration>) {
    let entries = match ledger.all() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("redeemer cannot read the ledger: {e}");
            return;
        }
    };
    let now = match margin {
        Some(_) => chain.chain_time().await.unwrap_or(0),
        None => 0,
    };
    for (id, e) in entries {
        if e.lost || e.amount <= e.redeemed {
            continue;
        }
        if let Some(m) = margin
            && e.expiry > now + m.as_secs()
        {
            continue;
        }
        redeem(ledger, chain, id).await;
    }
}

async fn redeem(ledger: &Ledger, chain: &Contracts<DynProvider>, id: B256) {
    let e = match ledger.get(&id) {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(deal = %id, "redeemer cannot read the ledger: {e}");
            return;
        }
    };
    if e.lost || e.amount <= e.redeemed {
        return;
    }
    let terms = match Terms::abi_decode(&e.terms_abi) {
        Ok(t) => t,
        Err(err) => {
            tracing::error!(deal = %id, "ledger holds undecodable terms: {err}");
            return;
        }
    };
    match chain.redeem(&terms, U256::from(e.amount), Bytes::from(e.sig.clone())).await {
        Ok(delta) => {
            tracing::info!(deal = %id, cumulative = e.amount, %delta, "redeemed");
            if let Err(err) = ledger.update(&id, |x| x.redeemed = x.redeemed.max(e.amount)) {
                tracing::error!(deal = %id, "redeemed on chain but cannot record it: {err}");
            }
        }
        Err(ChainError::Reverted { reason, .. })
            if ["DealExpired", "AlreadyRefunded", "UnknownDeal"].iter().any(|r| reason.contains(r)) =>
        {
            tracing::error!(deal = %id, amount = e.amount, "receipt can no longer be redeemed: {reason}");
            let _ = ledger.update(&id, |x| x.lost = true);
        }
        Err(err) => tracing::warn!(deal = %id, "redeem failed, will retry: {err}"),
    }
}
