//! Job deals: admission (one job per deal, long enough to be redeemed), and the receipt after
//! `Done`.

use super::*;

/// Checks a job deal (the same checks as a transfer deal's Hello, see
/// `crate::paid::admission`) and claims it: one job per deal, recorded in the ledger.
pub(super) async fn admit_job_deal(
    pay: &JobPayments,
    price: u128,
    peer: EndpointId,
    dataset: Hash,
    p: &JobPayment,
    needs: Duration,
) -> Result<Deal, Fail> {
    let admitted = pay.admit(p, peer, price, dataset).await.map_err(|e| match e {
        crate::paid::admission::AdmitError::Chain(_) | crate::paid::admission::AdmitError::Ledger(_) => {
            JobFailure::from_error(FailureKind::Internal, e)
        }
        _ => JobFailure::from_error(FailureKind::BadDeal, e),
    })?;
    let deal = admitted.deal;
    let (id, t) = (deal.id, &deal.terms);
    // the receipt comes after the queue, the run and the buyer's fetch: it must still be
    // redeemable then (the redeemer also needs the expiry margin admission checked)
    if admitted.now + needs.as_secs() >= t.expiry {
        return Err(JobFailure::new(
            FailureKind::BadDeal,
            format!(
                "deal {id} expires too soon: in {} s, and the queue, run and receipt may take {} s",
                t.expiry.saturating_sub(admitted.now),
                needs.as_secs()
            ),
        ));
    }
    let mut fresh = false;
    pay.ledger
        .update(&id, |e| {
            if e.terms_abi.is_empty() {
                fresh = true;
                e.terms_abi = deal.terms.abi_encode();
                e.expiry = t.expiry;
                e.reserved = 1;
            }
        })
        .map_err(|e| JobFailure::from_error(FailureKind::Internal, e))?;
    if !fresh {
        return Err(JobFailure::new(FailureKind::BadDeal, format!("deal {id} was already used for a job")));
    }
    Ok(deal)
}

/// A job deal must stay open at least this long after the job is admitted.
pub(super) const JOB_DEAL_MARGIN_SECS: u64 = 60;

/// How long a job admitted now may take until its receipt is stored: the jobs ahead of it and
/// its own run (each up to the wall-time limit), the receipt wait, and a minute to spare.
pub(super) fn job_needs(shared: &Shared) -> Duration {
    let slots = shared.cfg.concurrency.max(1);
    // `waiting` counts this job already (its queue slot is taken before admission)
    let runs = (shared.waiting.load(Ordering::SeqCst).saturating_sub(1) / slots + 1) as u32;
    shared.cfg.limits.wall_time * runs + shared.cfg.receipt_timeout + Duration::from_secs(JOB_DEAL_MARGIN_SECS)
}

/// Reads the buyer's receipt for a finished paid job, checks it, stores it and hands the deal
/// to the redeemer; the amount receipted.
pub(super) async fn take_receipt(
    shared: &Shared,
    deal: &Deal,
    price: u128,
    recv: &mut RecvStream,
) -> Result<u128, Fail> {
    let pay = shared.pay.as_ref().ok_or(JobFailure::new(FailureKind::Internal, "no payments configured"))?;
    let bad = |r: String| JobFailure::new(FailureKind::BadDeal, r);
    let read = bdc_core::jobs::read::<SignedReceipt, _>(recv, MAX_REQUEST_BYTES);
    let r = match tokio::time::timeout(shared.cfg.receipt_timeout, read).await {
        Err(_) => return Err(bad(format!("no receipt within {:?}", shared.cfg.receipt_timeout))),
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Err(bad("the stream ended without a receipt".into())),
        Ok(Err(e)) => return Err(JobFailure::caused(FailureKind::BadDeal, "no receipt", e)),
    };
    if r.deal_id != deal.id.0 {
        return Err(bad(format!("receipt names deal {}, not {}", B256::from(r.deal_id), deal.id)));
    }
    if r.cumulative < price || r.cumulative > deal.terms.maxAmount.to::<u128>() {
        return Err(bad(format!("receipt for {}: the job costs {price}", r.cumulative)));
    }
    let receipt = Receipt { dealId: deal.id, cumulativeAmount: U256::from(r.cumulative) };
    // stored in the one form the escrow accepts
    let sig = match receipt_signer_canonical(&pay.chain.domain(), &receipt, &r.sig) {
        Ok((a, canonical)) if a == deal.terms.buyer => canonical.to_vec(),
        _ => return Err(bad("receipt not signed by the deal's buyer".into())),
    };
    pay.ledger
        .update(&deal.id, |e| {
            if r.cumulative > e.amount {
                e.amount = r.cumulative;
                e.sig = sig.clone();
            }
        })
        .map_err(|e| JobFailure::from_error(FailureKind::Internal, e))?;
    let _ = pay.redeem_tx.send(deal.id);
    tracing::info!(deal = %deal.id, amount = r.cumulative, "job receipt stored");
    Ok(r.cumulative)
}
