//! Serving: an iroh endpoint with a router for bdc's protocols.
//!
//! Free datasets are served on `/iroh-bytes/4` (the plain iroh-blobs protocol). Every GET is
//! authorized: its hash must be the root of a free dataset or a blob inside one. `get_many` and
//! `push` are disabled, so the per-hash check cannot be bypassed and nobody writes to the store.

use std::{
    collections::HashSet,
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
use iroh::{EndpointAddr, protocol::Router};
use iroh_blobs::{
    BlobsProtocol,
    hashseq::HashSeq,
    provider::events::{
        AbortReason, EventMask, EventSender, ProviderMessage, RequestMode, ThrottleMode,
    },
};
use serde::{Deserialize, Serialize};

use crate::store::{ProviderStore, StoreError};

/// How `serve` runs.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub net: NetConfig,
    /// Cap on each request's upload rate, bytes per second (`None`: unlimited).
    pub max_rate: Option<u64>,
}

impl ServeConfig {
    /// Loopback, port 0, no limits: what tests use.
    pub fn test() -> Self {
        Self {
            net: NetConfig::test(),
            max_rate: None,
        }
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
    #[error("dataset {root} is not readable from the store: {reason}")]
    BrokenDataset { root: Hash, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
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
    free: Arc<RwLock<HashSet<Hash>>>,
}

impl Provider {
    /// Binds the endpoint and starts serving the store's free datasets.
    pub async fn spawn(store: ProviderStore, cfg: ServeConfig) -> Result<Self, ServeError> {
        let key = store.node_key()?;
        let free = Arc::new(RwLock::new(HashSet::new()));
        let endpoint = bind_endpoint(&cfg.net, key, vec![FREE_ALPN.to_vec()]).await?;
        let events = free_events(free.clone(), cfg.max_rate);
        let blobs = BlobsProtocol::new(&store.store, Some(events));
        let router = Router::builder(endpoint).accept(FREE_ALPN, blobs).spawn();
        let this = Self {
            router,
            store,
            free,
        };
        let roots: Vec<Hash> = this
            .store
            .catalog
            .iter()
            .filter(|r| r.free)
            .map(|r| r.root)
            .collect();
        for root in roots {
            this.allow_free(root).await?;
        }
        let info = ServeInfo {
            addr: this.addr(),
            pid: std::process::id(),
        };
        let path = this.store.dir.join(ServeInfo::FILE);
        bdc_core::keys::write_private(
            &path,
            &serde_json::to_vec_pretty(&info).expect("serializes"),
        )
        .map_err(|source| ServeError::Write { path, source })?;
        tracing::info!(id = %this.router.endpoint().id(), addr = ?info.addr.addrs, "serving");
        Ok(this)
    }

    /// Adds a dataset's root and all its blobs to the set served on the free protocol.
    async fn allow_free(&self, root: Hash) -> Result<(), ServeError> {
        let rec = self
            .store
            .catalog
            .get(&root)
            .ok_or(ServeError::UnknownDataset(root))?;
        let mut hashes = vec![root];
        if rec.format == BlobFormat::HashSeq {
            let bytes = self
                .store
                .store
                .blobs()
                .get_bytes(root)
                .await
                .map_err(|e| ServeError::BrokenDataset {
                    root,
                    reason: e.to_string(),
                })?;
            let seq = HashSeq::try_from(bytes).map_err(|e| ServeError::BrokenDataset {
                root,
                reason: e.to_string(),
            })?;
            hashes.extend(seq.iter());
        }
        self.free.write().expect("free set lock").extend(hashes);
        Ok(())
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

    /// A ticket for a published dataset.
    pub fn ticket(&self, root: Hash) -> Result<BlobTicket, ServeError> {
        let rec = self
            .store
            .catalog
            .get(&root)
            .ok_or(ServeError::UnknownDataset(root))?;
        Ok(BlobTicket::new(self.addr(), root, rec.format))
    }

    /// Stops accepting, closes connections, and flushes the store.
    pub async fn shutdown(self) {
        let _ = std::fs::remove_file(self.store.dir.join(ServeInfo::FILE));
        // The blobs protocol handler shuts the store down as part of the router's shutdown.
        if let Err(e) = self.router.shutdown().await {
            tracing::warn!("router shutdown: {e:#}; closing the store directly");
            self.store.shutdown().await;
        }
    }
}

/// The event handler of the free protocol: authorize GETs by hash, optionally cap the rate.
fn free_events(free: Arc<RwLock<HashSet<Hash>>>, max_rate: Option<u64>) -> EventSender {
    let mask = EventMask {
        get: RequestMode::Intercept,
        get_many: RequestMode::Disabled,
        throttle: if max_rate.is_some() {
            ThrottleMode::Intercept
        } else {
            ThrottleMode::None
        },
        ..EventMask::DEFAULT
    };
    let (tx, mut rx) = EventSender::channel(64, mask);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                ProviderMessage::GetRequestReceived(msg) => {
                    let hash = msg.request.hash;
                    let ok = free.read().expect("free set lock").contains(&hash);
                    if !ok {
                        tracing::warn!(%hash, conn = msg.connection_id, "refused GET: not a free dataset");
                    }
                    let res = if ok {
                        Ok(())
                    } else {
                        Err(AbortReason::Permission)
                    };
                    msg.tx.send(res).await.ok();
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
