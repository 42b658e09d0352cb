//! Announcing sold datasets to a market: one EIP-712-signed listing per dataset, posted to
//! `<market>/listings` at start and again before it expires (see docs/MARKET.md).

use std::time::Duration;

use bdc_core::time::unix_now as now;

use alloy::{primitives::B256, signers::local::PrivateKeySigner};
use bdc_contracts::listing::{SignatureError, market_domain};
use bdc_core::{Hash, protocol::MANIFEST_NAME};
use bdc_market_api::{ClientError, ListingBody, MarketClient, SignedListing};
use iroh::TransportAddr;
use iroh_blobs::{BlobFormat, format::collection::Collection};

use crate::serve::Provider;

/// Where and how to announce.
#[derive(Debug, Clone)]
pub struct Announce {
    /// The market's base URL, e.g. `http://127.0.0.1:8480`.
    pub market: String,
    /// The provider's Ethereum key (the listing's `provider` and signer).
    pub signer: PrivateKeySigner,
    pub region: String,
    /// Declared serving capacity, MiB/s.
    pub capacity_mibps: u64,
    /// How long each listing is valid; it is re-posted at half this.
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("this provider does not sell (start it with --sell to announce)")]
    NotSelling,
    #[error("cannot read the manifest of {root}: {source}")]
    Manifest {
        root: Hash,
        #[source]
        source: ManifestReadError,
    },
    #[error("signing the listing failed: {0}")]
    Sign(#[from] SignatureError),
    #[error("the listing of {root} was not taken: {source}")]
    Market {
        root: B256,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Client(ClientError),
}

/// Why a published collection's `bdc.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestReadError {
    #[error("the collection does not load: {0}")]
    Collection(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("it holds no {MANIFEST_NAME}")]
    Missing,
    #[error("the store cannot read it: {0}")]
    Store(#[source] iroh_blobs::api::ExportBaoError),
    #[error("it is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

impl Provider {
    /// This provider's signed listing of every dataset it sells. Raw blobs carry no manifest
    /// and are not listed.
    pub async fn listings(&self, a: &Announce) -> Result<Vec<SignedListing>, AnnounceError> {
        let paid = self.paid_setup().ok_or(AnnounceError::NotSelling)?;
        let d = paid.chain.deployment();
        let domain = market_domain(d.chain_id, d.registry);
        let node = self.addr();
        let addrs: Vec<String> = node
            .addrs
            .iter()
            .filter_map(|t| match t {
                TransportAddr::Ip(s) => Some(s.to_string()),
                _ => None,
            })
            .collect();
        let issued = now();
        let mut out = Vec::new();
        for rec in self.store().catalog().iter().filter(|r| !r.free && r.format == BlobFormat::HashSeq) {
            let manifest = self.manifest_text(rec.root).await?;
            let body = ListingBody {
                dataset_root: B256::from(*rec.root.as_bytes()),
                provider: paid.address,
                provider_node_id: B256::from(*node.id.as_bytes()),
                price_per_byte: paid.cfg.price_per_byte.into(),
                window: paid.cfg.window,
                size: self.offer(rec.root).map(|o| o.size).unwrap_or(0),
                mirror: rec.mirror,
                addrs: addrs.clone(),
                region: a.region.clone(),
                capacity_mibps: a.capacity_mibps,
                arbiters: paid.cfg.arbiters.clone(),
                issued_at: issued,
                expires_at: issued + a.ttl.as_secs().max(60),
            };
            out.push(SignedListing::sign(&a.signer, &domain, body, manifest)?);
        }
        Ok(out)
    }

    /// The `bdc.json` text of a published collection.
    async fn manifest_text(&self, root: Hash) -> Result<String, AnnounceError> {
        let read = async {
            let store: &iroh_blobs::api::Store = &self.store().store;
            let c = Collection::load(root, store).await.map_err(|e| ManifestReadError::Collection(Box::new(e)))?;
            let (_, h) = c.iter().find(|(n, _)| n == MANIFEST_NAME).ok_or(ManifestReadError::Missing)?;
            let bytes = store.blobs().get_bytes(*h).await.map_err(ManifestReadError::Store)?;
            Ok::<_, ManifestReadError>(String::from_utf8(bytes.to_vec())?)
        };
        read.await.map_err(|source| AnnounceError::Manifest { root, source })
    }
}

/// Posts every listing once; returns how many the market stored.
pub async fn announce_once(p: &Provider, a: &Announce) -> Result<usize, AnnounceError> {
    let listings = p.listings(a).await?;
    let market = MarketClient::new(&a.market).map_err(AnnounceError::Client)?;
    for l in &listings {
        market
            .post_listing(l)
            .await
            .map_err(|source| AnnounceError::Market { root: l.listing.dataset_root, source })?;
    }
    Ok(listings.len())
}
