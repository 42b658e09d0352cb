//! Announcing sold datasets to a market: one EIP-712-signed listing per dataset, posted to
//! `<market>/listings` at start and again before it expires (see docs/MARKET.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::signers::local::PrivateKeySigner;
use bdc_contracts::listing::{ListingBody, SignedListing, market_domain, sign_listing};
use bdc_core::{Hash, protocol::MANIFEST_NAME};
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
    #[error("cannot read the manifest of {root}: {reason}")]
    Manifest { root: Hash, reason: String },
    #[error("signing the listing failed: {0}")]
    Sign(String),
    #[error("market {market}: {reason}")]
    Market { market: String, reason: String },
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
                dataset_root: format!("0x{}", rec.root.to_hex()),
                provider: format!("{:#x}", paid.address),
                provider_node_id: format!("0x{}", hex::encode(node.id.as_bytes())),
                price_per_byte: paid.cfg.price_per_byte.to_string(),
                window: paid.cfg.window,
                addrs: addrs.clone(),
                region: a.region.clone(),
                capacity_mibps: a.capacity_mibps,
                arbiters: paid.cfg.arbiters.iter().map(|x| format!("{x:#x}")).collect(),
                issued_at: issued,
                expires_at: issued + a.ttl.as_secs().max(60),
            };
            let typed = body.to_eip712().map_err(AnnounceError::Sign)?;
            let sig = sign_listing(&a.signer, &domain, &typed).map_err(AnnounceError::Sign)?;
            out.push(SignedListing {
                listing: body,
                manifest,
                signature: format!("0x{}", hex::encode(sig.as_bytes())),
            });
        }
        Ok(out)
    }

    /// The `bdc.json` text of a published collection.
    async fn manifest_text(&self, root: Hash) -> Result<String, AnnounceError> {
        let err = |reason: String| AnnounceError::Manifest { root, reason };
        let store: &iroh_blobs::api::Store = &self.store().store;
        let c = Collection::load(root, store).await.map_err(|e| err(e.to_string()))?;
        let (_, h) = c.iter().find(|(n, _)| n == MANIFEST_NAME).ok_or_else(|| err(format!("no {MANIFEST_NAME}")))?;
        let bytes = store.blobs().get_bytes(*h).await.map_err(|e| err(e.to_string()))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| err(e.to_string()))
    }
}

/// Posts every listing once; returns how many the market stored.
pub async fn announce_once(p: &Provider, a: &Announce) -> Result<usize, AnnounceError> {
    let listings = p.listings(a).await?;
    let url = format!("{}/listings", a.market.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| AnnounceError::Market { market: a.market.clone(), reason: e.to_string() })?;
    let mut stored = 0;
    for l in &listings {
        let res = http
            .post(&url)
            .json(l)
            .send()
            .await
            .map_err(|e| AnnounceError::Market { market: a.market.clone(), reason: e.to_string() })?;
        let status = res.status();
        if status.is_success() {
            stored += 1;
        } else {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            let reason = body["error"].as_str().unwrap_or("no reason given").to_string();
            return Err(AnnounceError::Market {
                market: a.market.clone(),
                reason: format!("listing of {} refused ({status}): {reason}", l.listing.dataset_root),
            });
        }
    }
    Ok(stored)
}
