//! EIP-712 listings: what a provider signs to offer a dataset on a market.
//!
//! A listing is signed under the domain `{name: "BDC Market", version: "1", chainId,
//! verifyingContract: registry}`, so it cannot be replayed on another chain or registry. The
//! market recovers the signer and requires it to be the listing's provider address. The JSON
//! bodies that carry listings and reports are in `bdc-market-api`.

use alloy::{
    primitives::{Address, B256, Signature},
    signers::SignerSync,
    sol,
    sol_types::{Eip712Domain, SolStruct, eip712_domain},
};

sol! {
    /// A provider's offer of one dataset. `size` is every byte of the dataset the provider
    /// sells (all its blobs: what a buyer's deposit is sized by); `mirror` says the provider
    /// copied the dataset from another provider (`bdc provider mirror`); `addrs` are the node's direct
    /// socket addresses, comma separated; `arbiters` the arbiters the provider accepts on a
    /// deal; `issuedAt`/`expiresAt` are unix seconds.
    #[derive(Debug, PartialEq, Eq)]
    struct Listing {
        bytes32 datasetRoot;
        address provider;
        bytes32 providerNodeId;
        uint256 pricePerByte;
        uint64 window;
        uint64 size;
        bool mirror;
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

/// A listing or report signature that does not recover an address.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signing failed: {0}")]
    Sign(#[source] alloy::signers::Error),
    #[error("malformed signature: {0}")]
    Malformed(#[source] alloy::primitives::SignatureError),
    #[error("unrecoverable signature: {0}")]
    Unrecoverable(#[source] alloy::primitives::SignatureError),
}

/// Signs a listing (65-byte `r || s || v`).
pub fn sign_listing(signer: &impl SignerSync, domain: &Eip712Domain, l: &Listing) -> Result<Signature, SignatureError> {
    signer.sign_hash_sync(&l.eip712_signing_hash(domain)).map_err(SignatureError::Sign)
}

/// The address that signed `l`.
pub fn listing_signer(domain: &Eip712Domain, l: &Listing, sig: &[u8]) -> Result<Address, SignatureError> {
    recover(l.eip712_signing_hash(domain), sig)
}

fn recover(digest: B256, sig: &[u8]) -> Result<Address, SignatureError> {
    let sig = Signature::try_from(sig).map_err(SignatureError::Malformed)?;
    sig.recover_address_from_prehash(&digest).map_err(SignatureError::Unrecoverable)
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

    /// What a buyer saw on a deal: after `verifiedBytes` verified, the provider sent bytes that
    /// did not verify against the dataset root. Signed by the deal's buyer under the market
    /// domain; the market keeps one per deal.
    #[derive(Debug, PartialEq, Eq)]
    struct FaultReport {
        bytes32 dealId;
        uint64 verifiedBytes;
        uint64 issuedAt;
    }
}

/// Signs a fault report (65-byte `r || s || v`).
pub fn sign_fault(
    signer: &impl SignerSync,
    domain: &Eip712Domain,
    r: &FaultReport,
) -> Result<Signature, SignatureError> {
    signer.sign_hash_sync(&r.eip712_signing_hash(domain)).map_err(SignatureError::Sign)
}

/// The address that signed `r`.
pub fn fault_signer(domain: &Eip712Domain, r: &FaultReport, sig: &[u8]) -> Result<Address, SignatureError> {
    recover(r.eip712_signing_hash(domain), sig)
}

/// Signs a throughput report (65-byte `r || s || v`).
pub fn sign_report(
    signer: &impl SignerSync,
    domain: &Eip712Domain,
    r: &ThroughputReport,
) -> Result<Signature, SignatureError> {
    signer.sign_hash_sync(&r.eip712_signing_hash(domain)).map_err(SignatureError::Sign)
}

/// The address that signed `r`.
pub fn report_signer(domain: &Eip712Domain, r: &ThroughputReport, sig: &[u8]) -> Result<Address, SignatureError> {
    recover(r.eip712_signing_hash(domain), sig)
}
