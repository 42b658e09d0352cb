//! One download from several providers at once.
//!
//! After the first provider answered the probe (sizes and names, verified), what is missing is
//! cut into pieces of [`PIECE_BYTES`] (a chunk range of one blob, so a single large blob is
//! split too) and every source runs [`LANES`] requests at a time, pulling the next piece from a
//! shared [`Schedule`] as it finishes one. Each piece is an ordinary iroh-blobs GET verified
//! against the root as it arrives, written into the same store; the store merges the ranges.
//!
//! A source is dropped for the rest of the download when a piece fails: it lied (bytes that do
//! not verify), stalled (no verified byte for the stall timeout), broke off or refused. Its piece
//! goes back to the queue for the others, and what it verified before stays (and, paid, is paid
//! for: never the range that failed). A paid source has a deal of its own: its receipts count
//! exactly the bytes it delivered, so each provider's window holds on its own.

use std::{
    path::Path,
    pin::pin,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bdc_core::{Hash, protocol::FREE_ALPN, ticket::BlobTicket};
use futures_lite::StreamExt;
use iroh::{EndpointId, endpoint::Connection};
use iroh_blobs::{api::remote::GetProgressItem, protocol::GetRequest};
use serde::Serialize;
use tokio::sync::Notify;

use super::{BadRequest, FetchError, FetchEvent, FetchOptions, FetchReport, Fetcher, TransferError, classify};
use crate::paid::PaidSession;

mod pieces;
mod schedule;
use pieces::Piece;
use schedule::Schedule;

/// Bytes of one piece (a multiple of the 16 KiB chunk group, so pieces never share a group).
pub const PIECE_BYTES: u64 = 4 << 20;

/// How long the next source of a handed-over piece lets the last source's bytes land.
const HANDOVER: Duration = Duration::from_millis(500);

/// Pieces in flight per source: the next request is already queued at the provider when one
/// ends, so a source does not idle for a round trip between pieces.
const LANES: usize = 2;

/// Another provider of the dataset for a multi-source fetch, and its deal when paid.
pub(crate) struct Peer<'a> {
    pub ticket: BlobTicket,
    pub paid: Option<&'a mut PaidSession>,
}

/// What one source of a download did.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub provider: EndpointId,
    /// Payload bytes it delivered and that verified (a piece it lost in the endgame included).
    pub bytes: u64,
    /// Pieces it delivered first.
    pub pieces: u32,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
    /// The provider's close code, when it closed the connection with one (paid).
    pub closed: Option<u64>,
    /// It sent bytes whose hash did not match the root's tree (not merely a stream that ended).
    pub lied: bool,
}

/// A connected source.
struct Source<'a> {
    provider: EndpointId,
    conn: Connection,
    paid: Option<&'a mut PaidSession>,
    /// Verified bytes its session counted before the pieces (the probe's, for the first).
    base: u64,
    /// Verified bytes of finished pieces, and of pieces in flight.
    done: AtomicU64,
    inflight: AtomicU64,
    pieces: AtomicU64,
    dead: AtomicBool,
    error: Mutex<Option<FetchError>>,
}

impl<'a> Source<'a> {
    fn new(provider: EndpointId, conn: Connection, paid: Option<&'a mut PaidSession>, base: u64) -> Self {
        Self {
            provider,
            conn,
            paid,
            base,
            done: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            pieces: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    fn verified(&self) -> u64 {
        self.done.load(Ordering::Relaxed) + self.inflight.load(Ordering::Relaxed)
    }

    /// Tells the deal's receipt task what verified from this source.
    fn account(&self) {
        if let Some(p) = self.paid.as_deref() {
            p.verified(self.base + self.verified());
        }
    }

    fn fail(&self, e: FetchError) {
        self.dead.store(true, Ordering::Relaxed);
        self.error.lock().expect("source lock").get_or_insert(e);
    }
}

/// The state every lane shares.
struct Shared<'a> {
    fetcher: &'a Fetcher,
    root: Hash,
    pieces: Vec<Piece>,
    schedule: Mutex<Schedule>,
    /// Woken when a piece is done or released.
    changed: Notify,
    stall: Duration,
}

impl Fetcher {
    /// Fetches one dataset from the providers of `tickets` at once (each piece from one of
    /// them, verified as it arrives) and exports it into `out`. The first provider that
    /// answers gives the sizes and names; a provider that cannot be reached, refuses, stalls
    /// or lies is dropped (said by [`FetchEvent::Dropped`]) and the others take its pieces.
    pub async fn fetch_from(
        &self,
        tickets: &[BlobTicket],
        out: &Path,
        opts: &FetchOptions,
        mut on: impl FnMut(FetchEvent),
    ) -> Result<FetchReport, FetchError> {
        let Some(first) = tickets.first() else {
            return Err(BadRequest::NoProvider.into());
        };
        for t in tickets {
            if t.hash() != first.hash() {
                return Err(BadRequest::DifferentDatasets(first.hash(), t.hash()).into());
            }
            if t.format() != first.format() {
                return Err(BadRequest::DifferentFormats(t.hash()).into());
            }
        }
        if tickets.len() == 1 {
            return self.fetch(first, out, opts, on).await;
        }
        let mut left: Vec<&BlobTicket> = Vec::new();
        for t in tickets {
            if !left.iter().any(|l| l.addr().id == t.addr().id) {
                left.push(t);
            }
        }
        loop {
            let more = left[1..].iter().map(|t| Peer { ticket: (*t).clone(), paid: None }).collect();
            match self.run(left[0], out, opts, None, more, &mut on).await {
                // the provider that was to give the sizes and names failed: the next one does
                // (what verified stays in the store)
                Err(e) if left.len() > 1 && e.another_provider_may_serve() && e.provider().is_some() => {
                    let bad = e.provider();
                    on(FetchEvent::Dropped { provider: left[0].addr().id, reason: e.to_string() });
                    let before = left.len();
                    left.retain(|t| Some(t.addr().id) != bad);
                    if left.len() == before {
                        left.remove(0);
                    }
                }
                res => {
                    if res.is_err() {
                        self.metrics.fetches_failed.inc();
                    }
                    return res;
                }
            }
        }
    }

    /// The missing ranges of `root` fetched from `first` (connected, its Hello sent if paid)
    /// and the `more` peers at once. Returns the bytes verified by all sources and what each
    /// did; fails only when no source is left and pieces are missing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn multi(
        &self,
        ticket: &BlobTicket,
        missing: GetRequest,
        first: (Connection, Option<&mut PaidSession>, u64),
        more: Vec<Peer<'_>>,
        progress: (u64, u64),
        on: &mut impl FnMut(FetchEvent),
    ) -> Result<(u64, Vec<SourceReport>), FetchError> {
        let root = ticket.hash();
        let (conn, paid, base) = first;
        let mut sources = vec![Source::new(conn.remote_id(), conn, paid, base)];
        let mut reports = Vec::new();
        // a provider that never lets the Hello through holds up nothing but itself
        let limit = self.cfg.connect_timeout * 2;
        let dials = more.into_iter().map(|p| {
            let id = p.ticket.addr().id;
            async move {
                match tokio::time::timeout(limit, self.dial(p)).await {
                    Ok(r) => r,
                    Err(_) => (id, Err(FetchError::Timeout { provider: id, secs: limit.as_secs() })),
                }
            }
        });
        for (peer, res) in n0_future::join_all(dials).await {
            match res {
                Ok((conn, paid)) => {
                    on(FetchEvent::Connected { provider: conn.remote_id() });
                    sources.push(Source::new(conn.remote_id(), conn, paid, 0));
                }
                Err(e) => {
                    on(FetchEvent::Dropped { provider: peer, reason: e.to_string() });
                    let closed = close_code(&e);
                    let dropped = Some(e.to_string());
                    reports.push(SourceReport { provider: peer, bytes: 0, pieces: 0, dropped, closed, lied: false });
                }
            }
        }
        let pieces = self.pieces(root, ticket.format(), missing).await?;
        let endgame = sources.iter().all(|s| s.paid.is_none());
        let shared = Shared {
            fetcher: self,
            root,
            // a slow source keeps its piece at least twice as long as a stalled one would
            schedule: Mutex::new(Schedule::new(pieces.len(), endgame, 2 * self.cfg.stall_timeout)),
            pieces,
            changed: Notify::new(),
            stall: self.cfg.stall_timeout,
        };
        {
            let lanes = sources.iter().enumerate().flat_map(|(i, s)| (0..LANES).map(move |_| (i, s)));
            let mut all = pin!(n0_future::join_all(lanes.map(|(i, s)| shared.lane(i, s))));
            let (local, total) = progress;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut alive = vec![true; sources.len()];
            // progress, and each source dropped, as it happens
            let mut tell = |on: &mut dyn FnMut(FetchEvent)| {
                let done: u64 = sources.iter().map(|s| s.verified()).sum();
                on(FetchEvent::Progress { done: (local + done).min(total), total });
                for (i, s) in sources.iter().enumerate() {
                    if alive[i] && s.dead.load(Ordering::Relaxed) {
                        alive[i] = false;
                        let reason = s.error.lock().expect("source lock").as_ref().map(|e| e.to_string());
                        on(FetchEvent::Dropped { provider: s.provider, reason: reason.unwrap_or_default() });
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = &mut all => break,
                    _ = tick.tick() => tell(on),
                }
            }
            tell(on);
        }
        let finished = shared.schedule.lock().expect("schedule lock").finished();
        let mut fetched = 0;
        let mut first_error = None;
        for s in sources.iter_mut() {
            let bytes = s.verified();
            fetched += bytes;
            let error = s.error.get_mut().expect("source lock").take();
            let lied = error.as_ref().is_some_and(FetchError::is_lie);
            // a provider that stops reading cannot hold up the others' ends: each end is bounded,
            // and its connection closed (which ends its receipt task) when it runs out
            let limit = self.cfg.connect_timeout + self.cfg.stall_timeout;
            let provider = s.provider;
            let ended = |r: Result<Option<FetchError>, _>| {
                r.unwrap_or(Some(FetchError::Transfer {
                    provider,
                    source: TransferError::Stalled { secs: limit.as_secs() },
                }))
            };
            let error = match (s.paid.as_deref_mut(), error) {
                (Some(p), Some(e)) => {
                    ended(tokio::time::timeout(limit, async { Some(p.explain(&s.conn, e).await) }).await)
                }
                (Some(p), None) => {
                    p.verified(s.base + bytes);
                    // every byte is verified and recorded: a provider that does not confirm the
                    // final receipt is told it again by the next paid fetch (settle)
                    ended(tokio::time::timeout(limit, async { p.finish(&s.conn).await.err() }).await)
                }
                (None, e) => e,
            };
            s.conn.close(0u32.into(), b"done");
            let dropped = error.as_ref().map(|e| e.to_string());
            let closed = error.as_ref().and_then(close_code);
            if let Some(e) = error
                && first_error.is_none()
            {
                first_error = Some(e);
            }
            let pieces = s.pieces.load(Ordering::Relaxed) as u32;
            reports.push(SourceReport { provider: s.provider, bytes, pieces, dropped, closed, lied });
        }
        match (finished, first_error) {
            (true, _) => Ok((fetched, reports)),
            (false, Some(e)) => Err(e),
            (false, None) => {
                Err(FetchError::Transfer { provider: sources[0].provider, source: TransferError::EndedEarly })
            }
        }
    }

    /// Connects to `peer` (paid: on its deal's connection, Hello sent).
    async fn dial<'a>(
        &self,
        peer: Peer<'a>,
    ) -> (EndpointId, Result<(Connection, Option<&'a mut PaidSession>), FetchError>) {
        let id = peer.ticket.addr().id;
        let res = async {
            match peer.paid {
                None => Ok((self.connect(&peer.ticket, FREE_ALPN).await?, None)),
                Some(p) => {
                    let c = match p.take_dialled() {
                        Some(c) => c,
                        None => self.connect(&peer.ticket, bdc_core::protocol::PAID_ALPN).await?,
                    };
                    if let Err(e) = p.hello(&c).await {
                        return Err(p.explain(&c, e).await);
                    }
                    Ok((c, Some(p)))
                }
            }
        }
        .await;
        (id, res)
    }
}

/// The close code a provider gave, if the error is its close.
fn close_code(e: &FetchError) -> Option<u64> {
    match e {
        FetchError::ProviderClosed { code, .. } => Some(*code),
        _ => None,
    }
}

impl Shared<'_> {
    /// One lane of source `i`: takes pieces until none is left or the source is dropped.
    async fn lane(&self, i: usize, src: &Source<'_>) {
        loop {
            if src.dead.load(Ordering::Relaxed) {
                return;
            }
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let next = {
                let mut s = self.schedule.lock().expect("schedule lock");
                if s.finished() {
                    return;
                }
                s.next(i, Instant::now())
            };
            let Some(piece) = next else {
                // nothing to take now: a piece may come back from a source that fails, or be
                // held too long by a slow one (looked at again every half second)
                let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
                continue;
            };
            // a piece taken over: its slow source stops
            self.changed.notify_waiters();
            match self.piece(piece, i, src).await {
                Ok(true) => {
                    // both copies of an endgame piece may verify at once: it counts for the first
                    if self.schedule.lock().expect("schedule lock").done(piece, Instant::now()) {
                        src.pieces.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    src.fail(e);
                    self.schedule.lock().expect("schedule lock").release(piece, i);
                }
            }
            self.changed.notify_waiters();
        }
    }

    /// Fetches what the store still lacks of piece `i` from source `s`: true when it verified,
    /// false when another source verified it first (the endgame) or took it over.
    async fn piece(&self, i: usize, s: usize, src: &Source<'_>) -> Result<bool, FetchError> {
        let provider = src.provider;
        // a piece handed over (its source failed, or was overtaken): what that source verified
        // may still be on its way into the store; let it land, so that it is neither fetched
        // nor paid for again
        if self.schedule.lock().expect("schedule lock").handed(i) {
            tokio::time::sleep(HANDOVER).await;
        }
        let Some(req) = self.fetcher.piece_request(self.root, &self.pieces[i]).await? else {
            return Ok(true);
        };
        let mut stream = self.fetcher.store.remote().execute_get(src.conn.clone(), req).stream();
        let mut counted = 0;
        let settle = |counted: u64, total: u64| {
            src.inflight.fetch_sub(counted, Ordering::Relaxed);
            src.done.fetch_add(total, Ordering::Relaxed);
        };
        loop {
            let won_elsewhere = async {
                loop {
                    let mut changed = pin!(self.changed.notified());
                    changed.as_mut().enable();
                    if !self.schedule.lock().expect("schedule lock").holds(i, s) {
                        return;
                    }
                    changed.await;
                }
            };
            let item = tokio::select! {
                // checked first: an overtaken source stops at once
                biased;
                _ = won_elsewhere => {
                    // what verified and is already queued reached the store: count it, so the
                    // receipts cover every byte this source delivered
                    while let Some(Some(GetProgressItem::Progress(n))) = futures_lite::future::poll_once(stream.next()).await {
                        src.inflight.fetch_add(n.saturating_sub(counted), Ordering::Relaxed);
                        counted = counted.max(n);
                    }
                    settle(counted, counted);
                    src.account();
                    return Ok(false);
                }
                item = tokio::time::timeout(self.stall, stream.next()) => item,
            };
            match item {
                Err(_) => {
                    settle(counted, counted);
                    let secs = self.stall.as_secs().max(1);
                    return Err(FetchError::Transfer { provider, source: TransferError::Stalled { secs } });
                }
                Ok(None) => {
                    settle(counted, counted);
                    return Err(FetchError::Transfer { provider, source: TransferError::EndedEarly });
                }
                Ok(Some(GetProgressItem::Progress(n))) => {
                    src.inflight.fetch_add(n.saturating_sub(counted), Ordering::Relaxed);
                    counted = counted.max(n);
                    src.account();
                }
                Ok(Some(GetProgressItem::Done(stats))) => {
                    settle(counted, stats.payload_bytes_read.max(counted));
                    src.account();
                    return Ok(true);
                }
                Ok(Some(GetProgressItem::Error(e))) => {
                    settle(counted, counted);
                    let e = classify(e, provider, self.root, counted);
                    if e.is_verification() {
                        self.fetcher.metrics.verification_failures.inc();
                    }
                    return Err(e);
                }
            }
        }
    }
}
