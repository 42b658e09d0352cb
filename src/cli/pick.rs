//! Providers of a dataset root, picked through a market (`bdc fetch 0x<root> --market`,
//! `bdc compute 0x<root> --market`): the market ranks the offers with `POST /match`; the buyer
//! checks each listing's signature itself, against its own deployment's domain (the market is
//! trusted to rank, not to speak for a provider).

use std::time::Duration;

use alloy::primitives::{Address, B256};
use anyhow::Context;
use bdc_contracts::{
    Deployment,
    listing::{Listing, ListingBody, listing_signer, market_domain},
};
use iroh::EndpointAddr;
use iroh_blobs::{BlobFormat, Hash, ticket::BlobTicket};
use serde_json::{Value, json};

/// What `--require` and `--rank` ask of the market.
#[derive(Debug, Clone, clap::Args)]
pub struct MatchArgs {
    /// With a root: only offers for which this CEL expression is true (see POST /match).
    #[arg(long)]
    pub require: Option<String>,
    /// With a root: a named CEL criterion, NAME=EXPR, repeatable; offers are ranked by the sum
    /// (default: cheap=-1.0 * price_gib, reputation=reputation, speed=throughput_mibps / 100.0).
    #[arg(long = "rank", value_name = "NAME=EXPR")]
    pub rank: Vec<String>,
}

/// One ranked offer whose listing the buyer has checked.
#[derive(Debug, Clone)]
pub struct MarketOffer {
    /// Dials the listing's node at its addresses, for the root (a collection).
    pub ticket: BlobTicket,
    pub listing: ListingBody,
    /// The listing's signer: the provider's Ethereum address.
    pub provider: Address,
    pub price_per_byte: u128,
    /// The dataset's size as the market knows it.
    pub size: u64,
    /// The arbiters the provider's signed listing accepts.
    pub arbiters: Vec<Address>,
    pub score: f64,
    pub criteria: Value,
}

impl MarketOffer {
    /// The line printed when an offer is taken.
    pub fn picked(&self, of: usize) -> String {
        format!(
            "market picked provider {:#x} (score {:.3}: {}) of {of} offer(s)",
            self.provider, self.score, self.criteria
        )
    }
}

/// Up to `limit` offers of `root`, best first, each a listing of `root` signed by the provider
/// it names. An offer that fails the check is left out with a warning; none left is an error.
pub async fn offers(
    market: &str,
    root: B256,
    m: &MatchArgs,
    limit: usize,
    d: &Deployment,
) -> anyhow::Result<Vec<MarketOffer>> {
    let mut rank = serde_json::Map::new();
    if m.rank.is_empty() {
        for (k, v) in
            [("cheap", "-1.0 * price_gib"), ("reputation", "reputation"), ("speed", "throughput_mibps / 100.0")]
        {
            rank.insert(k.into(), v.into());
        }
    }
    for r in &m.rank {
        let (k, v) = r.split_once('=').with_context(|| format!("--rank {r:?}: expected NAME=EXPR"))?;
        rank.insert(k.trim().into(), v.trim().into());
    }
    let body = json!({ "root": format!("{root:#x}"), "require": m.require, "rank": rank, "limit": limit });
    let url = format!("{}/match", market.trim_end_matches('/'));
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the market at {url}"))?;
    let status = res.status();
    let answer: Value = res.json().await.with_context(|| format!("{url} answered {status} without JSON"))?;
    anyhow::ensure!(status.is_success(), "the market refused the match ({status}): {}", answer["error"]);
    let ranked = answer["offers"].as_array().cloned().unwrap_or_default();
    let domain = market_domain(d.chain_id, d.registry);
    let mut out = Vec::with_capacity(ranked.len());
    for o in &ranked {
        match checked(o, root, &domain) {
            Ok(offer) => out.push(offer),
            Err(e) => eprintln!("warning: skipping a market offer: {e:#}"),
        }
    }
    anyhow::ensure!(!out.is_empty(), "the market has no current offer for {root:#x} that meets the requirements");
    Ok(out)
}

/// An offer from `/match`, checked: a listing of `root` signed by the provider it names.
fn checked(o: &Value, root: B256, domain: &alloy::sol_types::Eip712Domain) -> anyhow::Result<MarketOffer> {
    let listing: ListingBody = serde_json::from_value(o["listing"].clone()).context("the market's offer")?;
    let typed: Listing = listing.to_eip712().map_err(|e| anyhow::anyhow!("the market's offer: {e}"))?;
    let sig = hex::decode(o["signature"].as_str().unwrap_or_default().trim_start_matches("0x"))
        .context("the market's offer: signature")?;
    let signer = listing_signer(domain, &typed, &sig).map_err(|e| anyhow::anyhow!("the market's offer: {e}"))?;
    anyhow::ensure!(
        signer == typed.provider && typed.datasetRoot == root,
        "the market's offer is not a listing of {root:#x} signed by its provider {:#x} (signed by {signer:#x})",
        typed.provider
    );
    let mut addr = EndpointAddr::new(
        iroh::EndpointId::from_bytes(&typed.providerNodeId.0).context("the listing's node id is not a valid key")?,
    );
    for s in &listing.addrs {
        addr.addrs.insert(iroh::TransportAddr::Ip(s.parse().with_context(|| format!("listing address {s}"))?));
    }
    Ok(MarketOffer {
        ticket: BlobTicket::new(addr, Hash::from_bytes(root.0), BlobFormat::HashSeq),
        provider: typed.provider,
        price_per_byte: typed.pricePerByte.to::<u128>(),
        size: o["size"].as_u64().unwrap_or(0),
        arbiters: typed.arbiters.clone(),
        score: o["score"].as_f64().unwrap_or(0.0),
        criteria: o["criteria"].clone(),
        listing,
    })
}
