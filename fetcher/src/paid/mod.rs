//! Paying for a fetch: deals, the Hello, and cumulative receipts.
//!
//! [`Fetcher::fetch_paid`] takes a provider's [`Offer`], opens a deal on the escrow (or reuses an
//! open one for the same dataset and provider), dials `bdc/paid/1`, sends a signed `Hello`, and
//! fetches exactly like a free fetch while a task signs a cumulative receipt every
//! `receipt_every` verified bytes and a final one for everything verified. Every receipt is
//! recorded in `<data-dir>/deals.json` before it is sent, so a resumed fetch continues the same
//! deal and never pays twice for a byte.
//!
//! A receipt is signed only after the store committed its entries, so what the buyer paid for
//! survives a kill -9 of the buyer. A resumed run compares what the deal book paid for with
//! what the store holds ([`Resume`]): bytes lost anyway (at most a window of them) are
//! re-downloaded without paying again. The newest recorded receipt is sent again right after
//! the Hello.
//!
//! Amounts: `verified bytes × price_per_byte` (exact integer arithmetic, no rounding), capped at
//! the deal's maximum. "Verified bytes" are all payload bytes iroh-blobs verified under the deal,
//! including the collection's own small blobs (hash sequence, names).

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use alloy::{
    primitives::{Address, B256, U256},
    providers::DynProvider,
    signers::local::PrivateKeySigner,
    sol_types::SolValue,
};
use bdc_contracts::{
    Contracts, Deal,
    client::OpenDeal,
    receipt::{sign_hello_sync, sign_receipt_sync},
};
use bdc_core::{
    paid::{Hello, Offer, PAID_PROTOCOL_VERSION, PaidMessage, SignedReceipt, amount_for, codes},
    ticket::parse_ticket,
};
use iroh::endpoint::{Connection, ConnectionError, SendStream};
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};

pub use crate::deals::{BuyerDeal, DealBook};
pub use error::{BookError, PaidError};

mod error;
mod settle;
use crate::{
    deals::Resume,
    fetch::{FetchError, FetchEvent, FetchOptions, FetchReport, Fetcher, TransferError},
};

/// A buyer's price ceiling unless it sets one: 1,000 BDC per GiB (BDC has 18 decimals).
pub const DEFAULT_MAX_PRICE_PER_GIB: u128 = 1_000 * 10u128.pow(18);

/// The most a new deal escrows unless the buyer says otherwise: 1,000 BDC.
pub const DEFAULT_MAX_DEPOSIT: u128 = 1_000 * 10u128.pow(18);

/// How a buyer pays.
#[derive(Debug, Clone)]
pub struct PaidOptions {
    /// Refuse offers above this price (token base units per byte; default
    /// [`DEFAULT_MAX_PRICE_PER_GIB`] per GiB; None: no ceiling).
    pub max_price_per_byte: Option<u128>,
    /// Refuse to open a deal escrowing more than this (an offer's size × price, which neither
    /// the offer's nor a market's size proves) unless `deposit` is given; default
    /// [`DEFAULT_MAX_DEPOSIT`].
    pub max_deposit: u128,
    /// Sign a receipt every this many verified bytes (must fit the provider's window).
    pub receipt_every: u64,
    /// A new deal expires this long after it opens.
    pub deal_duration: Duration,
    /// The arbiters this buyer trusts, in order of preference: a new deal names the first of
    /// them that the provider's offer accepts (none in common: no deal).
    pub arbiters: Vec<Address>,
    /// Escrow for a new deal (default: the offer's full price).
    pub deposit: Option<u128>,
    /// How long to wait for the provider to confirm the final receipt.
    pub close_timeout: Duration,
}

impl PaidOptions {
    pub fn new(arbiters: Vec<Address>) -> Self {
        Self {
            max_price_per_byte: Some(bdc_core::paid::price_per_byte(DEFAULT_MAX_PRICE_PER_GIB)),
            max_deposit: DEFAULT_MAX_DEPOSIT,
            receipt_every: 1 << 20,
            deal_duration: Duration::from_secs(24 * 3600),
            arbiters,
            deposit: None,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// The arbiter of a new deal: the first arbiter the buyer trusts that the provider accepts. A
/// provider refuses deals naming an arbiter it does not accept, and a buyer must not take the
/// provider's word for who is fair (a provider may list itself).
pub fn choose_arbiter(trusted: &[Address], accepted: &[[u8; 20]]) -> Result<Address, PaidError> {
    let accepted: Vec<Address> = accepted.iter().map(|a| Address::from(*a)).collect();
    trusted
        .iter()
        .find(|a| accepted.contains(a))
        .copied()
        .ok_or_else(|| PaidError::ArbiterNotAccepted { trusted: trusted.to_vec(), accepted })
}

/// The buyer's chain identity: a client on the escrow and the key that signs deals and receipts.
#[derive(Debug, Clone)]
pub struct Wallet {
    pub chain: Contracts<DynProvider>,
    pub signer: PrivateKeySigner,
}

/// What a paid fetch did.
#[derive(Debug, Clone, Serialize)]
pub struct PaidReport {
    #[serde(flatten)]
    pub fetch: FetchReport,
    pub deal: Option<B256>,
    /// Cumulative amount signed for the deal (token base units).
    pub paid: u128,
    pub price_per_byte: u128,
}

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
    task: Option<JoinHandle<Result<u128, PaidError>>>,
    close_timeout: Duration,
    signed: Arc<Mutex<u128>>,
    /// Our own EndpointId, bound to the deal by the Hello.
    me: B256,
    /// The connection dialled before the deal was opened (no escrow for an unreachable
    /// provider), and when.
    dialled: Option<(Connection, std::time::Instant)>,
}

/// How often a buyer asks again when the provider does not know its deal yet (its chain node
/// lags the buyer's), waiting 1, 2, 3 s.
const UNKNOWN_DEAL_RETRIES: u32 = 3;

/// A connection dialled before opening a deal is used for the Hello if it is younger than this
/// (a provider closes a paid connection that sends no Hello within its hello timeout, 10 s by
/// default; opening a deal on a real chain can take longer): else the session dials again.
const DIALLED_MAX_AGE: Duration = Duration::from_secs(5);

impl PaidSession {
    /// A session for `deal` on `fetcher`'s store, signing with `wallet`'s key; it starts from
    /// the amount the book recorded as signed.
    fn new(
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

/// Close codes after which the provider will never serve this deal again.
fn deal_refused_for_good(code: u64) -> bool {
    [
        codes::WINDOW_SPENT,
        codes::TERMS_NOT_ACCEPTED,
        codes::ARBITER_NOT_ACCEPTED,
        codes::NOT_THIS_PROVIDER,
        codes::DEAL_NOT_OPEN,
        codes::DEAL_EXPIRING,
    ]
    .iter()
    .any(|c| *c as u64 == code)
}

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

impl Fetcher {
    /// Buys and fetches the dataset of `offer`.
    pub async fn fetch_paid(
        &self,
        offer: &Offer,
        wallet: &Wallet,
        out: &Path,
        opts: &FetchOptions,
        pay: &PaidOptions,
        on: impl FnMut(FetchEvent),
    ) -> Result<PaidReport, FetchError> {
        let (chain, signer) = (&wallet.chain, &wallet.signer);
        let ticket = parse_ticket(&offer.ticket).map_err(PaidError::Offer)?;
        opts.select.check_format(ticket.format())?;
        let d = chain.deployment();
        let escrow = Address::from(offer.escrow);
        if offer.chain_id != d.chain_id || escrow != d.escrow {
            return Err(PaidError::WrongChain {
                offer_chain: offer.chain_id,
                offer_escrow: escrow,
                chain: d.chain_id,
                escrow: d.escrow,
            }
            .into());
        }
        // a receipt this buyer signed and its provider never confirmed (a run that lost its
        // connection after its final receipt, or was killed) is owed: deliver it first, also
        // when nothing is left to fetch, the fetch runs in another store (`--move`, a mirror),
        // or this offer is refused below
        self.settle(&ticket, offer, wallet, pay).await;
        if let Some(max) = pay.max_price_per_byte
            && offer.price_per_byte > max
        {
            return Err(PaidError::PriceTooHigh { offered: offer.price_per_byte, max }.into());
        }
        if pay.deposit.is_none() && offer.full_price() > pay.max_deposit {
            return Err(PaidError::DepositTooHigh { needed: offer.full_price(), max: pay.max_deposit }.into());
        }
        let arbiter = choose_arbiter(&pay.arbiters, &offer.arbiters)?;
        if pay.deal_duration.as_secs() <= offer.expiry_margin {
            return Err(
                PaidError::DealTooShort { duration: pay.deal_duration.as_secs(), margin: offer.expiry_margin }.into()
            );
        }
        if pay.receipt_every + bdc_core::protocol::CHUNK_GROUP_BYTES > offer.window {
            return Err(PaidError::WindowTooSmall { every: pay.receipt_every, window: offer.window }.into());
        }
        if self.holds(&ticket, opts).await? {
            let fetch = self.run(&ticket, out, opts, None, on).await?;
            return Ok(PaidReport { fetch, deal: None, paid: 0, price_per_byte: offer.price_per_byte });
        }
        let mut on = on;
        let mut retried = false;
        let mut aborts = 0;
        let mut unknown = 0;
        let mut carry: Option<(Deal, u64)> = None;
        loop {
            let book = Arc::new(Mutex::new(DealBook::load(self.data_dir())?));
            let root = ticket.hash();
            let node = B256::from(*ticket.addr().id.as_bytes());
            let now = chain.chain_time().await.map_err(PaidError::from)?;
            // reuse an open deal for this dataset and provider, if it has time and money left
            // a deal the provider did not know yet is asked again as it is
            let mut reuse = carry.take();
            let candidates: Vec<BuyerDeal> = if reuse.is_some() {
                Vec::new()
            } else {
                book.lock().expect("book lock").deals.iter().filter(|x| x.root == root).cloned().collect()
            };
            for cand in candidates {
                let Ok(t) = cand.terms() else { continue };
                if cand.spent
                    // a deal opened before the buyer lowered its ceiling is not reused above it
                    || pay.max_price_per_byte.is_some_and(|max| t.pricePerByte > max)
                    || t.providerNodeId != node
                    // a job deal (paid per job: no price per byte, no window) buys no bytes
                    || t.pricePerByte == 0
                    || t.window == 0
                    || t.provider != Address::from(offer.provider)
                    // a deal of another key (the buyer changed wallets) is not this one's to use
                    || t.buyer != signer.address()
                    || t.expiry <= now + offer.expiry_margin + 120
                    || !offer.arbiters.contains(&t.arbiter.into_array())
                    || !pay.arbiters.contains(&t.arbiter)
                {
                    continue;
                }
                let st = chain.deal_state(cand.id).await.map_err(PaidError::from)?;
                if st.exists && !st.refunded && !st.disputed && cand.paid < t.maxAmount.to::<u128>() {
                    reuse = Some((Deal { id: cand.id, terms: t }, cand.verified));
                    break;
                }
            }
            let reused = reuse.is_some();
            let mut dialled = None;
            let (deal, base) = match reuse {
                Some(x) => x,
                None => {
                    // no escrow for a provider that cannot be reached: dial it first (the
                    // session sends its Hello on this connection if it is still fresh)
                    dialled =
                        Some((self.connect(&ticket, bdc_core::protocol::PAID_ALPN).await?, std::time::Instant::now()));
                    let max_amount = pay.deposit.unwrap_or_else(|| offer.full_price()).max(1);
                    let req = OpenDeal {
                        provider: Address::from(offer.provider),
                        provider_node_id: node,
                        dataset_root: B256::from(*root.as_bytes()),
                        price_per_byte: offer.price_per_byte,
                        max_amount: U256::from(max_amount),
                        window: offer.window,
                        expiry: now + pay.deal_duration.as_secs(),
                        arbiter,
                    };
                    let deal = chain.open_deal(signer.address(), &req).await.map_err(PaidError::from)?;
                    tracing::info!(deal = %deal.id, max_amount, "deal opened");
                    let mut b = book.lock().expect("book lock");
                    b.upsert(BuyerDeal {
                        id: deal.id,
                        terms: hex::encode(deal.terms.abi_encode()),
                        root,
                        verified: 0,
                        paid: 0,
                        spent: false,
                        confirmed: 0,
                    });
                    b.save()?;
                    (deal, 0)
                }
            };
            // what this buyer paid for the dataset over all its deals, against what the store
            // still holds of it (a kill -9 can leave either more or less)
            let paid_for_root: u64 =
                book.lock().expect("book lock").deals.iter().filter(|x| x.root == root).map(|x| x.verified).sum();
            let held =
                self.store().remote().local(ticket.hash_and_format()).await.map_err(FetchError::store)?.local_bytes();
            // the book's deals filled the fetcher's own store: bytes a staging or lent store
            // lacks were never lost from it, so nothing is skipped there (else every `--move` of
            // a dataset within one window would be free)
            let resume = match self.fills_own_store() {
                true => Resume::new(base, paid_for_root, held, deal.terms.window.min(offer.window)),
                false => Resume { base, skip: 0 },
            };
            if resume.skip > 0 {
                tracing::info!(deal = %deal.id, paid_for_root, held, ?resume, "resuming: the store holds a different amount than was paid for");
            }
            let mut session = PaidSession::new(self, wallet, pay, deal.clone(), resume, book.clone(), dialled);
            let signed = session.signed.clone();
            let fetch = self.run(&ticket, out, opts, Some(&mut session), &mut on).await;
            let paid = *signed.lock().expect("signed lock");
            // the provider's store was busy (or its copy is bad): resume on the same deal
            if let Err(e @ FetchError::ProviderAborted { .. }) = &fetch
                && aborts < crate::fetch::ABORT_RETRIES
            {
                aborts += 1;
                tracing::info!(deal = %deal.id, attempt = aborts, "{e}: resuming");
                tokio::time::sleep(crate::fetch::abort_backoff(aborts)).await;
                continue;
            }
            // the provider's chain node has not seen the deal yet (it was opened a moment ago):
            // ask again on the same deal rather than give up on a provider that will serve it
            if let Err(FetchError::ProviderClosed { code, .. }) = &fetch
                && *code == codes::UNKNOWN_DEAL as u64
                && unknown < UNKNOWN_DEAL_RETRIES
            {
                unknown += 1;
                let verified = book.lock().expect("book lock").get(&deal.id).map(|d| d.verified).unwrap_or(base);
                carry = Some((deal.clone(), verified));
                tracing::info!(deal = %deal.id, attempt = unknown, "the provider does not know the deal yet: asking again");
                tokio::time::sleep(Duration::from_secs(unknown as u64)).await;
                continue;
            }
            // a deal the provider refuses for good (its window spent by a killed run, terms or
            // arbiter it does not accept, closed on chain) is never reused; a reused deal whose
            // window is spent buys the rest on a new deal (once)
            if let Err(FetchError::ProviderClosed { code, .. }) = &fetch
                && deal_refused_for_good(*code)
            {
                let mut b = book.lock().expect("book lock");
                if let Some(d) = b.deals.iter_mut().find(|d| d.id == deal.id) {
                    d.spent = true;
                }
                b.save()?;
                if reused && !retried && *code == codes::WINDOW_SPENT as u64 {
                    tracing::info!(deal = %deal.id, "the provider says this deal's window is spent: opening a new deal");
                    retried = true;
                    continue;
                }
            }
            let ppb: u128 = deal.terms.pricePerByte;
            if let Some(bytes) = paid.checked_div(ppb) {
                self.metrics().paid_bytes.inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
            }
            if fetch.is_err() {
                self.metrics().fetches_failed.inc();
            }
            return Ok(PaidReport {
                fetch: fetch?,
                deal: Some(deal.id),
                paid,
                price_per_byte: deal.terms.pricePerByte,
            });
        }
    }
}
