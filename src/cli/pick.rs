//! Providers of a dataset root, picked through a market (`bdc fetch 0x<root> --market`,
//! `bdc compute 0x<root> --market`): the market ranks the offers with `POST /match`; the buyer
//! checks each listing's signature itself, against its own deployment's domain (the market is
//! trusted to rank, not to speak for a provider).

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use anyhow::Context;
use bdc_contracts::{Deployment, listing::market_domain};
use bdc_market_api::{ListingBody, MarketClient, MatchRequest, MatchedOffer};
use iroh::EndpointAddr;
use iroh_blobs::{BlobFormat, Hash, ticket::BlobTicket};

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
    /// The dataset's size in the provider's signed word (all its blobs): what a deposit is
    /// sized by. The market's own figures are not signed, so it could inflate them.
    pub size: u64,
    /// The arbiters the provider's signed listing accepts.
    pub arbiters: Vec<Address>,
    pub score: f64,
    pub criteria: BTreeMap<String, f64>,
}

impl MarketOffer {
    /// The line printed when an offer is taken.
    pub fn picked(&self, of: usize) -> String {
        let criteria: Vec<String> = self.criteria.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
        format!(
            "market picked provider {:#x} (score {:.3}: {}) of {of} offer(s)",
            self.provider,
            self.score,
            criteria.join(", ")
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
    let mut rank = BTreeMap::new();
    if m.rank.is_empty() {
        for (k, v) in
            [("cheap", "-1.0 * price_gib"), ("reputation", "reputation"), ("speed", "throughput_mibps / 100.0")]
        {
            rank.insert(k.to_string(), v.to_string());
        }
    }
    for r in &m.rank {
        let (k, v) = r.split_once('=').with_context(|| format!("--rank {r:?}: expected NAME=EXPR"))?;
        rank.insert(k.trim().to_string(), v.trim().to_string());
    }
    let req = MatchRequest { root: Some(format!("{root:#x}")), require: m.require.clone(), rank, limit: Some(limit) };
    let ranked = MarketClient::new(market)?.match_offers(&req).await?.offers;
    let domain = market_domain(d.chain_id, d.registry);
    let mut out = Vec::with_capacity(ranked.len());
    for o in ranked {
        match checked(o, root, &domain) {
            Ok(offer) => out.push(offer),
            Err(e) => eprintln!("warning: skipping a market offer: {e:#}"),
        }
    }
    anyhow::ensure!(!out.is_empty(), "the market has no current offer for {root:#x} that meets the requirements");
    Ok(out)
}

/// An offer from `/match`, checked: a listing of `root` signed by the provider it names.
fn checked(o: MatchedOffer, root: B256, domain: &alloy::sol_types::Eip712Domain) -> anyhow::Result<MarketOffer> {
    let listing: ListingBody = o.listing;
    let signed = bdc_market_api::SignedListing { listing, manifest: String::new(), signature: o.signature };
    let signer = signed.signer(domain).context("the market's offer")?;
    let listing = signed.listing;
    anyhow::ensure!(listing.size > 0, "the market's offer from {:#x} signs no dataset size", listing.provider);
    anyhow::ensure!(
        signer == listing.provider && listing.dataset_root == root,
        "the market's offer is not a listing of {root:#x} signed by its provider {:#x} (signed by {signer:#x})",
        listing.provider
    );
    let mut addr = EndpointAddr::new(
        iroh::EndpointId::from_bytes(&listing.provider_node_id.0)
            .context("the listing's node id is not a valid key")?,
    );
    for s in &listing.addrs {
        addr.addrs.insert(iroh::TransportAddr::Ip(s.parse().with_context(|| format!("listing address {s}"))?));
    }
    Ok(MarketOffer {
        ticket: BlobTicket::new(addr, Hash::from_bytes(root.0), BlobFormat::HashSeq),
        provider: listing.provider,
        price_per_byte: listing.price_per_byte.0,
        size: listing.size,
        arbiters: listing.arbiters.clone(),
        score: o.score,
        criteria: o.criteria,
        listing,
    })
}

/// Tries `candidates` in turn (printing each one's `picked` line, if any) and returns the first
/// success. A failure for which `next` says another candidate may serve is said on stderr —
/// `warning: {who} failed: {e}; moving to the next {kind} (i of n)` — and the next is tried; any
/// other failure, or the last one, is returned. `none` when there is no candidate.
pub async fn first_that_serves<C, T, E, F, Fut>(
    candidates: &[C],
    kind: &str,
    describe: impl Fn(&C) -> (String, Option<String>),
    next: impl Fn(&E) -> bool,
    none: E,
    mut attempt: F,
) -> Result<T, E>
where
    C: Clone,
    E: std::fmt::Display,
    F: FnMut(C) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let n = candidates.len();
    for (i, c) in candidates.iter().enumerate() {
        let (who, picked) = describe(c);
        if let Some(line) = picked {
            eprintln!("{line}");
        }
        match attempt(c.clone()).await {
            Err(e) if i + 1 < n && next(&e) => {
                eprintln!("warning: {who} failed: {e}; moving to the next {kind} ({} of {n})", i + 2)
            }
            r => return r,
        }
    }
    Err(none)
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;
    use bdc_market_api::{Amount, OfferAttrs, SignedListing};

    use super::*;

    /// A market offer of `root` whose listing `key` signed with `size`.
    fn offer(key: &PrivateKeySigner, root: B256, size: u64, domain: &alloy::sol_types::Eip712Domain) -> MatchedOffer {
        let listing = ListingBody {
            dataset_root: root,
            provider: key.address(),
            provider_node_id: B256::from(*iroh::SecretKey::generate().public().as_bytes()),
            price_per_byte: Amount(1_000),
            window: 4 << 20,
            size,
            mirror: false,
            addrs: vec!["127.0.0.1:4433".into()],
            region: "eu".into(),
            capacity_mibps: 100,
            arbiters: vec![Address::repeat_byte(3)],
            issued_at: 1,
            expires_at: 2,
        };
        let signed = SignedListing::sign(key, domain, listing, String::new()).unwrap();
        let attributes = OfferAttrs {
            price_gib: 0.0,
            capacity_mibps: 100.0,
            reputation: 0.0,
            deals_completed: 0,
            region: "eu".into(),
            window_mib: 4.0,
            size_gib: 1.0,
            throughput_mibps: 0.0,
        };
        MatchedOffer {
            provider: key.address(),
            root,
            node_id: signed.listing.provider_node_id,
            addrs: signed.listing.addrs.clone(),
            price_per_byte: Amount(1_000),
            window: 4 << 20,
            // what the market says, which the buyer does not use
            size: 1 << 40,
            listing: signed.listing,
            signature: signed.signature,
            attributes,
            criteria: BTreeMap::new(),
            score: 0.0,
        }
    }

    /// A buyer sizes its deposit from a market offer: it takes the offer only as the provider
    /// signed it, for the root it asked for, with a size (a provider signing 0 would make the
    /// deposit a guess, a market inflating it would lock the buyer's funds).
    #[test]
    fn a_market_offer_is_taken_only_as_its_provider_signed_it() {
        let key = PrivateKeySigner::random();
        let domain = market_domain(31337, Address::repeat_byte(9));
        let root = B256::repeat_byte(1);
        let good = checked(offer(&key, root, 3 << 20, &domain), root, &domain).unwrap();
        assert_eq!((good.size, good.provider), (3 << 20, key.address()), "the signed size, not the market's");

        let err = checked(offer(&key, root, 0, &domain), root, &domain).unwrap_err();
        assert!(format!("{err:#}").contains("signs no dataset size"), "{err:#}");

        let mut inflated = offer(&key, root, 3 << 20, &domain);
        inflated.listing.size = 3 << 30;
        let err = checked(inflated, root, &domain).unwrap_err();
        assert!(format!("{err:#}").contains("not a listing of"), "{err:#}");

        let other = checked(offer(&key, B256::repeat_byte(7), 3 << 20, &domain), root, &domain).unwrap_err();
        assert!(format!("{other:#}").contains("not a listing of"), "{other:#}");
    }
}
