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
//! what the store holds (`Resume`): bytes lost anyway (at most a window of them) are
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
    ticket::{BlobTicket, parse_ticket},
};
use iroh::endpoint::{Connection, ConnectionError, SendStream};
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};

pub use crate::deals::{BuyerDeal, DealBook};
pub use error::{BookError, PaidError};
pub(crate) use session::PaidSession;

mod error;
mod session;
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
    /// The deal with the first provider.
    pub deal: Option<B256>,
    /// Cumulative amount signed, over every deal of this fetch (token base units).
    pub paid: u128,
    pub price_per_byte: u128,
    /// Each provider's deal and what was signed on it, for a fetch from several at once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deals: Vec<SourceDeal>,
}

/// One provider's deal in a multi-source paid fetch.
#[derive(Debug, Clone, Serialize)]
pub struct SourceDeal {
    pub provider: Address,
    /// The provider's node (its [`SourceReport`](crate::SourceReport) in `fetch.sources`).
    pub node: iroh::EndpointId,
    pub deal: B256,
    /// Cumulative amount signed on this deal.
    pub paid: u128,
}

impl PaidReport {
    /// The deals whose provider sent bytes that did not verify, with the bytes that verified
    /// from it before: what a buyer reports to a market (`POST /faults`).
    pub fn faulty_deals(&self) -> Vec<(B256, u64)> {
        let source = |node| self.fetch.sources.iter().find(|s| s.provider == node);
        self.deals.iter().filter_map(|d| source(d.node).filter(|s| s.lied).map(|s| (d.deal, s.bytes))).collect()
    }
}

/// How often a buyer asks again when the provider does not know its deal yet (its chain node
/// lags the buyer's), waiting 1, 2, 3 s.
const UNKNOWN_DEAL_RETRIES: u32 = 3;

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

/// The buyer's limits against an offer; the arbiter a new deal with it names.
fn check_offer(offer: &Offer, pay: &PaidOptions) -> Result<Address, FetchError> {
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
    Ok(arbiter)
}

/// A deal to buy with: an open one of the book, or a new one; with the bytes it paid for,
/// whether it was reused, and the connection dialled before opening it.
type DealChoice = (Deal, u64, bool, Option<(Connection, std::time::Instant)>);

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
        self.fetch_paid_from(std::slice::from_ref(offer), wallet, out, opts, pay, on).await
    }

    /// Buys and fetches one dataset from the providers of `offers` at once: a deal with each
    /// (opened or reused), each paid by receipts for exactly the verified bytes it delivered,
    /// so every provider's window holds on its own. The first offer's provider gives the sizes
    /// and names; another whose offer this buyer refuses, or that cannot serve, is dropped
    /// (said by [`FetchEvent::Dropped`]) and the others take its pieces. No piece is fetched
    /// twice unless its first provider failed it (no endgame: a duplicate would cost money).
    pub async fn fetch_paid_from(
        &self,
        offers: &[Offer],
        wallet: &Wallet,
        out: &Path,
        opts: &FetchOptions,
        pay: &PaidOptions,
        mut on: impl FnMut(FetchEvent),
    ) -> Result<PaidReport, FetchError> {
        let mut left = offers.to_vec();
        loop {
            match self.buy(&left, wallet, out, opts, pay, &mut on).await {
                // the provider that was to give the sizes and names failed (or its offer is
                // refused): the next one does, with the others' deals as they are (what
                // verified stays in the store; a deal opened with it keeps what it paid)
                Err(e) if left.len() > 1 && e.another_provider_may_serve() && first_failed(&e, &left[0]) => {
                    let provider = parse_ticket(&left[0].ticket).map_err(PaidError::Offer)?.addr().id;
                    on(FetchEvent::Dropped { provider, reason: e.to_string() });
                    left.remove(0);
                }
                res => return res,
            }
        }
    }

    /// [`fetch_paid_from`](Self::fetch_paid_from) with `offers[0]`'s provider answering the
    /// probe.
    async fn buy(
        &self,
        offers: &[Offer],
        wallet: &Wallet,
        out: &Path,
        opts: &FetchOptions,
        pay: &PaidOptions,
        on: impl FnMut(FetchEvent),
    ) -> Result<PaidReport, FetchError> {
        let chain = &wallet.chain;
        let Some((offer, rest)) = offers.split_first() else {
            return Err(crate::fetch::BadRequest::NoProvider.into());
        };
        let ticket = parse_ticket(&offer.ticket).map_err(PaidError::Offer)?;
        opts.select.check_format(ticket.format())?;
        check_chain(offer, wallet)?;
        // a receipt this buyer signed and its provider never confirmed (a run that lost its
        // connection after its final receipt, or was killed) is owed: deliver it first, also
        // when nothing is left to fetch, the fetch runs in another store (`--move`, a mirror),
        // or this offer is refused below
        self.settle(&ticket, offer, wallet, pay).await;
        let arbiter = check_offer(offer, pay)?;
        let mut on = on;
        let extras = self.extras(&ticket, offer, rest, wallet, pay, &mut on).await?;
        if self.holds(&ticket, opts).await? {
            let fetch = self.run(&ticket, out, opts, None, Vec::new(), on).await?;
            let price_per_byte = offer.price_per_byte;
            return Ok(PaidReport { fetch, deal: None, paid: 0, price_per_byte, deals: Vec::new() });
        }
        let mut retried = false;
        let mut aborts = 0;
        let mut unknown = 0;
        let mut carry: Option<(Deal, u64)> = None;
        loop {
            let book = Arc::new(Mutex::new(DealBook::load(self.data_dir())?));
            let root = ticket.hash();
            let now = chain.chain_time().await.map_err(PaidError::from)?;
            // a deal the provider did not know yet is asked again as it is
            let (deal, base, reused, dialled) = match carry.take() {
                Some((deal, base)) => (deal, base, true, None),
                None => self.deal_for(&ticket, offer, arbiter, wallet, pay, &book, now).await?,
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
            // the other providers' deals: each pays for what it delivers, from its book count
            let mut others = Vec::new();
            for (t, o, arbiter) in &extras {
                match self.deal_for(t, o, *arbiter, wallet, pay, &book, now).await {
                    Ok((d, base, _, dialled)) => {
                        let resume = Resume { base, skip: 0 };
                        let s = PaidSession::new(self, wallet, pay, d.clone(), resume, book.clone(), dialled);
                        others.push((t.clone(), Address::from(o.provider), d, s));
                    }
                    // no deal with it (it cannot be reached, its offer does not fit): the others
                    // serve without it; a failure of the buyer's own side (its book, its chain
                    // node, its funds) ends the fetch rather than fall on every provider in turn
                    Err(e) if e.another_provider_may_serve() => {
                        on(FetchEvent::Dropped { provider: t.addr().id, reason: e.to_string() })
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut session = PaidSession::new(self, wallet, pay, deal.clone(), resume, book.clone(), dialled);
            let signed = session.signed.clone();
            let more =
                others.iter_mut().map(|(t, _, _, s)| crate::fetch::Peer { ticket: t.clone(), paid: Some(s) }).collect();
            let fetch = self.run(&ticket, out, opts, Some(&mut session), more, &mut on).await;
            let paid = *signed.lock().expect("signed lock");
            // what each other provider's deal signed; a deal a provider refused for good is not
            // reused (the first provider's too: the download may have ended without it)
            let refused = |node: iroh::EndpointId| {
                let report = fetch.as_ref().ok().and_then(|f| f.sources.iter().find(|r| r.provider == node));
                report.and_then(|r| r.closed).is_some_and(deal_refused_for_good)
            };
            if refused(ticket.addr().id) {
                mark_spent(&book, deal.id)?;
            }
            let mut deals = Vec::new();
            for (t, provider, d, s) in &others {
                if refused(t.addr().id) {
                    mark_spent(&book, d.id)?;
                }
                deals.push(SourceDeal {
                    provider: *provider,
                    node: t.addr().id,
                    deal: d.id,
                    paid: *s.signed.lock().expect("signed lock"),
                });
            }
            let paid_all = paid + deals.iter().map(|d| d.paid).sum::<u128>();
            if !deals.is_empty() {
                let (provider, node) = (Address::from(offer.provider), ticket.addr().id);
                deals.insert(0, SourceDeal { provider, node, deal: deal.id, paid });
            }
            drop(others);
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
                mark_spent(&book, deal.id)?;
                if reused && !retried && *code == codes::WINDOW_SPENT as u64 {
                    tracing::info!(deal = %deal.id, "the provider says this deal's window is spent: opening a new deal");
                    retried = true;
                    continue;
                }
            }
            if let Some(bytes) = paid_all.checked_div(deal.terms.pricePerByte) {
                self.metrics().paid_bytes.inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
            }
            if fetch.is_err() {
                self.metrics().fetches_failed.inc();
            }
            return Ok(PaidReport {
                fetch: fetch?,
                deal: Some(deal.id),
                paid: paid_all,
                price_per_byte: deal.terms.pricePerByte,
                deals,
            });
        }
    }

    /// The offers after the first that a multi-source fetch can use: of the same dataset,
    /// one per provider node, on this chain, within the buyer's limits, and while the escrow of
    /// all the deals together stays within `max_deposit` (each deal escrows the dataset's full
    /// price: any one provider may end up sending all of it); the others are said by
    /// [`FetchEvent::Dropped`]. Each comes with the arbiter a new deal names.
    async fn extras(
        &self,
        ticket: &BlobTicket,
        first: &Offer,
        rest: &[Offer],
        wallet: &Wallet,
        pay: &PaidOptions,
        on: &mut impl FnMut(FetchEvent),
    ) -> Result<Vec<(BlobTicket, Offer, Address)>, FetchError> {
        let mut out: Vec<(BlobTicket, Offer, Address)> = Vec::new();
        // an explicit --deposit is per deal, the buyer's own choice (as for one deal)
        let mut escrowed = first.full_price();
        for o in rest {
            let t = match parse_ticket(&o.ticket) {
                Ok(t) => t,
                // an offer whose ticket does not parse names no provider to drop: it is left out
                Err(e) => {
                    tracing::warn!("leaving out an offer whose ticket does not parse: {e}");
                    continue;
                }
            };
            if t.hash() != ticket.hash() {
                return Err(crate::fetch::BadRequest::DifferentDatasets(ticket.hash(), t.hash()).into());
            }
            if t.format() != ticket.format() {
                return Err(crate::fetch::BadRequest::DifferentFormats(t.hash()).into());
            }
            let id = t.addr().id;
            if id == ticket.addr().id || out.iter().any(|(x, _, _)| x.addr().id == id) {
                continue;
            }
            check_chain(o, wallet)?;
            self.settle(&t, o, wallet, pay).await;
            let together = escrowed.saturating_add(o.full_price());
            let checked = check_offer(o, pay).and_then(|arbiter| match pay.deposit {
                None if together > pay.max_deposit => {
                    let deals = out.len() + 2;
                    Err(PaidError::DepositsTooHigh { deals, needed: together, max: pay.max_deposit }.into())
                }
                _ => Ok(arbiter),
            });
            match checked {
                Ok(arbiter) => {
                    escrowed = together;
                    out.push((t, o.clone(), arbiter));
                }
                Err(e) => on(FetchEvent::Dropped { provider: id, reason: e.to_string() }),
            }
        }
        Ok(out)
    }

    /// An open deal of the book for this dataset and provider with time and money left, or a
    /// new one (dialling the provider first: no escrow for a provider that cannot be reached).
    #[allow(clippy::too_many_arguments)]
    async fn deal_for(
        &self,
        ticket: &BlobTicket,
        offer: &Offer,
        arbiter: Address,
        wallet: &Wallet,
        pay: &PaidOptions,
        book: &Mutex<DealBook>,
        now: u64,
    ) -> Result<DealChoice, FetchError> {
        let (chain, signer) = (&wallet.chain, &wallet.signer);
        let root = ticket.hash();
        let node = B256::from(*ticket.addr().id.as_bytes());
        let candidates: Vec<BuyerDeal> =
            book.lock().expect("book lock").deals.iter().filter(|x| x.root == root).cloned().collect();
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
                return Ok((Deal { id: cand.id, terms: t }, cand.verified, true, None));
            }
        }
        let dialled = (self.connect(ticket, bdc_core::protocol::PAID_ALPN).await?, std::time::Instant::now());
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
        Ok((deal, 0, false, Some(dialled)))
    }
}

/// Whether `e` is the failure of `first`'s provider or offer (the others' failures only drop
/// them: they never end a multi-source fetch).
fn first_failed(e: &FetchError, first: &Offer) -> bool {
    match e.provider() {
        Some(p) => parse_ticket(&first.ticket).is_ok_and(|t| t.addr().id == p),
        // an offer check (price, deposit, arbiter, …): only the first's end the fetch
        None => true,
    }
}

/// The offer is for the escrow of this buyer's chain.
fn check_chain(offer: &Offer, wallet: &Wallet) -> Result<(), FetchError> {
    let d = wallet.chain.deployment();
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
    Ok(())
}

/// Records that the provider will not serve `id` again.
fn mark_spent(book: &Mutex<DealBook>, id: B256) -> Result<(), FetchError> {
    let mut b = book.lock().expect("book lock");
    if let Some(d) = b.deals.iter_mut().find(|d| d.id == id) {
        d.spent = true;
    }
    Ok(b.save()?)
}

#[cfg(test)]
mod tests;
