//! EIP-712 listings: what a provider signs to offer a dataset on a market.
//!
//! A listing is signed under the domain `{name: "BDC Market", version: "1", chainId,
//! verifyingContract: registry}`, so it cannot be replayed on another chain or registry. The
//! market recovers the signer and requires it to be the listing's provider address.

use alloy::{
    primitives::{Address, B256, Signature, U256},
    signers::SignerSync,
    sol,
    sol_types::{Eip712Domain, SolStruct, eip712_domain},
};
use serde::{Deserialize, Serialize};

sol! {
    /// A provider's offer of one dataset. `addrs` are the node's direct socket addresses,
    /// comma separated; `arbiters` the arbiters the provider accepts on a deal;
    /// `issuedAt`/`expiresAt` are unix seconds.
    #[derive(Debug, PartialEq, Eq)]
    struct Listing {
        bytes32 datasetRoot;
        address provider;
        bytes32 providerNodeId;
        uint256 pricePerByte;
        uint64 window;
        string addrs;
        string region;
        uint64 capacityMiBps;
        address[] arbiters;
        uint64 issuedAt;
        uint64 expiresAt;
    }
}

/// The market's EIP-712 domain.
pub fn market_domain(chain_id: u64, registry: Address) -> Eip712Domain {
    eip712_domain! {
        name: "BDC Market",
        version: "1",
        chain_id: chain_id,
        verifying_contract: registry,
    }
}

/// Signs a listing (65-byte `r || s || v`).
pub fn sign_listing(signer: &impl SignerSync, domain: &Eip712Domain, l: &Listing) -> Result<Signature, String> {
    signer.sign_hash_sync(&l.eip712_signing_hash(domain)).map_err(|e| e.to_string())
}

/// The address that signed `l`.
pub fn listing_signer(domain: &Eip712Domain, l: &Listing, sig: &[u8]) -> Result<Address, String> {
    let sig = Signature::try_from(sig).map_err(|e| format!("malformed signature: {e}"))?;
    let digest: B256 = l.eip712_signing_hash(domain);
    sig.recover_address_from_prehash(&digest).map_err(|e| format!("unrecoverable signature: {e}"))
}

/// A listing as posted: the signed fields, the dataset's manifest (the `bdc.json` text) and the
/// provider's EIP-712 signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedListing {
    pub listing: ListingBody,
    pub manifest: String,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListingBody {
    pub dataset_root: String,
    pub provider: String,
    pub provider_node_id: String,
    /// Token base units per byte, decimal.
    pub price_per_byte: String,
    pub window: u64,
    pub addrs: Vec<String>,
    pub region: String,
    pub capacity_mibps: u64,
    /// The arbiters the provider accepts on a deal (0x addresses); a deal naming another is
    /// refused.
    #[serde(default)]
    pub arbiters: Vec<String>,
    pub issued_at: u64,
    pub expires_at: u64,
}

impl ListingBody {
    /// The EIP-712 struct these fields stand for.
    pub fn to_eip712(&self) -> Result<Listing, String> {
        let b32 = |what: &str, s: &str| s.parse::<B256>().map_err(|_| format!("{what} must be 32 bytes of 0x-hex"));
        Ok(Listing {
            datasetRoot: b32("dataset_root", &self.dataset_root)?,
            provider: self.provider.parse().map_err(|_| "provider must be a 0x address".to_string())?,
            providerNodeId: b32("provider_node_id", &self.provider_node_id)?,
            pricePerByte: self
                .price_per_byte
                .parse::<U256>()
                .map_err(|_| "price_per_byte must be a decimal integer".to_string())?,
            window: self.window,
            addrs: self.addrs.join(","),
            region: self.region.clone(),
            capacityMiBps: self.capacity_mibps,
            arbiters: self
                .arbiters
                .iter()
                .map(|a| a.parse::<Address>().map_err(|_| format!("arbiter {a:?} is not a 0x address")))
                .collect::<Result<_, _>>()?,
            issuedAt: self.issued_at,
            expiresAt: self.expires_at,
        })
    }
}

sol! {
    /// What a buyer measured on a deal: `bytes` verified in `millis` milliseconds, signed by the
    /// deal's buyer under the market domain. The market keeps the newest per deal and counts
    /// each buyer once per provider.
    #[derive(Debug, PartialEq, Eq)]
    struct ThroughputReport {
        bytes32 dealId;
        uint64 bytes;
        uint64 millis;
        uint64 issuedAt;
    }
}

/// A throughput report as posted to `POST /reports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    pub deal_id: String,
    pub bytes: u64,
    pub millis: u64,
    pub issued_at: u64,
    pub signature: String,
}

impl SignedReport {
    /// Signs a report for `deal_id`.
    pub fn sign(
        signer: &impl SignerSync,
        domain: &Eip712Domain,
        deal_id: B256,
        bytes: u64,
        millis: u64,
        issued_at: u64,
    ) -> Result<Self, String> {
        let r = ThroughputReport { dealId: deal_id, bytes, millis, issuedAt: issued_at };
        let sig = signer.sign_hash_sync(&r.eip712_signing_hash(domain)).map_err(|e| e.to_string())?;
        Ok(Self {
            deal_id: format!("{deal_id:#x}"),
            bytes,
            millis,
            issued_at,
            signature: format!("0x{}", alloy::hex::encode(sig.as_bytes())),
        })
    }

    /// The deal id and the address that signed the report.
    pub fn signer(&self, domain: &Eip712Domain) -> Result<(B256, Address), String> {
        let deal: B256 = self.deal_id.parse().map_err(|_| "deal_id must be 32 bytes of 0x-hex".to_string())?;
        let sig = alloy::hex::decode(self.signature.trim_start_matches("0x"))
            .map_err(|_| "signature must be 0x-hex".to_string())?;
        let sig = Signature::try_from(sig.as_slice()).map_err(|e| format!("malformed signature: {e}"))?;
        let r = ThroughputReport { dealId: deal, bytes: self.bytes, millis: self.millis, issuedAt: self.issued_at };
        let who = sig
            .recover_address_from_prehash(&r.eip712_signing_hash(domain))
            .map_err(|e| format!("unrecoverable signature: {e}"))?;
        Ok((deal, who))
    }
}
