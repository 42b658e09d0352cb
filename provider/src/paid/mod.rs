//! `bdc/paid/1` on the provider: receipts gate the stream.
//!
//! One connection per (buyer, provider, deal). [`PaidProtocol::accept`] runs two things side by
//! side on each connection:
//! - iroh-blobs' stream handler, answering GETs on bi streams, with an event handler that
//!   authorizes each GET (the hash must belong to the deal's dataset, children only through its
//!   collection root, see [`crate::access`], and the Hello must have been accepted) and each
//!   Observe the same way. Each bi stream's send side is wrapped in a `GatedWriter`: a 16 KiB group goes
//!   onto the wire only if afterwards `sent − receipted ≤ window` (bytes); otherwise the write
//!   waits for a receipt, up to the stall timeout, then the connection is closed with
//!   `PAYMENT_TIMEOUT`. The check is a mutex section in the writer itself: an open window costs
//!   no task hop or message per group.
//! - the control loop reading the buyer's uni stream: `Hello` (checked by [`admission`]: offline
//!   first, then one read of the deal's state), then cumulative receipts, each verified offline,
//!   stored durably in the [`ledger`] in the one signature form the escrow accepts, and only then
//!   counted by the gate.
//!
//! Expiry: no Hello is admitted, and no group is sent, within `expiry_margin` of the deal's
//! expiry (bytes sent later could not be redeemed). The `redeemer` submits stored receipts on
//! chain, many deals per transaction.

pub mod admission;
mod close;
mod gate;
pub mod ledger;
mod receipts;
mod redeemer;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alloy::{
    primitives::{Address, B256},
    providers::DynProvider,
    sol_types::SolValue,
};
use bdc_contracts::{
    Contracts, Deal,
    receipt::{Receipt, receipt_signer_canonical},
};
use bdc_core::{
    Hash,
    paid::{Hello, PAID_PROTOCOL_VERSION, PaidMessage, SignedReceipt, bytes_for, codes},
    wire::HasErrorCode,
};
use iroh::{
    EndpointId,
    endpoint::{Connection, VarInt},
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_blobs::{
    api::Store,
    provider::{
        StreamPair,
        events::{AbortReason, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode},
    },
};
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;

use self::{
    admission::{Admission, AdmitError, DealKind},
    ledger::{Ledger, LedgerError},
};
pub use close::{CloseReason, GateError, ReceiptRefusal};
use gate::{DealGate, GateState, gate_events, prune_gates, ready_gate, serve_streams};
use receipts::{check_receipt, store_receipts};

/// Terms a provider sells on.
#[derive(Debug, Clone)]
pub struct PaidConfig {
    /// Token base units per byte (the lowest price a deal may carry).
    pub price_per_byte: u128,
    /// Largest window a deal gets (bytes sent ahead of receipts); a deal asking less gets less.
    pub window: u64,
    /// How long a full window waits for a receipt before the connection is closed.
    pub stall_timeout: Duration,
    /// Redeem on chain each time this many more bytes are receipted.
    pub redeem_every: u64,
    /// Safety margin before a deal's expiry: no Hello is admitted and no byte is sent inside
    /// it, and deals with unredeemed receipts are redeemed when they enter it. It must cover a
    /// redeem transaction's inclusion time (a few blocks).
    pub expiry_margin: Duration,
    /// How long a new connection may take to send its Hello.
    pub hello_timeout: Duration,
    /// Cap on each request's upload rate, bytes per second.
    pub max_rate: Option<u64>,
    /// How often an active connection re-reads its deal from the chain (closing it with
    /// `DEAL_NOT_OPEN` once the deal is disputed, refunded or expired).
    pub chain_refresh: Duration,
    /// The arbiters this provider accepts; a deal naming another is refused. Offers and
    /// listings name them. Empty: no deal is accepted.
    pub arbiters: Vec<Address>,
    /// Highest royalty (basis points) a deal may carry; None: the royalty registered when the
    /// provider first saw the dataset registered (so a later raise is refused).
    pub max_royalty_bps: Option<u16>,
}

impl Default for PaidConfig {
    fn default() -> Self {
        Self {
            price_per_byte: 1_000_000_000, // 1 gwei-unit per byte ≈ 1.07 BDC per GiB
            window: 4 << 20,
            stall_timeout: Duration::from_secs(30),
            redeem_every: 256 << 20,
            expiry_margin: Duration::from_secs(bdc_core::paid::DEFAULT_EXPIRY_MARGIN_SECS),
            hello_timeout: Duration::from_secs(10),
            max_rate: None,
            chain_refresh: Duration::from_secs(10),
            arbiters: Vec::new(),
            max_royalty_bps: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PaidError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

type Ready = Option<Result<Arc<DealGate>, ()>>;

#[derive(Debug)]
struct ConnEntry {
    conn: Connection,
    ready: watch::Receiver<Ready>,
    /// Set by whoever closes the connection first (control loop, gate, deal watcher, a newer
    /// connection): that one counts the close.
    closed: Arc<AtomicBool>,
}

/// Who sells: the payment address deals must name, and the node they must name.
#[derive(Debug, Clone, Copy)]
pub struct Seller {
    pub address: Address,
    pub node: EndpointId,
}

/// What a provider sells: per root, every blob hash of the dataset; which roots are
/// collections; and the vendor each collection's manifest names.
#[derive(Debug, Default)]
pub struct Datasets {
    pub contents: HashMap<Hash, Arc<HashSet<Hash>>>,
    pub collections: Arc<HashSet<Hash>>,
    pub vendors: HashMap<Hash, Option<Address>>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    ledger: Arc<Ledger>,
    chain: Contracts<DynProvider>,
    cfg: PaidConfig,
    admission: Arc<Admission>,
    datasets: HashMap<Hash, Arc<HashSet<Hash>>>,
    collections: Arc<HashSet<Hash>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    deals: Mutex<HashMap<B256, Arc<DealGate>>>,
    redeem_tx: mpsc::UnboundedSender<B256>,
    metrics: Arc<crate::metrics::ProviderMetrics>,
}

/// The `bdc/paid/1` protocol handler.
#[derive(Debug, Clone)]
pub struct PaidProtocol {
    shared: Arc<Shared>,
    events: EventSender,
}

impl PaidProtocol {
    /// Starts the handler and its redeemer, and pins the sale terms of every sold dataset
    /// already registered.
    pub async fn new(
        store: Store,
        ledger: Arc<Ledger>,
        chain: Contracts<DynProvider>,
        seller: Seller,
        cfg: PaidConfig,
        datasets: Datasets,
        metrics: Arc<crate::metrics::ProviderMetrics>,
    ) -> Self {
        let Seller { address: me, node } = seller;
        let (redeem_tx, redeem_rx) = mpsc::unbounded_channel();
        tokio::spawn(
            redeemer::run(
                ledger.clone(),
                chain.clone(),
                redeem_rx,
                cfg.expiry_margin,
                Duration::from_secs(2),
                metrics.clone(),
            )
            .instrument(tracing::info_span!("redeemer")),
        );
        let admission = Arc::new(Admission {
            chain: chain.clone(),
            me,
            node,
            arbiters: cfg.arbiters.clone(),
            margin: cfg.expiry_margin,
            max_royalty_bps: cfg.max_royalty_bps,
            manifest_vendors: datasets.vendors,
            pinned: Mutex::new(HashMap::new()),
            ledger: ledger.clone(),
        });
        // the sold datasets (free ones have no manifest vendor entry)
        for root in admission.manifest_vendors.keys() {
            match admission.sale_terms(*root).await {
                Ok(t) => tracing::info!(%root, vendor = %t.vendor, max_royalty_bps = t.max_royalty_bps, "selling"),
                Err(e) => tracing::warn!(%root, "not sold until this is fixed: {e}"),
            }
        }
        if cfg.arbiters.is_empty() {
            tracing::warn!("no arbiter accepted: every deal will be refused (configure the arbiters you trust)");
        }
        let shared = Arc::new(Shared {
            store,
            ledger,
            chain,
            cfg,
            admission,
            datasets: datasets.contents,
            collections: datasets.collections,
            conns: Mutex::new(HashMap::new()),
            deals: Mutex::new(HashMap::new()),
            redeem_tx,
            metrics,
        });
        let events = gate_events(shared.clone());
        Self { shared, events }
    }
}

impl PaidProtocol {
    /// Deal gates held in memory (one per deal admitted and not pruned).
    pub fn deal_gates(&self) -> usize {
        self.shared.deals.lock().expect("deals lock").len()
    }

    /// What the jobs handler needs to take payment for jobs: the same ledger, redeemer and chain.
    pub(crate) fn job_payments(&self) -> JobPayments {
        let s = &self.shared;
        JobPayments {
            ledger: s.ledger.clone(),
            redeem_tx: s.redeem_tx.clone(),
            chain: s.chain.clone(),
            admission: s.admission.clone(),
            arbiters: s.cfg.arbiters.clone(),
            price_per_byte: s.cfg.price_per_byte,
        }
    }
}

/// The provider's side of job deals (see `crate::jobs`): receipts for jobs go into the same
/// ledger and are redeemed by the same redeemer as transfer receipts.
#[derive(Debug, Clone)]
pub(crate) struct JobPayments {
    pub ledger: Arc<Ledger>,
    pub redeem_tx: mpsc::UnboundedSender<B256>,
    pub chain: Contracts<DynProvider>,
    pub admission: Arc<Admission>,
    pub arbiters: Vec<Address>,
    /// What this provider sells its data at, per byte: a job's result on sold data is worth
    /// no more than its price buys at this rate.
    pub price_per_byte: u128,
}

impl JobPayments {
    /// The provider's payment address.
    pub fn me(&self) -> Address {
        self.admission.me
    }

    /// Checks a job deal for one job at `price` on `dataset`.
    pub async fn admit(
        &self,
        payment: &bdc_core::jobs::JobPayment,
        peer: EndpointId,
        price: u128,
        dataset: Hash,
    ) -> Result<admission::Admitted, AdmitError> {
        let id = B256::from(payment.deal_id);
        let kind = DealKind::Job { price, dataset };
        self.admission.admit(id, &payment.terms, peer, &payment.hello_sig, kind, |r| *r == dataset).await
    }
}

impl ProtocolHandler for PaidProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let span = tracing::info_span!(
            "paid_conn",
            peer = %conn.remote_id().fmt_short(),
            id = conn.stable_id(),
            deal = tracing::field::Empty
        );
        self.serve_connection(conn).instrument(span).await
    }
}

impl PaidProtocol {
    /// One paid connection, inside its span: the Hello admits it to a deal, then receipts gate
    /// its streams.
    async fn serve_connection(&self, conn: Connection) -> Result<(), AcceptError> {
        let shared = self.shared.clone();
        shared.metrics.paid_connections_open.inc();
        let _open = OpenConnection(&shared.metrics);
        let conn_id = conn.stable_id() as u64;
        let (ready_tx, ready_rx) = watch::channel(None);
        let closed = Arc::new(AtomicBool::new(false));
        let entry = ConnEntry { conn: conn.clone(), ready: ready_rx, closed: closed.clone() };
        shared.conns.lock().expect("conns lock").insert(conn_id, entry);
        let peer = conn.remote_id();
        let blobs = tokio::spawn(serve_streams(shared.clone(), conn.clone(), self.events.clone()).in_current_span());
        let watcher = tokio::spawn(watch_deal(shared.clone(), conn.clone(), conn_id, closed.clone()).in_current_span());
        // The control stream decides the connection's fate; closing it also ends the blobs handler.
        let deal = match control_loop(shared.clone(), conn.clone(), ready_tx).await {
            Ok(deal) => {
                close_paid(&shared, &conn, &closed, codes::DONE);
                Some(deal)
            }
            Err(ended) => {
                let (reason, deal) = *ended;
                let code = reason.code();
                match &reason {
                    CloseReason::Ledger(_) => tracing::error!(%peer, code, "closing paid connection: {reason}"),
                    CloseReason::Admit(e) if matches!(**e, AdmitError::Chain(_) | AdmitError::Ledger(_)) => {
                        tracing::error!(%peer, code, "closing paid connection: {reason}")
                    }
                    _ => tracing::warn!(%peer, code, "closing paid connection: {reason}"),
                }
                close_paid(&shared, &conn, &closed, code);
                deal
            }
        };
        // both hold the deal's gate: wait until they have let go of it
        watcher.abort();
        let _ = watcher.await;
        let _ = blobs.await;
        shared.conns.lock().expect("conns lock").remove(&conn_id);
        // the connection let go of its gate: drop the gates nobody can use any more
        prune_gates(&mut shared.deals.lock().expect("deals lock"), tokio::time::Instant::now());
        if let Some(id) = deal {
            let _ = shared.redeem_tx.send(id);
        }
        Ok(())
    }
}

/// Ok(deal) when the buyer finished its stream normally; else why the connection closes, and the
/// deal it was admitted for (boxed: the reason is large, the Ok path is hot).
/// Counts a paid connection as open while alive.
struct OpenConnection<'a>(&'a crate::metrics::ProviderMetrics);
impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.paid_connections_open.dec();
    }
}

type ControlResult = Result<B256, Box<(CloseReason, Option<B256>)>>;

/// Reads Hello and receipts. Ok(deal) when the buyer finished its stream normally.
async fn control_loop(shared: Arc<Shared>, conn: Connection, ready: watch::Sender<Ready>) -> ControlResult {
    let fail = |reason: CloseReason| {
        let _ = ready.send(Some(Err(())));
        Err(Box::new((reason, None)))
    };
    let mut recv = match tokio::time::timeout(shared.cfg.hello_timeout, conn.accept_uni()).await {
        Ok(Ok(r)) => r,
        _ => return fail(CloseReason::NoHello),
    };
    let hello = match PaidMessage::read(&mut recv).await {
        Ok(Some(PaidMessage::Hello(h))) => h,
        Ok(Some(PaidMessage::Receipt(_))) => return fail(CloseReason::ReceiptBeforeHello),
        Ok(None) => return fail(CloseReason::NoHelloMessage),
        Err(e) => return fail(e.into()),
    };
    let (gate, spent) = match admit(&shared, &conn, &hello).await {
        Ok(g) => g,
        Err(reason) => return fail(reason),
    };
    // a later connection of a deal whose window is all out on bytes nobody receipted: the buyer
    // may owe a receipt it recorded but never sent before it died, and sends it right after its
    // Hello; otherwise nothing more can be sent under this deal, so say so
    // now rather than stall (the buyer opens a new deal; this one lost at most its window)
    let mut first = None;
    if spent {
        let wait = RESUME_RECEIPT_WAIT.min(shared.cfg.hello_timeout);
        let receipt = match tokio::time::timeout(wait, PaidMessage::read(&mut recv)).await {
            Ok(Ok(Some(PaidMessage::Receipt(r)))) => Some(check_receipt(&shared, &gate, &r, 0)),
            _ => None,
        };
        match receipt {
            // a bad receipt is refused as what it is
            Some(Err(refusal)) => return fail(refusal.into()),
            Some(Ok(Some(p))) if gate.fits(p.bytes) => first = Some(p),
            other => {
                // a valid receipt that frees no group is still money owed: store and redeem it
                if let Some(Ok(Some(p))) = other {
                    let (tx, rx) = watch::channel(None);
                    let task = store_receipts(shared.clone(), gate.clone(), rx);
                    tx.send_replace(Some(p));
                    drop(tx);
                    if let Err(e) = task.await {
                        return fail(e.into());
                    }
                    let _ = shared.redeem_tx.send(gate.deal.id);
                }
                return fail(CloseReason::WindowSpent(gate.deal.id));
            }
        }
    }
    let id = gate.deal.id;
    tracing::Span::current().record("deal", tracing::field::display(id));
    shared.metrics.paid_connections.inc();
    tracing::info!(window = gate.window, "paid connection admitted");
    supersede(&shared, &conn, id);
    let _ = ready.send(Some(Ok(gate.clone())));
    let mut newest = first.as_ref().map_or(0, |p| p.amount);
    let (pending_tx, pending_rx) = watch::channel(None);
    let mut store = tokio::spawn(store_receipts(shared.clone(), gate.clone(), pending_rx));
    if first.is_some() {
        // sent, not given as the initial value: the store task waits for changes
        pending_tx.send_replace(first);
    }
    let end = loop {
        tokio::select! {
            stored = &mut store => {
                // the store task only ends early on a failed commit
                let reason = match stored {
                    Ok(Err(e)) => e.into(),
                    Ok(Ok(())) => CloseReason::ReceiptTaskEnded,
                    Err(e) => LedgerError::Task(e).into(),
                };
                return Err(Box::new((reason, Some(id))));
            }
            msg = PaidMessage::read(&mut recv) => match msg {
                Ok(Some(PaidMessage::Receipt(r))) => match check_receipt(&shared, &gate, &r, newest) {
                    Ok(Some(p)) => {
                        newest = p.amount;
                        pending_tx.send_replace(Some(p));
                    }
                    Ok(None) => {}
                    Err(refusal) => break Err(CloseReason::from(refusal)),
                },
                Ok(Some(PaidMessage::Hello(_))) => break Err(CloseReason::SecondHello),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            },
        }
    };
    // store what was verified before answering, also when closing on an error
    drop(pending_tx);
    let stored = store.await.map_err(LedgerError::Task).and_then(|r| r);
    match (end, stored) {
        (Ok(()), Ok(())) => Ok(id),
        (Err(reason), _) => Err(Box::new((reason, Some(id)))),
        (Ok(()), Err(e)) => Err(Box::new((e.into(), Some(id)))),
    }
}

/// Closes a paid connection with `code` and counts it under that reason, unless something closed
/// it first (the control loop, the gate, the deal watcher, a newer connection): a connection is
/// counted once, by the first close. A connection the buyer closed or lost is counted by the
/// control loop, under the reason it ended with.
fn close_paid(shared: &Shared, conn: &Connection, closed: &AtomicBool, code: u32) {
    if closed.swap(true, Ordering::SeqCst) {
        return;
    }
    let reason = codes::name(code as u64);
    shared.metrics.paid_closes.get_or_create(&crate::metrics::CloseLabel { reason }).inc();
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Closes the older connections of `deal` from the same buyer node: a buyer that restarted
/// reconnects before the provider notices its old connection died, and the old one's streams
/// would keep taking the deal's window (bytes written into a dead connection are never paid).
fn supersede(shared: &Shared, conn: &Connection, deal: B256) {
    let (me, peer) = (conn.stable_id() as u64, conn.remote_id());
    for (id, e) in shared.conns.lock().expect("conns lock").iter() {
        let same_deal = matches!(&*e.ready.borrow(), Some(Ok(g)) if g.deal.id == deal);
        if *id != me && same_deal && e.conn.remote_id() == peer {
            tracing::info!(%deal, %peer, "a newer connection of the same buyer took over the deal");
            close_paid(shared, &e.conn, &e.closed, codes::SUPERSEDED);
        }
    }
}

/// How long a connection of a deal whose window is spent waits for a receipt right after the
/// Hello (the buyer sends it on the same stream, so it arrives within a round trip).
const RESUME_RECEIPT_WAIT: Duration = Duration::from_secs(1);

/// Checks a Hello (see [`admission`]) and returns the deal's gate, and whether its window is
/// all out on bytes nobody receipted (a later connection of a deal whose earlier one died).
async fn admit(shared: &Shared, conn: &Connection, hello: &Hello) -> Result<(Arc<DealGate>, bool), CloseReason> {
    if hello.version != PAID_PROTOCOL_VERSION {
        return Err(CloseReason::Version(hello.version));
    }
    let id = B256::from(hello.deal_id);
    let peer = conn.remote_id();
    if hello.buyer_node != *peer.as_bytes() {
        return Err(CloseReason::NodeMismatch);
    }
    let kind = DealKind::Transfer { min_price: shared.cfg.price_per_byte };
    let admitted =
        shared.admission.admit(id, &hello.terms, peer, &hello.sig, kind, |r| shared.datasets.contains_key(r)).await?;
    let deal = admitted.deal;
    if let Some(g) = shared.deals.lock().expect("deals lock").get(&id).cloned() {
        let receipted = g.state.lock().expect("gate lock").receipted_bytes;
        let spent = !g.fits(receipted);
        return Ok((g, spent));
    }
    let t = &deal.terms;
    let root = Hash::from_bytes(t.datasetRoot.0);
    let allowed = shared.datasets.get(&root).cloned().ok_or(CloseReason::NotSold(id))?;
    // the chain clock says how long until the margin; the gate counts it on the local clock
    // (and the deal watcher re-checks against the chain)
    let until_margin = t.expiry.saturating_sub(shared.cfg.expiry_margin.as_secs()).saturating_sub(admitted.now);
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(until_margin.min(u32::MAX as u64));
    // first connection for this deal in this process: start from the ledger
    let entry = shared.ledger.get(&id)?.unwrap_or_default();
    let price: u128 = t.pricePerByte;
    let receipted_bytes = bytes_for(entry.amount, price);
    let gate = Arc::new(DealGate {
        deal: deal.clone(),
        price,
        window: t.window.min(shared.cfg.window),
        allowed,
        collection: shared.collections.contains(&root),
        stop_at,
        state: Mutex::new(GateState {
            sent: receipted_bytes,
            receipted_bytes,
            receipted_amount: entry.amount,
            reserved: entry.reserved,
            carry: entry.reserved.saturating_sub(receipted_bytes),
            last_trigger: entry.amount,
        }),
        notify: Notify::new(),
    });
    shared.ledger.update(&id, |e| {
        if e.terms_abi.is_empty() {
            e.terms_abi = deal.terms.abi_encode();
            e.expiry = t.expiry;
        }
    })?;
    let mut gates = shared.deals.lock().expect("deals lock");
    prune_gates(&mut gates, tokio::time::Instant::now());
    Ok((gates.entry(id).or_insert(gate).clone(), false))
}

/// While the connection lives, re-reads its deal from the chain and closes the connection once
/// the deal is no longer open (disputed, refunded, or past expiry: bytes sent then could never be
/// redeemed).
async fn watch_deal(shared: Arc<Shared>, conn: Connection, conn_id: u64, closed: Arc<AtomicBool>) {
    let Some(gate) = ready_gate(&shared, conn_id).await else { return };
    let id = gate.deal.id;
    loop {
        // ends with its connection too: a watcher orphaned by an aborted handler (the router
        // shutting down) would otherwise hold the deal's state, and the ledger, for ever
        tokio::select! {
            _ = conn.closed() => return,
            _ = tokio::time::sleep(shared.cfg.chain_refresh) => {}
        }
        let (state, now) = match (shared.chain.deal_state(id).await, shared.chain.chain_time().await) {
            (Ok(s), Ok(n)) => (s, n),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(deal = %id, "cannot refresh the deal from the chain: {e}");
                continue;
            }
        };
        let code = if state.disputed || state.refunded {
            codes::DEAL_NOT_OPEN
        } else if now.saturating_add(shared.cfg.expiry_margin.as_secs()) >= gate.deal.terms.expiry {
            codes::DEAL_EXPIRING
        } else {
            continue;
        };
        tracing::warn!(deal = %id, disputed = state.disputed, refunded = state.refunded, code, "deal no longer open: closing");
        close_paid(&shared, &conn, &closed, code);
        let _ = shared.redeem_tx.send(id);
        return;
    }
}
