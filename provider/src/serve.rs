//! Serving: an iroh endpoint with a router for bdc's protocols.
//!
//! Free datasets are served on `/iroh-bytes/4` (the plain iroh-blobs protocol). Every GET is
//! authorized by [`crate::access`]: its hash must be the root of a free dataset or a blob inside
//! one, and it may ask for children only through a collection root. Observe requests are held
//! to the same set. `get_many` and `push` are disabled, so the per-hash check cannot be bypassed
//! and nobody writes to the store.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use bdc_core::{
    BlobFormat, Hash,
    net::{NetConfig, NetError, bind_endpoint, dialable_addr},
    protocol::FREE_ALPN,
    ticket::BlobTicket,
};
use iroh::{EndpointAddr, EndpointId, protocol::Router};
use iroh_blobs::{
    BlobsProtocol,
    hashseq::HashSeq,
    provider::events::{
        AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode, RequestUpdate,
        ThrottleMode, TransferAborted, TransferCompleted,
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    access::FreeSet,
    jobs::{JobsConfig, JobsProtocol},
    metrics::ProviderMetrics,
    paid::{PaidConfig, PaidProtocol, ledger::Ledger},
    store::{ProviderStore, StoreError},
};
use alloy::{primitives::Address, providers::DynProvider};
use bdc_contracts::Contracts;
use bdc_core::{
    paid::Offer,
    protocol::{JOBS_ALPN, PAID_ALPN},
};

/// How `serve` runs.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub net: NetConfig,
    /// Cap on each request's upload rate, bytes per second (`None`: unlimited).
    pub max_rate: Option<u64>,
    /// Sell datasets on `bdc/paid/1` (needs a chain).
    pub paid: Option<PaidSetup>,
    /// Run compute jobs on `bdc/jobs/1`.
    pub jobs: Option<JobsConfig>,
    /// Serve `GET /metrics` (OpenMetrics text: the provider's and its endpoint's metrics) here.
    pub metrics_addr: Option<SocketAddr>,
}

/// What selling needs: terms, the chain, and the provider's payment address (whose key signs
/// the redeem transactions through `chain`).
#[derive(Debug, Clone)]
pub struct PaidSetup {
    pub cfg: PaidConfig,
    pub chain: Contracts<DynProvider>,
    pub address: Address,
}

impl ServeConfig {
    /// Loopback, port 0, no limits: what tests use.
    pub fn test() -> Self {
        Self { net: NetConfig::test(), max_rate: None, paid: None, jobs: None, metrics_addr: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("dataset {0} is not in this provider's catalog")]
    UnknownDataset(Hash),
    #[error("dataset {root} is not readable from the store: {source}")]
    BrokenDataset {
        root: Hash,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("dataset {root}: blob {blob} is not complete in the store")]
    IncompleteBlob { root: Hash, blob: Hash },
    #[error("dataset {root}: its manifest names vendor {vendor:?}, not an address: {source}")]
    BadVendor {
        root: Hash,
        vendor: String,
        #[source]
        source: alloy::hex::FromHexError,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Ledger(#[from] crate::paid::ledger::LedgerError),
    #[error("dataset {0} is not sold here: serve with a chain configuration to sell datasets")]
    NotSelling(Hash),
    #[error("cannot set up the job runner: {0}")]
    Jobs(#[source] std::io::Error),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What `serve` writes to `<data-dir>/serve.json` so other commands can make tickets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeInfo {
    pub addr: EndpointAddr,
    pub pid: u32,
}

impl ServeInfo {
    pub const FILE: &'static str = "serve.json";

    pub fn read(data_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(data_dir.join(Self::FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// A running provider.
#[derive(Debug)]
pub struct Provider {
    router: Router,
    store: ProviderStore,
    /// Per served dataset: every blob hash and the bytes a full download moves.
    contents: HashMap<Hash, (Arc<HashSet<Hash>>, u64)>,
    paid: Option<PaidSetup>,
    paid_handler: Option<PaidProtocol>,
    metrics: Arc<ProviderMetrics>,
    metrics_server: Option<iroh_metrics::service::MetricsServer>,
    /// The receipt ledger, watched at shutdown until every task holding it ended (its database
    /// stays locked while one does, and a provider restarted at once could not open it).
    ledger: Option<std::sync::Weak<Ledger>>,
}

impl Provider {
    /// Binds the endpoint and starts serving the store's free datasets.
    pub async fn spawn(store: ProviderStore, cfg: ServeConfig) -> Result<Self, ServeError> {
        let key = store.node_key()?;
        let mut contents = HashMap::new();
        for rec in store.catalog.iter() {
            contents.insert(rec.root, dataset_contents(&store, rec.root, rec.format).await?);
        }
        let mut free = FreeSet::default();
        for r in store.catalog.iter().filter(|r| r.free) {
            match r.format {
                BlobFormat::HashSeq => free.add_collection(r.root, contents[&r.root].0.iter().copied()),
                BlobFormat::Raw => free.add_blob(r.root),
            }
        }
        let free = Arc::new(RwLock::new(free));
        let collections: Arc<HashSet<Hash>> =
            Arc::new(store.catalog.iter().filter(|r| r.format == BlobFormat::HashSeq).map(|r| r.root).collect());
        let mut alpns = vec![FREE_ALPN.to_vec()];
        if cfg.paid.is_some() {
            alpns.push(PAID_ALPN.to_vec());
        }
        if cfg.jobs.is_some() {
            alpns.push(JOBS_ALPN.to_vec());
        }
        let endpoint = bind_endpoint(&cfg.net, key, alpns).await?;
        let metrics = Arc::new(ProviderMetrics::default());
        let events = free_events(free.clone(), cfg.max_rate, metrics.clone());
        let blobs = BlobsProtocol::new(&store.store, Some(events));
        let mut router = Router::builder(endpoint.clone()).accept(FREE_ALPN, blobs);
        let mut job_payments = None;
        let mut paid_handler = None;
        let mut ledger_watch = None;
        if let Some(p) = &cfg.paid {
            let ledger = Arc::new(Ledger::open(&store.dir.join(crate::paid::ledger::LEDGER_FILE))?);
            ledger_watch = Some(Arc::downgrade(&ledger));
            let datasets = contents.iter().map(|(k, (v, _))| (*k, v.clone())).collect();
            let vendors = manifest_vendors(&store).await?;
            let handler = PaidProtocol::new(
                store.store.clone().into(),
                ledger,
                p.chain.clone(),
                crate::paid::Seller { address: p.address, node: endpoint.id() },
                p.cfg.clone(),
                crate::paid::Datasets { contents: datasets, collections: collections.clone(), vendors },
                metrics.clone(),
            )
            .await;
            job_payments = Some(handler.job_payments());
            paid_handler = Some(handler.clone());
            router = router.accept(PAID_ALPN, handler);
        }
        if let Some(jc) = &cfg.jobs {
            let mut datasets = HashMap::new();
            for rec in store.catalog.iter() {
                let files = crate::jobs::dataset_files(&store.store, rec.root, rec.format, &rec.name)
                    .await
                    .map_err(|source| ServeError::BrokenDataset { root: rec.root, source })?;
                datasets.insert(rec.root, crate::jobs::JobDataset { free: rec.free, files });
            }
            let handler = JobsProtocol::new(
                jc.clone(),
                store.store.clone(),
                &store.dir,
                datasets,
                free.clone(),
                job_payments,
                metrics.clone(),
            )
            .await
            .map_err(ServeError::Jobs)?;
            router = router.accept(JOBS_ALPN, handler);
        }
        let router = router.spawn();
        let metrics_server = match cfg.metrics_addr {
            Some(addr) => {
                let registry = crate::metrics::registry(metrics.clone());
                let server = iroh_metrics::service::MetricsServer::spawn(addr, registry)
                    .await
                    .map_err(|source| ServeError::Metrics { addr, source })?;
                tracing::info!(addr = %server.local_addr(), "metrics on /metrics");
                Some(server)
            }
            None => None,
        };
        let this = Self {
            router,
            store,
            contents,
            paid: cfg.paid.clone(),
            paid_handler,
            metrics,
            metrics_server,
            ledger: ledger_watch,
        };
        let info = ServeInfo { addr: this.addr(), pid: std::process::id() };
        let path = this.store.dir.join(ServeInfo::FILE);
        bdc_core::keys::write_private(&path, &serde_json::to_vec_pretty(&info).expect("serializes"))
            .map_err(|source| ServeError::Write { path, source })?;
        tracing::info!(id = %this.router.endpoint().id(), addr = ?info.addr.addrs, "serving");
        Ok(this)
    }

    /// The address peers dial.
    pub fn addr(&self) -> EndpointAddr {
        dialable_addr(self.router.endpoint())
    }

    /// Local socket addresses.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.router.endpoint().bound_sockets()
    }

    pub fn store(&self) -> &ProviderStore {
        &self.store
    }

    /// What this provider sells on, if it sells.
    pub fn paid_setup(&self) -> Option<&PaidSetup> {
        self.paid.as_ref()
    }

    /// The provider's metrics.
    pub fn metrics(&self) -> &Arc<ProviderMetrics> {
        &self.metrics
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|m| m.local_addr())
    }

    /// Deal gates the paid protocol holds in memory (None when not selling).
    pub fn deal_gates(&self) -> Option<usize> {
        self.paid_handler.as_ref().map(PaidProtocol::deal_gates)
    }

    /// A ticket for a published dataset.
    pub fn ticket(&self, root: Hash) -> Result<BlobTicket, ServeError> {
        let rec = self.store.catalog.get(&root).ok_or(ServeError::UnknownDataset(root))?;
        Ok(BlobTicket::new(self.addr(), root, rec.format))
    }

    /// The offer for a dataset sold on `bdc/paid/1`.
    pub fn offer(&self, root: Hash) -> Result<Offer, ServeError> {
        let paid = self.paid.as_ref().ok_or(ServeError::NotSelling(root))?;
        let ticket = self.ticket(root)?;
        let size = self.contents.get(&root).map(|c| c.1).unwrap_or(0);
        let d = paid.chain.deployment();
        Ok(Offer {
            ticket: ticket.to_string(),
            provider: paid.address.into_array(),
            price_per_byte: paid.cfg.price_per_byte,
            window: paid.cfg.window,
            size,
            chain_id: d.chain_id,
            escrow: d.escrow.into_array(),
            arbiters: paid.cfg.arbiters.iter().map(|a| a.into_array()).collect(),
            expiry_margin: paid.cfg.expiry_margin.as_secs(),
        })
    }

    /// Stops accepting, closes connections, and flushes the store.
    pub async fn shutdown(self) {
        let Self { router, store, paid_handler, ledger, .. } = self;
        let _ = std::fs::remove_file(store.dir.join(ServeInfo::FILE));
        // The blobs protocol handler shuts the store down as part of the router's shutdown.
        if let Err(e) = router.shutdown().await {
            tracing::warn!("router shutdown: {e:#}; closing the store directly");
            store.shutdown().await;
        }
        // the ledger closes when the last task holding it (a connection's, the event handler's,
        // the redeemer) ends, which needs the router's handlers gone: wait for that, so that a
        // provider started next on this data dir can open it
        drop(router);
        drop(paid_handler);
        if let Some(ledger) = ledger {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while ledger.strong_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if ledger.strong_count() > 0 {
                tracing::warn!("the receipt ledger is still held by a task 10 s after shutdown");
            }
        }
    }
}

/// Every blob hash of a dataset and the payload bytes a full download moves.
async fn dataset_contents(
    store: &ProviderStore,
    root: Hash,
    format: BlobFormat,
) -> Result<(Arc<HashSet<Hash>>, u64), ServeError> {
    let blobs = store.store.blobs();
    let broken = |e: Box<dyn std::error::Error + Send + Sync>| ServeError::BrokenDataset { root, source: e };
    let mut hashes = vec![root];
    if format == BlobFormat::HashSeq {
        let bytes = blobs.get_bytes(root).await.map_err(|e| broken(Box::new(e)))?;
        let seq = HashSeq::try_from(bytes).map_err(|e| broken(e.into()))?;
        hashes.extend(seq.iter());
    }
    let mut size = 0;
    for h in &hashes {
        match blobs.status(*h).await.map_err(|e| broken(Box::new(e)))? {
            iroh_blobs::api::blobs::BlobStatus::Complete { size: s } => size += s,
            _ => return Err(ServeError::IncompleteBlob { root, blob: *h }),
        }
    }
    Ok((Arc::new(hashes.into_iter().collect()), size))
}

/// The vendor each sold collection's `bdc.json` names (a deal must pay that vendor).
async fn manifest_vendors(store: &ProviderStore) -> Result<HashMap<Hash, Option<Address>>, ServeError> {
    let mut out = HashMap::new();
    for rec in store.catalog.iter().filter(|r| !r.free) {
        let broken =
            |e: Box<dyn std::error::Error + Send + Sync>| ServeError::BrokenDataset { root: rec.root, source: e };
        let Some(h) = store.manifest_hash(rec.root).await? else {
            out.insert(rec.root, None);
            continue;
        };
        let bytes = store.store.blobs().get_bytes(h).await.map_err(|e| broken(Box::new(e)))?;
        let m = bdc_core::manifest::DatasetManifest::from_bytes(&bytes).map_err(|e| broken(Box::new(e)))?;
        let vendor = match m.vendor.as_deref() {
            None => None,
            Some(v) => Some(v.parse::<Address>().map_err(|source| ServeError::BadVendor {
                root: rec.root,
                vendor: v.to_string(),
                source,
            })?),
        };
        out.insert(rec.root, vendor);
    }
    Ok(out)
}

/// The event handler of the free protocol: authorize GETs and Observes by hash (children only
/// through a collection root), optionally cap the rate.
fn free_events(free: Arc<RwLock<FreeSet>>, max_rate: Option<u64>, metrics: Arc<ProviderMetrics>) -> EventSender {
    let mask = EventMask {
        // intercepted (not notified) so a connection's peer is known before its first request
        connected: ConnectMode::Intercept,
        // with transfer events: they count the bytes served
        get: RequestMode::InterceptLog,
        get_many: RequestMode::Disabled,
        observe: ObserveMode::Intercept,
        throttle: if max_rate.is_some() { ThrottleMode::Intercept } else { ThrottleMode::None },
        ..EventMask::DEFAULT
    };
    let (tx, mut rx) = EventSender::channel(64, mask);
    tokio::spawn(async move {
        // each connection's peer: job results are readable by their buyer only
        let mut peers: HashMap<u64, EndpointId> = HashMap::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                ProviderMessage::ClientConnected(msg) => {
                    if let Some(id) = msg.endpoint_id {
                        peers.insert(msg.connection_id, id);
                    }
                    msg.tx.send(Ok(())).await.ok();
                }
                ProviderMessage::ConnectionClosed(msg) => {
                    peers.remove(&msg.connection_id);
                }
                ProviderMessage::GetRequestReceived(msg) => {
                    let hash = msg.request.hash;
                    let peer = peers.get(&msg.connection_id);
                    let ok = free.read().expect("free set lock").allows(&msg.request, peer);
                    if !ok {
                        tracing::warn!(%hash, conn = msg.connection_id, "refused GET: not a free blob, or children of a non-collection");
                    }
                    let res = if ok { Ok(()) } else { Err(AbortReason::Permission) };
                    msg.tx.send(res).await.ok();
                    let (metrics, mut updates) = (metrics.clone(), msg.rx);
                    tokio::spawn(async move {
                        while let Ok(Some(u)) = updates.recv().await {
                            if let RequestUpdate::Completed(TransferCompleted { stats })
                            | RequestUpdate::Aborted(TransferAborted { stats }) = u
                            {
                                metrics.free_bytes_sent.inc_by(stats.payload_bytes_sent);
                            }
                        }
                    });
                }
                ProviderMessage::ObserveRequestReceived(msg) => {
                    let peer = peers.get(&msg.connection_id);
                    let ok = free.read().expect("free set lock").readable(&msg.request.hash, peer);
                    msg.tx.send(if ok { Ok(()) } else { Err(AbortReason::Permission) }).await.ok();
                }
                ProviderMessage::Throttle(msg) => {
                    if let Some(rate) = max_rate {
                        let delay = Duration::from_secs_f64(msg.size as f64 / rate.max(1) as f64);
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            msg.tx.send(Ok(())).await.ok();
                        });
                    } else {
                        msg.tx.send(Ok(())).await.ok();
                    }
                }
                _ => {}
            }
        }
    });
    tx
}
