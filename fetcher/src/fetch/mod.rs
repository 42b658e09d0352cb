//! A verified fetch from one provider.
//!
//! 1. If the fetcher's store already holds the whole dataset, nothing is dialed.
//! 2. Otherwise it dials the provider (bounded by a connect timeout) and, for a collection,
//!    first gets the collection's hash sequence, its names blob and the last chunk of every file:
//!    that verifies every file's size (for an exact progress total) and every name, and a
//!    collection with a name that would escape the output directory is refused before any file
//!    byte is requested.
//! 3. It gets what is missing locally; iroh-blobs verifies each 16 KiB chunk group against the
//!    root before it is written to the store.
//! 4. It exports each file (temp name, then rename) into the output directory.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bdc_core::{
    BlobFormat, Hash,
    net::{NetConfig, bind_endpoint},
    paths::check_name,
    protocol::{FREE_ALPN, PAID_ALPN},
    ticket::BlobTicket,
};
use futures_lite::StreamExt;
use iroh::{Endpoint, EndpointId, endpoint::Connection};
use iroh_blobs::{
    HashAndFormat,
    api::{blobs::BlobStatus, remote::GetProgressItem},
    format::collection::Collection,
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
    store::fs::FsStore,
};
use serde::Serialize;

use crate::export::{ExportError, ExportedFile};

mod error;
mod multi;
mod select;
mod stores;

use error::classify;
pub use error::{BadRequest, FetchError, TransferError};
pub(crate) use multi::Peer;
pub use multi::{PIECE_BYTES, SourceReport};
pub use select::Select;
use select::Selection;

/// Where the fetcher keeps its store and how it dials.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    pub data_dir: PathBuf,
    pub net: NetConfig,
    /// How long to wait for a provider to answer a connection attempt.
    pub connect_timeout: Duration,
    /// A source of a multi-source fetch that verifies no byte of a piece for this long is
    /// dropped, and its piece goes to the others.
    pub stall_timeout: Duration,
}

impl FetcherConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            net: NetConfig::default(),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(20),
        }
    }

    /// Loopback, port 0, short timeout: what tests use.
    pub fn test(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            net: NetConfig::test(),
            connect_timeout: Duration::from_secs(3),
            stall_timeout: Duration::from_secs(3),
        }
    }
}

/// Per-fetch options.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// File name for a raw blob (defaults to the root's hex; with a range, `<root>.<start>-<end>`).
    pub raw_name: Option<String>,
    /// What to fetch of the dataset: all of it, files by pattern, or a byte range.
    pub select: Select,
    /// How the verified files reach the output dir.
    pub export: Export,
}

/// How a fetch's verified files reach the output dir.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Export {
    /// Copied out of the store, which keeps the dataset: a later fetch finds it local.
    #[default]
    Copy,
    /// Moved out of a staging store that is deleted afterwards ([`Fetcher::staged`]): no second
    /// full copy, but a later fetch downloads (and, paid, buys) the dataset again.
    Move,
    /// Not written out: the dataset stays in the store (a mirror's, which is its provider's).
    None,
}

/// Progress events of a fetch.
#[derive(Debug, Clone)]
pub enum FetchEvent {
    Connected {
        provider: EndpointId,
    },
    /// A source of a multi-source fetch was dropped (unreachable, refused, stalled, lied);
    /// the others take its pieces.
    Dropped {
        provider: EndpointId,
        reason: String,
    },
    /// Sizes are known: `total` payload bytes, of which `local` are already in the store.
    Plan {
        total: u64,
        local: u64,
    },
    /// Verified payload bytes in the store so far.
    Progress {
        done: u64,
        total: u64,
    },
    Exported(ExportedFile),
}

/// What a fetch did.
#[derive(Debug, Clone, Serialize)]
pub struct FetchReport {
    pub root: Hash,
    pub provider: EndpointId,
    /// Payload bytes of the dataset.
    pub total_bytes: u64,
    /// Payload bytes already in the store before this run.
    pub local_bytes: u64,
    /// Payload bytes received and verified in this run.
    pub fetched_bytes: u64,
    pub files: Vec<ExportedFile>,
    pub elapsed_ms: u64,
    /// Each provider's part, for a fetch from several at once (empty for one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceReport>,
}

/// A fetcher: its own store and endpoint.
#[derive(Debug)]
pub struct Fetcher {
    cfg: FetcherConfig,
    store: FsStore,
    endpoint: Endpoint,
    metrics: std::sync::Arc<crate::metrics::FetcherMetrics>,
    /// Whether [`shutdown`](Self::shutdown) closes the store (not one lent by its owner).
    owns_store: bool,
    /// The staging dir, for a fetcher made by [`staged`](Self::staged).
    staging: Option<PathBuf>,
    /// Held while the fetcher lives: one process at a time reads and rewrites the deal book
    /// (the store's own lock does not cover a fetcher lent another store).
    _book_lock: Option<std::fs::File>,
}

impl Fetcher {
    pub async fn open(cfg: FetcherConfig) -> Result<Self, FetchError> {
        let store_dir = cfg.data_dir.join("store");
        let store_err =
            |e: Box<dyn std::error::Error + Send + Sync>| FetchError::Store { path: store_dir.clone(), source: e };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| store_err(Box::new(e)))?;
        let key = bdc_core::keys::load_or_create(&cfg.data_dir.join("node.key")).map_err(|e| store_err(Box::new(e)))?;
        let book_lock = stores::lock_book(&cfg.data_dir)?;
        let store = FsStore::load(&store_dir).await.map_err(|e| store_err(e.into()))?;
        let endpoint = match bind_endpoint(&cfg.net, key, vec![]).await {
            Ok(ep) => ep,
            Err(e) => {
                store.shutdown().await.ok();
                return Err(e.into());
            }
        };
        Ok(Self {
            cfg,
            store,
            endpoint,
            metrics: Default::default(),
            owns_store: true,
            staging: None,
            _book_lock: Some(book_lock),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// How long a dial may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.cfg.connect_timeout
    }

    pub fn store(&self) -> &FsStore {
        &self.store
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Fetches the dataset named by `ticket` and exports it into `out`.
    pub async fn fetch(
        &self,
        ticket: &BlobTicket,
        out: &Path,
        opts: &FetchOptions,
        mut on: impl FnMut(FetchEvent),
    ) -> Result<FetchReport, FetchError> {
        let mut attempt = 0;
        loop {
            match self.run(ticket, out, opts, None, Vec::new(), &mut on).await {
                Err(e @ FetchError::ProviderAborted { .. }) if attempt < ABORT_RETRIES => {
                    attempt += 1;
                    tracing::info!(attempt, "{e}: resuming");
                    tokio::time::sleep(abort_backoff(attempt)).await;
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

    /// The fetch, free (`paid == None`, `/iroh-bytes/4`) or paid (`bdc/paid/1`, receipts sent as
    /// bytes verify); with `more` peers, from all of them at once once `ticket`'s provider
    /// answered the probe.
    pub(crate) async fn run(
        &self,
        ticket: &BlobTicket,
        out: &Path,
        opts: &FetchOptions,
        mut paid: Option<&mut crate::paid::PaidSession>,
        more: Vec<Peer<'_>>,
        mut on: impl FnMut(FetchEvent),
    ) -> Result<FetchReport, FetchError> {
        let start = Instant::now();
        let out = std::path::absolute(out).map_err(|source| ExportError::Io { path: out.to_path_buf(), source })?;
        let root = ticket.hash();
        let content = ticket.hash_and_format();
        let provider = ticket.addr().id;
        let remote = self.store.remote();
        opts.select.check_format(ticket.format())?;
        if opts.export == Export::Move && self.staging.is_none() {
            return Err(FetchError::BadRequest(BadRequest::MoveNeedsStaging));
        }
        // what is here before this run (a resume), counted over the wanted files only; and
        // whether the sizes and names are already verified locally, in which case they are not
        // asked again (which also keeps a paid resume from paying twice for the same probe bytes)
        let (local_before, sizes_known) = match self.file_list(ticket, provider, opts).await {
            Ok(files) => {
                let sel = self.selection(ticket, &files, opts).await.ok().flatten();
                // with files chosen by name, the names are what the probe is for
                let known = matches!(opts.select, Select::Files(_)) || self.sizes_known(&files).await?;
                (self.wanted_state(&files, sel.as_ref()).await?.1, known)
            }
            Err(_) => (0, false),
        };
        let mut fetched = 0;
        let mut conn = None;
        if !self.holds(ticket, opts).await? {
            let c = match paid.as_deref_mut() {
                None => self.connect(ticket, FREE_ALPN).await?,
                Some(p) => {
                    let c = match p.take_dialled() {
                        Some(c) => c,
                        None => self.connect(ticket, PAID_ALPN).await?,
                    };
                    p.hello(&c).await?;
                    c
                }
            };
            on(FetchEvent::Connected { provider });
            // sizes (and, for a collection, names) first: cheap, verified, and lets us refuse
            // bad names before any file byte is requested
            let req = if sizes_known {
                None
            } else if let Select::Files(_) = opts.select {
                // a partial purchase asks only the hash sequence and the names: a last chunk of
                // every file would cost up to a 16 KiB group of each file not bought (the chosen
                // files' sizes verify as they arrive)
                GetRequest::builder().root(ChunkRanges::all()).next(ChunkRanges::all()).build(root).into()
            } else if ticket.format() == BlobFormat::HashSeq {
                GetRequest::builder()
                    .root(ChunkRanges::all())
                    .next(ChunkRanges::all())
                    .next(ChunkRanges::last_chunk())
                    .build_open(root)
                    .into()
            } else {
                Some(GetRequest::blob_ranges(root, ChunkRanges::last_chunk()))
            };
            if let Some(req) = req
                && let Err(e) = self.probe(&c, req, provider, content, paid.as_deref(), &mut fetched).await
            {
                // the provider's close reason says more than the stream error it caused
                return Err(match paid.as_deref_mut() {
                    Some(p) => p.explain(&c, e).await,
                    None => e,
                });
            }
            conn = Some(c);
        }
        let files = self.file_list(ticket, provider, opts).await?;
        // a paid collection: its manifest names the vendor (the root commits to it); the deal
        // pays the registry's vendor. Check them before paying for more than the manifest.
        if let (Some(p), Some(c)) = (paid.as_deref_mut(), &conn)
            && let Some((_, manifest)) = files.iter().find(|(n, _)| n == bdc_core::protocol::MANIFEST_NAME)
            && let Err(e) = self.check_vendor(c, *manifest, provider, p, &mut fetched).await
        {
            p.verified(fetched);
            let _ = p.finish(c).await;
            return Err(e);
        }
        // a partial purchase: the patterns and the range are checked against the verified names
        // and size (a mistake costs the probe, which is paid for as what it is)
        let sel = match self.selection(ticket, &files, opts).await {
            Ok(sel) => sel,
            Err(e) => {
                if let (Some(p), Some(c)) = (paid.as_deref_mut(), &conn) {
                    p.verified(fetched);
                    let _ = p.finish(c).await;
                }
                return Err(e);
            }
        };
        // the chosen files' sizes: the last chunk of each (part of what is bought anyway)
        if let (Some(s), Some(c), Select::Files(_)) = (&sel, &conn, &opts.select)
            && !self.sizes_known(&s.files).await?
        {
            let mut b = GetRequest::builder();
            for (offset, _) in s.request.ranges.iter_non_empty_infinite().filter(|(o, _)| *o >= 2) {
                b = b.child(offset - 1, ChunkRanges::last_chunk());
            }
            if let Err(e) = self.probe(c, b.build(root), provider, content, paid.as_deref(), &mut fetched).await {
                return Err(match paid.as_deref_mut() {
                    Some(p) => p.explain(c, e).await,
                    None => e,
                });
            }
        }
        let (total, local_now) = self.wanted_state(&files, sel.as_ref()).await?;
        on(FetchEvent::Plan { total, local: local_now });

        let mut sources = Vec::new();
        if let Some(conn) = conn.take_if(|_| !more.is_empty()) {
            let want = match &sel {
                None => remote.local(content).await,
                Some(s) => remote.local_for_request(s.request.clone()).await,
            };
            let missing = want.map_err(FetchError::store)?.missing();
            let first = (conn, paid.take(), fetched);
            let (n, reports) = self.multi(ticket, missing, first, more, (local_now, total), &mut on).await?;
            fetched += n;
            sources = reports;
            if !self.holds(ticket, opts).await? {
                return Err(FetchError::Transfer { provider, source: TransferError::EndedEarly });
            }
        }
        if let Some(conn) = conn {
            let get = match &sel {
                None => remote.fetch(conn.clone(), content),
                Some(s) => {
                    let have = remote.local_for_request(s.request.clone()).await.map_err(FetchError::store)?;
                    remote.execute_get(conn.clone(), have.missing())
                }
            };
            let mut stream = get.stream();
            let mut done = local_now;
            while let Some(item) = stream.next().await {
                match item {
                    GetProgressItem::Progress(n) => {
                        done = local_now + n;
                        if let Some(p) = paid.as_deref() {
                            p.verified(fetched + n);
                        }
                        on(FetchEvent::Progress { done, total })
                    }
                    GetProgressItem::Done(stats) => {
                        fetched += stats.payload_bytes_read;
                        break;
                    }
                    GetProgressItem::Error(e) => {
                        let e = classify(e, provider, root, done);
                        if e.is_verification() {
                            self.metrics.verification_failures.inc();
                        }
                        if let Some(p) = paid.as_deref_mut() {
                            return Err(p.explain(&conn, e).await);
                        }
                        return Err(e);
                    }
                }
            }
            match paid {
                Some(p) => {
                    p.verified(fetched);
                    p.finish(&conn).await?;
                }
                None => conn.close(0u32.into(), b"done"),
            }
            if !self.holds(ticket, opts).await? {
                return Err(FetchError::Transfer { provider, source: TransferError::EndedEarly });
            }
        }
        on(FetchEvent::Progress { done: total, total });

        let exported = self.export(root, files, sel, &out, opts, &mut on).await?;
        self.metrics.verified_bytes.inc_by(fetched);
        self.metrics.fetches_completed.inc();
        Ok(FetchReport {
            root,
            provider,
            total_bytes: total,
            local_bytes: local_before,
            fetched_bytes: fetched,
            files: exported,
            elapsed_ms: start.elapsed().as_millis() as u64,
            sources,
        })
    }

    /// What this fetcher verified, refused and paid for since it was opened.
    pub fn metrics(&self) -> &crate::metrics::FetcherMetrics {
        &self.metrics
    }

    pub(crate) async fn connect(&self, ticket: &BlobTicket, alpn: &[u8]) -> Result<Connection, FetchError> {
        let addr = ticket.addr().clone();
        let provider = addr.id;
        if addr.addrs.is_empty() {
            return Err(FetchError::NoAddress(provider));
        }
        let secs = self.cfg.connect_timeout.as_secs().max(1);
        match tokio::time::timeout(self.cfg.connect_timeout, self.endpoint.connect(addr, alpn)).await {
            Err(_) => Err(FetchError::Timeout { provider, secs }),
            Ok(Err(source)) => Err(FetchError::Connect { provider, source }),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// Fetches the manifest in full (paying for it) and checks that the vendor it names is the one
    /// the deal pays. A manifest that names no vendor cannot be checked (raw blobs, unvendored
    /// collections: SECURITY.md).
    async fn check_vendor(
        &self,
        c: &Connection,
        manifest: Hash,
        provider: EndpointId,
        p: &crate::paid::PaidSession,
        fetched: &mut u64,
    ) -> Result<(), FetchError> {
        let blobs = self.store.blobs();
        if !matches!(blobs.status(manifest).await.map_err(FetchError::store)?, BlobStatus::Complete { .. }) {
            let mut stream = self.store.remote().execute_get(c.clone(), GetRequest::blob(manifest)).stream();
            while let Some(item) = stream.next().await {
                match item {
                    GetProgressItem::Progress(n) => p.verified(*fetched + n),
                    GetProgressItem::Done(stats) => {
                        *fetched += stats.payload_bytes_read;
                        break;
                    }
                    GetProgressItem::Error(e) => return Err(classify(e, provider, manifest, 0)),
                }
            }
        }
        let bytes = blobs.get_bytes(manifest).await.map_err(FetchError::store)?;
        let m = bdc_core::manifest::DatasetManifest::from_bytes(&bytes)
            .map_err(|e| FetchError::BadCollection { root: manifest, source: Box::new(e) })?;
        let registered = p.vendor();
        match m.vendor.as_deref() {
            Some(v) if v.parse::<alloy::primitives::Address>().ok() != Some(registered) => {
                Err(crate::paid::PaidError::VendorMismatch { manifest: v.to_string(), registered }.into())
            }
            _ => Ok(()),
        }
    }

    /// The (name, hash) pairs to export, with every name checked.
    async fn file_list(
        &self,
        ticket: &BlobTicket,
        provider: EndpointId,
        opts: &FetchOptions,
    ) -> Result<Vec<(String, Hash)>, FetchError> {
        let root = ticket.hash();
        if ticket.format() == BlobFormat::Raw {
            let name = opts.raw_name.clone().unwrap_or_else(|| root.to_hex().to_string());
            check_name(&name).map_err(|source| FetchError::UnsafeName { provider, source })?;
            return Ok(vec![(name, root)]);
        }
        let store: &iroh_blobs::api::Store = &self.store;
        let collection =
            Collection::load(root, store).await.map_err(|e| FetchError::BadCollection { root, source: Box::new(e) })?;
        let mut seen = HashSet::new();
        let mut files = Vec::with_capacity(collection.len());
        for (name, hash) in collection.iter() {
            check_name(name).map_err(|source| FetchError::UnsafeName { provider, source })?;
            if !seen.insert(name.clone()) {
                return Err(FetchError::DuplicateName { provider, name: name.clone() });
            }
            files.push((name.clone(), *hash));
        }
        Ok(files)
    }

    /// Phase 1: the cheap request for names and sizes. It asks again for what a resumed run may
    /// already hold (the probe's ranges are fixed), so it counts the bytes it added to the
    /// store, not the bytes it read: a paid resume does not pay twice for them.
    async fn probe(
        &self,
        c: &Connection,
        req: GetRequest,
        provider: EndpointId,
        content: HashAndFormat,
        paid: Option<&crate::paid::PaidSession>,
        fetched: &mut u64,
    ) -> Result<(), FetchError> {
        let held = async || -> Result<u64, FetchError> {
            let local = self.store.remote().local(content).await.map_err(FetchError::store)?;
            Ok(local.local_bytes())
        };
        let before = held().await?;
        let mut stream = self.store.remote().execute_get(c.clone(), req).stream();
        let mut read = 0;
        while let Some(item) = stream.next().await {
            match item {
                // a fresh fetch holds none of it: every byte read is new, and a probe larger than
                // the window (thousands of files) must be receipted as it arrives
                GetProgressItem::Progress(n) if before == 0 => {
                    if let Some(p) = paid {
                        p.verified(*fetched + n);
                    }
                }
                GetProgressItem::Progress(_) => {}
                GetProgressItem::Done(stats) => {
                    read = stats.payload_bytes_read;
                    break;
                }
                GetProgressItem::Error(e) => return Err(classify(e, provider, content.hash, 0)),
            }
        }
        // a fresh fetch adds all it read; never count more than was read
        *fetched += held().await?.saturating_sub(before).min(read);
        if let Some(p) = paid {
            p.verified(*fetched);
        }
        Ok(())
    }

    /// The part of the dataset `opts` selects, from the (verified) file list; None for all.
    async fn selection(
        &self,
        ticket: &BlobTicket,
        files: &[(String, Hash)],
        opts: &FetchOptions,
    ) -> Result<Option<Selection>, FetchError> {
        let size = match opts.select {
            Select::Range(_) => {
                self.store.blobs().observe(ticket.hash()).await.map_err(FetchError::store)?.validated_size()
            }
            _ => None,
        };
        Ok(select::selection(&opts.select, ticket.hash(), files, size)?)
    }

    /// Closes the endpoint and flushes the store (partial downloads survive for a resume).
    pub async fn shutdown(self) {
        self.endpoint.close().await;
        if !self.owns_store {
            return;
        }
        if let Err(e) = self.store.shutdown().await {
            tracing::error!("store shutdown failed: {e:#}");
        }
    }
}

/// How often a fetch resumes by itself after the provider aborted with an internal error. The
/// iroh-blobs store refuses a read when one blob's request queue is full (many buyers of one
/// blob starting at once), which passes; a copy that does not verify fails every time.
pub(crate) const ABORT_RETRIES: u32 = 2;

/// The wait before resume `attempt` (1, 2, …): growing, with jitter so buyers spread out.
pub(crate) fn abort_backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt) + rand::random::<u64>() % 300)
}
