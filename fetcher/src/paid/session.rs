//! One paid connection's receipt machinery: the Hello, and the task that signs, records and
//! sends a cumulative receipt as bytes verify.

use super::*;

/// One paid connection's receipt machinery.
#[derive(Debug)]
pub(crate) struct PaidSession {
    deal: Deal,
    price: u128,
    /// Where this run's cumulative count starts, and how many of this run's first verified bytes
    /// are re-downloads already paid for (see [`Resume`]).
    resume: Resume,
    every: u64,
    signer: PrivateKeySigner,
    store: iroh_blobs::api::Store,
    chain: Contracts<DynProvider>,
    book: Arc<Mutex<DealBook>>,
    tx: Option<mpsc::UnboundedSender<u64>>,
    /// Newest verified count of this run, and the count at which the receipt task is next woken
    /// (waking it for every 16 KiB group costs more CPU than the receipts themselves).
    run_verified: Arc<AtomicU64>,
    next_wake: AtomicU64,
    pub(super) task: Option<JoinHandle<Result<u128, PaidError>>>,
    close_timeout: Duration,
    pub(super) signed: Arc<Mutex<u128>>,
    /// Our own EndpointId, bound to the deal by the Hello.
    me: B256,
    /// The connection dialled before the deal was opened (no escrow for an unreachable
    /// provider), and when.
    dialled: Option<(Connection, std::time::Instant)>,
}

/// A connection dialled before opening a deal is used for the Hello if it is younger than this
/// (a provider closes a paid connection that sends no Hello within its hello timeout, 10 s by
/// default; opening a deal on a real chain can take longer): else the session dials again.
const DIALLED_MAX_AGE: Duration = Duration::from_secs(5);

impl PaidSession {
    /// A session for `deal` on `fetcher`'s store, signing with `wallet`'s key; it starts from
    /// the amount the book recorded as signed.
    pub(super) fn new(
        fetcher: &Fetcher,
        wallet: &Wallet,
        pay: &PaidOptions,
        deal: Deal,
        resume: Resume,
        book: Arc<Mutex<DealBook>>,
        dialled: Option<(Connection, std::time::Instant)>,
    ) -> Self {
        let signed = book.lock().expect("book lock").get(&deal.id).map_or(0, |d| d.paid);
        Self {
            price: deal.terms.pricePerByte,
            deal,
            resume,
            every: pay.receipt_every,
            signer: wallet.signer.clone(),
            store: (**fetcher.store()).clone(),
            chain: wallet.chain.clone(),
            book,
            tx: None,
            run_verified: Arc::new(AtomicU64::new(0)),
            next_wake: AtomicU64::new(pay.receipt_every),
            task: None,
            close_timeout: pay.close_timeout,
            signed: Arc::new(Mutex::new(signed)),
            me: B256::from(*fetcher.endpoint().id().as_bytes()),
            dialled,
        }
    }

    /// The connection dialled before the deal was opened, if it is still fresh and open.
    pub(crate) fn take_dialled(&mut self) -> Option<Connection> {
        self.dialled
            .take()
            .filter(|(c, at)| at.elapsed() < DIALLED_MAX_AGE && c.close_reason().is_none())
            .map(|(c, _)| c)
    }

    /// The vendor the deal pays its royalty to (what the registry named when it was opened).
    pub(crate) fn vendor(&self) -> Address {
        self.deal.terms.vendor
    }

    pub(crate) async fn hello(&mut self, conn: &Connection) -> Result<(), FetchError> {
        let domain = self.chain.domain();
        let me = self.me;
        let sig = sign_hello_sync(&self.signer, &domain, self.deal.id, me).map_err(PaidError::Sign)?;
        let hello = PaidMessage::Hello(Hello {
            version: PAID_PROTOCOL_VERSION,
            deal_id: self.deal.id.0,
            terms: self.deal.terms.abi_encode(),
            buyer_node: me.0,
            sig: sig.as_bytes().to_vec(),
        });
        let mut send = conn.open_uni().await.map_err(PaidError::Open)?;
        send.write_all(&hello.frame()).await.map_err(PaidError::Send)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx = Some(tx);
        self.task = Some(tokio::spawn(receipts(
            send,
            rx,
            self.deal.clone(),
            self.price,
            self.resume,
            self.every,
            self.signer.clone(),
            self.store.clone(),
            self.run_verified.clone(),
            self.chain.domain(),
            self.book.clone(),
            self.signed.clone(),
        )));
        Ok(())
    }

    /// Bytes verified in this run so far (cumulative).
    pub(crate) fn verified(&self, run_bytes: u64) {
        self.run_verified.fetch_max(run_bytes, Ordering::Relaxed);
        if run_bytes >= self.next_wake.load(Ordering::Relaxed)
            && let Some(tx) = &self.tx
        {
            self.next_wake.store(run_bytes + self.every, Ordering::Relaxed);
            let _ = tx.send(run_bytes);
        }
    }

    /// Sends the final receipt, ends the stream, waits for the provider's confirmation.
    pub(crate) async fn finish(&mut self, conn: &Connection) -> Result<(), FetchError> {
        self.stop().await?;
        let provider = conn.remote_id();
        match tokio::time::timeout(self.close_timeout, conn.closed()).await {
            Ok(ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() == codes::DONE as u64 => {
                self.confirmed()
            }
            Ok(ConnectionError::ApplicationClosed(c)) => {
                let code = c.error_code.into_inner();
                Err(FetchError::ProviderClosed { provider, code, reason: codes::name(code) })
            }
            Ok(other) => Err(FetchError::Transfer { provider, source: TransferError::Connection(other) }),
            Err(_) => {
                // every byte verified and every receipt recorded in deals.json: the data is good;
                // the provider only did not confirm storing the last receipt (it still redeems
                // the ones it stored)
                tracing::warn!(%provider, "the provider did not confirm the final receipt in time");
                conn.close(0u32.into(), b"done");
                Ok(())
            }
        }
    }

    /// The provider closed with `DONE` after our final receipt: it stored it.
    fn confirmed(&self) -> Result<(), FetchError> {
        let amount = *self.signed.lock().expect("signed lock");
        let mut b = self.book.lock().expect("book lock");
        if let Some(d) = b.deals.iter_mut().find(|d| d.id == self.deal.id) {
            d.confirmed = d.confirmed.max(amount);
        }
        Ok(b.save()?)
    }

    /// After a failed transfer: send the final receipt if possible, and prefer the provider's
    /// close reason over a generic stream error.
    pub(crate) async fn explain(&mut self, conn: &Connection, err: FetchError) -> FetchError {
        let _ = self.stop().await;
        if let Some(ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
            let code = c.error_code.into_inner();
            if code != codes::DONE as u64 {
                return FetchError::ProviderClosed { provider: conn.remote_id(), code, reason: codes::name(code) };
            }
        }
        err
    }

    async fn stop(&mut self) -> Result<(), FetchError> {
        // the task signs its final receipt for the newest count it was given
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(self.run_verified.load(Ordering::Relaxed));
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(PaidError::Task(e).into()),
            }
        }
        Ok(())
    }
}

/// A receipt for what verified so far goes out when progress pauses this long.
const FLUSH_WHEN_IDLE: Duration = Duration::from_millis(250);

#[allow(clippy::too_many_arguments)]
async fn receipts(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<u64>,
    deal: Deal,
    price: u128,
    resume: Resume,
    every: u64,
    signer: PrivateKeySigner,
    store: iroh_blobs::api::Store,
    run_verified: Arc<AtomicU64>,
    domain: alloy::sol_types::Eip712Domain,
    book: Arc<Mutex<DealBook>>,
    signed: Arc<Mutex<u128>>,
) -> Result<u128, PaidError> {
    let max: u128 = deal.terms.maxAmount.to::<u128>();
    let Resume { base, skip } = resume;
    let mut last = base;
    let mut seen = base;
    let send_one = async |verified: u64, send: &mut SendStream, last: bool| -> Result<(), PaidError> {
        // pay only for what survives a crash of this process: commit the store's pending entry
        // writes first (the bytes themselves are in the page cache, and iroh-blobs rebuilds a
        // partial blob's bitfield from its outboard on restart). Without this a kill -9 loses
        // the blobs created in the last ~500 ms, and the resumed run would download, and pay
        // for, them again. A no-op when no entry changed since the last receipt.
        store.sync_db().await.map_err(PaidError::Store)?;
        let amount = amount_for(verified, price).min(max);
        let sig = sign_receipt_sync(&signer, &domain, deal.id, U256::from(amount)).map_err(PaidError::Sign)?;
        // record first: a resumed run continues from the recorded count, so it must not lag
        // what we verified and signed, even if the send below fails. Each record replaces the
        // book atomically; only the final one is fsync'd, keeping the disk flush off the
        // payment path (a process crash loses nothing; a power cut can lose the last few
        // records, which makes a resumed run sign less than it could, never more).
        let (book2, id) = (book.clone(), deal.id);
        tokio::task::spawn_blocking(move || {
            let mut b = book2.lock().expect("book lock");
            if let Some(d) = b.deals.iter_mut().find(|d| d.id == id) {
                d.verified = d.verified.max(verified);
                d.paid = d.paid.max(amount);
            }
            b.save_with(last)
        })
        .await
        .map_err(PaidError::Task)??;
        *signed.lock().expect("signed lock") = amount;
        let msg = PaidMessage::Receipt(SignedReceipt {
            deal_id: deal.id.0,
            cumulative: amount,
            sig: sig.as_bytes().to_vec(),
        });
        send.write_all(&msg.frame()).await.map_err(PaidError::Send)
    };
    // a resumed deal: send the newest receipt the book recorded first, right after the Hello (a
    // buyer killed between recording and sending it still owes it; the provider, whose window
    // the killed run may have filled, waits a moment for it)
    if base > 0 {
        send_one(base, &mut send, false).await?;
    }
    let count = |run: u64| base + run.saturating_sub(skip);
    loop {
        let run = match tokio::time::timeout(FLUSH_WHEN_IDLE, rx.recv()).await {
            Ok(Some(run)) => run,
            Ok(None) => break,
            // no progress for a moment: the provider may be waiting on its window (which bytes
            // lost in a killed run can shrink below one receipt interval), so pay for what
            // verified so far
            Err(_) => {
                seen = seen.max(count(run_verified.load(Ordering::Relaxed)));
                if seen > last {
                    send_one(seen, &mut send, false).await?;
                    last = seen;
                }
                continue;
            }
        };
        seen = seen.max(count(run));
        // progress that queued up while a receipt was being recorded: pay for the newest
        while let Ok(run) = rx.try_recv() {
            seen = seen.max(count(run));
        }
        if seen >= last + every {
            send_one(seen, &mut send, false).await?;
            last = seen;
        }
    }
    if seen > last || seen == base {
        send_one(seen, &mut send, true).await?;
    }
    send.finish().map_err(PaidError::Finish)?;
    Ok(amount_for(seen, price).min(max))
}
