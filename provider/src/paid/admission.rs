//! Which deals this provider accepts.
//!
//! A Hello (transfer deal) and a paid job request (job deal) pass the same checks, cheapest
//! first, so a stranger's message costs the provider no chain access until it has proven to be
//! the buyer's:
//! 1. offline: the terms the buyer sent hash to the deal id; the Hello signature recovers to the
//!    terms' buyer; the deal names this provider, node and a dataset it sells; the arbiter is
//!    one the provider accepts; the vendor is the dataset's vendor and the royalty is within
//!    what the provider sells at ([`SaleTerms`]);
//! 2. one read of the deal's state slot and the chain time: the deal exists (so the terms are
//!    the ones the escrow hashed), is not refunded or disputed, and does not expire within the
//!    safety margin.
//!
//! The dataset's [`SaleTerms`] are pinned the first time the provider sees the dataset
//! registered (at start for datasets registered then): a vendor raising the royalty later, or a
//! squatter who registered the root under another vendor than the manifest names, gets no deal.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use alloy::{
    primitives::{Address, B256, keccak256},
    providers::DynProvider,
    sol_types::SolValue,
};
use bdc_contracts::{
    ChainError, Contracts, Deal,
    client::Terms,
    receipt::{Hello as HelloStruct, hello_signer},
};
use bdc_core::{Hash, paid::codes, wire::HasErrorCode};
use iroh::EndpointId;

use super::ledger::{Ledger, LedgerError};

/// What a provider sells one dataset on: the vendor every deal must pay its royalty to, and the
/// highest royalty (basis points) a deal may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleTerms {
    pub vendor: Address,
    pub max_royalty_bps: u16,
}

/// Why a deal was refused. Each variant knows its `bdc/paid/1` close code.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("the terms sent do not decode: {0}")]
    BadTerms(#[source] alloy::sol_types::Error),
    #[error("the terms sent hash to {computed}, not to deal {claimed}")]
    TermsMismatch { claimed: B256, computed: B256 },
    #[error("the request is not signed by deal {deal}'s buyer {buyer}")]
    BadSignature { deal: B256, buyer: Address },
    #[error("deal {0} is not on chain")]
    UnknownDeal(B256),
    #[error("deal {deal} is with provider {provider}, not this one")]
    NotThisProvider { deal: B256, provider: Address },
    #[error("deal {deal} is for dataset {root}, which is not sold here")]
    NotSold { deal: B256, root: Hash },
    #[error("deal {deal} pays {offered} per byte, below this provider's {min}")]
    PriceTooLow { deal: B256, offered: u128, min: u128 },
    #[error("deal {deal} is {reason}")]
    WrongKind { deal: B256, reason: &'static str },
    #[error("deal {deal} is for dataset {root}, not {asked}")]
    WrongDataset { deal: B256, root: Hash, asked: Hash },
    #[error("deal {deal} escrows {escrowed}; a job here costs {price}")]
    Underfunded { deal: B256, escrowed: u128, price: u128 },
    #[error("deal {deal} names arbiter {arbiter}, not one this provider accepts")]
    Arbiter { deal: B256, arbiter: Address },
    #[error("dataset {root} is not registered on chain")]
    NotRegistered { root: Hash },
    #[error("dataset {root} is registered by {registered}, but its manifest names vendor {manifest}")]
    Squatted { root: Hash, registered: Address, manifest: Address },
    #[error("deal {deal} pays vendor {vendor}; this provider sells the dataset for vendor {expected}")]
    Vendor { deal: B256, vendor: Address, expected: Address },
    #[error("deal {deal} carries a {royalty} bps royalty; this provider sells at most {max} bps")]
    Royalty { deal: B256, royalty: u16, max: u16 },
    #[error("deal {0} is not open (refunded or disputed)")]
    NotOpen(B256),
    #[error("deal {deal} expires at {expiry}, within the {margin} s safety margin (chain time {now})")]
    Expiring { deal: B256, expiry: u64, margin: u64, now: u64 },
    #[error("cannot read the chain: {0}")]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl HasErrorCode for AdmitError {
    /// The stable `bdc/paid/1` close code for this refusal.
    fn code(&self) -> u32 {
        match self {
            Self::BadTerms(_) | Self::TermsMismatch { .. } => codes::MALFORMED_MESSAGE,
            Self::BadSignature { .. } => codes::BAD_HELLO_SIGNATURE,
            Self::UnknownDeal(_) => codes::UNKNOWN_DEAL,
            Self::NotThisProvider { .. }
            | Self::NotSold { .. }
            | Self::PriceTooLow { .. }
            | Self::WrongKind { .. }
            | Self::WrongDataset { .. }
            | Self::Underfunded { .. } => codes::NOT_THIS_PROVIDER,
            Self::Arbiter { .. } => codes::ARBITER_NOT_ACCEPTED,
            Self::NotRegistered { .. } | Self::Squatted { .. } | Self::Vendor { .. } | Self::Royalty { .. } => {
                codes::TERMS_NOT_ACCEPTED
            }
            Self::NotOpen(_) => codes::DEAL_NOT_OPEN,
            Self::Expiring { .. } => codes::DEAL_EXPIRING,
            Self::Chain(_) | Self::Ledger(_) => codes::INTERNAL,
        }
    }
}

/// What the deal must buy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DealKind {
    /// Bytes of a dataset, at no less than `min_price` per byte.
    Transfer { min_price: u128 },
    /// One job on `dataset` at `price` (price per byte 0, window 0).
    Job { price: u128, dataset: Hash },
}

impl DealKind {
    fn check(&self, id: B256, t: &Terms) -> Result<(), AdmitError> {
        match *self {
            DealKind::Transfer { min_price } => {
                if t.window == 0 {
                    return Err(AdmitError::WrongKind {
                        deal: id,
                        reason: "a job deal (window 0), not a transfer deal",
                    });
                }
                if t.pricePerByte < min_price || t.pricePerByte == 0 {
                    return Err(AdmitError::PriceTooLow { deal: id, offered: t.pricePerByte, min: min_price });
                }
            }
            DealKind::Job { price, dataset } => {
                if t.pricePerByte != 0 || t.window != 0 {
                    return Err(AdmitError::WrongKind {
                        deal: id,
                        reason: "a transfer deal; a job deal has price per byte 0 and window 0",
                    });
                }
                let root = Hash::from_bytes(t.datasetRoot.0);
                if root != dataset {
                    return Err(AdmitError::WrongDataset { deal: id, root, asked: dataset });
                }
                let escrowed = t.maxAmount.to::<u128>();
                if escrowed < price {
                    return Err(AdmitError::Underfunded { deal: id, escrowed, price });
                }
            }
        }
        Ok(())
    }
}

/// What a deal is checked against.
#[derive(Debug)]
pub(crate) struct Admission {
    pub chain: Contracts<DynProvider>,
    pub me: Address,
    pub node: EndpointId,
    pub arbiters: Vec<Address>,
    /// No deal is admitted, and no byte sent, this close to its expiry.
    pub margin: Duration,
    /// Caps every dataset's royalty (None: the royalty registered when first seen).
    pub max_royalty_bps: Option<u16>,
    /// The vendor each sold collection's manifest names (None: a raw blob, or a manifest
    /// without a vendor; then the registered vendor is taken as is).
    pub manifest_vendors: HashMap<Hash, Option<Address>>,
    pub pinned: Mutex<HashMap<Hash, SaleTerms>>,
    /// Where pins survive restarts.
    pub ledger: Arc<Ledger>,
}

/// A deal that passed, with the chain time it was checked at.
#[derive(Debug)]
pub struct Admitted {
    pub deal: Deal,
    pub now: u64,
}

impl Admission {
    /// Decodes the terms a buyer sent and checks they are deal `id`'s (offline).
    pub fn terms(id: B256, abi: &[u8]) -> Result<Terms, AdmitError> {
        let terms = Terms::abi_decode(abi).map_err(AdmitError::BadTerms)?;
        let computed = keccak256(abi);
        if computed != id || terms.abi_encode() != abi {
            return Err(AdmitError::TermsMismatch { claimed: id, computed });
        }
        Ok(terms)
    }

    /// The dataset's sale terms, pinned (durably) on first sight of its registration; an
    /// operator's `max_royalty_bps` lowers the pinned ceiling, never raises it.
    pub async fn sale_terms(&self, root: Hash) -> Result<SaleTerms, AdmitError> {
        let pinned = self.pinned_terms(root).await?;
        // the operator's cap only lowers the pin (`bdc provider repin` is how a pin is raised)
        let max = self.max_royalty_bps.map_or(pinned.max_royalty_bps, |cap| cap.min(pinned.max_royalty_bps));
        Ok(SaleTerms { max_royalty_bps: max, ..pinned })
    }

    async fn pinned_terms(&self, root: Hash) -> Result<SaleTerms, AdmitError> {
        if let Some(t) = self.pinned.lock().expect("pinned lock").get(&root) {
            return Ok(*t);
        }
        if let Some((vendor, max)) = self.ledger.pinned_sale(root.as_bytes())? {
            let t = SaleTerms { vendor: Address::from(vendor), max_royalty_bps: max };
            return Ok(*self.pinned.lock().expect("pinned lock").entry(root).or_insert(t));
        }
        let (vendor, royalty) =
            self.chain.registered(B256::from(*root.as_bytes())).await?.ok_or(AdmitError::NotRegistered { root })?;
        if let Some(Some(manifest)) = self.manifest_vendors.get(&root)
            && *manifest != vendor
        {
            return Err(AdmitError::Squatted { root, registered: vendor, manifest: *manifest });
        }
        // the pin is the royalty registered now; an operator's cap applies on top (sale_terms)
        let (vendor, max) = self.ledger.pin_sale(root.as_bytes(), (vendor.into_array(), royalty))?;
        let t = SaleTerms { vendor: Address::from(vendor), max_royalty_bps: max };
        Ok(*self.pinned.lock().expect("pinned lock").entry(root).or_insert(t))
    }

    /// Every check of the module doc. `sold` says whether the provider sells the root;
    /// `hello_sig` is the buyer's EIP-712 Hello binding `peer` to the deal.
    pub async fn admit(
        &self,
        id: B256,
        terms_abi: &[u8],
        peer: EndpointId,
        hello_sig: &[u8],
        kind: DealKind,
        sold: impl Fn(&Hash) -> bool,
    ) -> Result<Admitted, AdmitError> {
        let t = Self::terms(id, terms_abi)?;
        let h = HelloStruct { dealId: id, buyerNodeId: B256::from(*peer.as_bytes()) };
        match hello_signer(&self.chain.domain(), &h, hello_sig) {
            Ok(a) if a == t.buyer => {}
            _ => return Err(AdmitError::BadSignature { deal: id, buyer: t.buyer }),
        }
        if t.provider != self.me || t.providerNodeId.0 != *self.node.as_bytes() {
            return Err(AdmitError::NotThisProvider { deal: id, provider: t.provider });
        }
        let root = Hash::from_bytes(t.datasetRoot.0);
        if !sold(&root) {
            return Err(AdmitError::NotSold { deal: id, root });
        }
        kind.check(id, &t)?;
        if !self.arbiters.contains(&t.arbiter) {
            return Err(AdmitError::Arbiter { deal: id, arbiter: t.arbiter });
        }
        let sale = self.sale_terms(root).await?;
        if t.vendor != sale.vendor {
            return Err(AdmitError::Vendor { deal: id, vendor: t.vendor, expected: sale.vendor });
        }
        if t.royaltyBps > sale.max_royalty_bps {
            return Err(AdmitError::Royalty { deal: id, royalty: t.royaltyBps, max: sale.max_royalty_bps });
        }
        let state = self.chain.deal_state(id).await?;
        if !state.exists {
            return Err(AdmitError::UnknownDeal(id));
        }
        if state.refunded || state.disputed {
            return Err(AdmitError::NotOpen(id));
        }
        let now = self.chain.chain_time().await?;
        if now.saturating_add(self.margin.as_secs()) >= t.expiry {
            return Err(AdmitError::Expiring { deal: id, expiry: t.expiry, margin: self.margin.as_secs(), now });
        }
        Ok(Admitted { deal: Deal { id, terms: t }, now })
    }
}
