//! Delivering receipts the buyer signed but its provider never confirmed.
//!
//! A run that verified the dataset's last byte records its final receipt, sends it, and waits
//! for the provider to close with `DONE`, which it does only after storing the receipt. If the
//! connection breaks in between (the provider killed, the network gone), the provider may never
//! have stored it: the buyer owes it, yet the next fetch may find the whole dataset in its store
//! and dial nobody, or run in a fresh store (`--move`, a mirror) and open a new deal. So every
//! paid fetch first delivers, on a connection of its own, the newest receipt of each open deal
//! for this dataset and provider that the provider has not confirmed: a Hello, that receipt, the
//! end of the stream. The provider takes it like a resumed connection that asks for nothing,
//! stores the receipt and redeems it.

use bdc_core::{protocol::PAID_ALPN, ticket::BlobTicket};

use super::*;

impl Fetcher {
    /// Delivers the unconfirmed receipts of `offer`'s provider for the dataset of `ticket`. Best
    /// effort: a provider that cannot be reached is told on the next fetch of the dataset.
    pub(super) async fn settle(&self, ticket: &BlobTicket, offer: &Offer, wallet: &Wallet, pay: &PaidOptions) {
        let owed = match self.unconfirmed(ticket, offer, wallet).await {
            Ok(owed) => owed,
            Err(e) => {
                tracing::warn!("cannot look for receipts the provider has not confirmed: {e}");
                return;
            }
        };
        // a provider that never answers holds up nothing but this delivery
        let limit = self.connect_timeout() + pay.close_timeout + Duration::from_secs(5);
        for (deal, verified) in owed {
            let id = deal.id;
            match tokio::time::timeout(limit, self.deliver(ticket, wallet, pay, deal, verified)).await {
                Ok(Ok(true)) => tracing::info!(deal = %id, "delivered the last receipt the provider had not confirmed"),
                Ok(Ok(false)) => tracing::warn!(
                    deal = %id,
                    "sent the last receipt, but the provider did not confirm it; the next fetch of this dataset sends it again"
                ),
                // the provider is unreachable or refusing: the other deals with it would only
                // wait as long again
                Ok(Err(e)) => {
                    tracing::warn!(
                        deal = %id,
                        "cannot deliver the last receipt to the provider ({e}); the next fetch of this dataset tries again"
                    );
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        deal = %id,
                        "the provider did not take the last receipt within {limit:?}; the next fetch of this dataset tries again"
                    );
                    break;
                }
            }
        }
    }

    /// Open transfer deals of this buyer for the dataset with the provider of `offer` whose
    /// newest signed receipt the provider has not confirmed, with the bytes it pays for.
    async fn unconfirmed(
        &self,
        ticket: &BlobTicket,
        offer: &Offer,
        wallet: &Wallet,
    ) -> Result<Vec<(Deal, u64)>, FetchError> {
        let book = DealBook::load(self.data_dir())?;
        let node = B256::from(*ticket.addr().id.as_bytes());
        let mut owed = Vec::new();
        let mut now = None;
        for d in book.deals.iter().filter(|d| d.root == ticket.hash() && !d.spent && d.paid > d.confirmed) {
            let Ok(terms) = d.terms() else { continue };
            // job deals pay per job, not per byte; another provider's deal is not this one's,
            // and a deal of another key (the buyer changed wallets) cannot be signed for now
            if terms.pricePerByte == 0
                || terms.providerNodeId != node
                || terms.provider != Address::from(offer.provider)
                || terms.buyer != wallet.signer.address()
            {
                continue;
            }
            let now = match now {
                Some(n) => n,
                None => *now.insert(wallet.chain.chain_time().await.map_err(PaidError::from)?),
            };
            // an expired deal can no longer be redeemed: its provider refuses the Hello
            if terms.expiry <= now {
                continue;
            }
            owed.push((Deal { id: d.id, terms }, d.verified));
        }
        Ok(owed)
    }

    /// One connection for `deal`: the Hello, the receipt for `verified` bytes, the end. Whether
    /// the provider confirmed it.
    async fn deliver(
        &self,
        ticket: &BlobTicket,
        wallet: &Wallet,
        pay: &PaidOptions,
        deal: Deal,
        verified: u64,
    ) -> Result<bool, FetchError> {
        let book = Arc::new(Mutex::new(DealBook::load(self.data_dir())?));
        let conn = self.connect(ticket, PAID_ALPN).await?;
        let id = deal.id;
        // the receipt task sends the receipt for `base` right after the Hello, and again as the
        // final one (the provider ignores a receipt it already has)
        let resume = Resume { base: verified, skip: 0 };
        let mut session = PaidSession::new(self, wallet, pay, deal, resume, book.clone(), None);
        session.hello(&conn).await?;
        // if the caller's time limit drops this delivery, its receipt task (which rewrites the
        // deal book from its own copy) goes with it
        let _task = AbortOnDrop(session.task.as_ref().map(|t| t.abort_handle()));
        let done = session.finish(&conn).await;
        // a deal the provider refuses for good is not offered again
        if let Err(FetchError::ProviderClosed { code, .. }) = &done
            && deal_refused_for_good(*code)
        {
            let mut b = book.lock().expect("book lock");
            if let Some(d) = b.deals.iter_mut().find(|d| d.id == id) {
                d.spent = true;
            }
            b.save()?;
        }
        done?;
        let b = book.lock().expect("book lock");
        Ok(b.get(&id).is_some_and(|d| d.confirmed >= d.paid))
    }
}

/// Aborts a task when dropped (a no-op once it has ended).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
