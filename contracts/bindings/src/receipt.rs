//! EIP-712 receipts.
//!
//! A buyer signs `Receipt{bytes32 dealId, uint256 cumulativeAmount}` under the escrow's domain
//! `{name: "BDC TransferEscrow", version: "1", chainId, verifyingContract: escrow}`. The chain id
//! and contract in the domain and the deal id in the struct mean a receipt cannot be replayed on
//! another chain, another escrow, or another deal. Everything here is offline: a provider checks
//! receipts without asking the chain.
//!
//! Signature forms: alloy recovers from `v ∈ {0, 1, 27, 28, 35…}` and from high-`s` signatures,
//! but the escrow (OpenZeppelin `ECDSA`) accepts only 65 bytes with `v ∈ {27, 28}` and low `s`.
//! [`recover_canonical`] recovers the signer *and* returns the one form the contract accepts
//! for the same signature; a provider stores and redeems that form, never the bytes it was sent.

use alloy::{
    primitives::{Address, B256, Signature, U256},
    signers::{Signer, SignerSync},
    sol,
    sol_types::{Eip712Domain, SolStruct, eip712_domain},
};

sol! {
    /// What a buyer signs: the total it owes the deal so far, in token base units.
    #[derive(Debug, PartialEq, Eq)]
    struct Receipt {
        bytes32 dealId;
        uint256 cumulativeAmount;
    }

    /// What a buyer signs when it connects: "this iroh node fetches for this deal". Never
    /// submitted on chain; same domain as receipts.
    #[derive(Debug, PartialEq, Eq)]
    struct Hello {
        bytes32 dealId;
        bytes32 buyerNodeId;
    }
}

/// Name and version of the escrow's EIP-712 domain (must match `TransferEscrow`'s constructor).
pub const DOMAIN_NAME: &str = "BDC TransferEscrow";
pub const DOMAIN_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("a signature is 65 bytes, not {0}")]
    Length(usize),
    #[error("signature v = {0} (expected 27 or 28)")]
    BadV(u8),
    #[error("signature is malformed: {0}")]
    Malformed(#[source] alloy::primitives::SignatureError),
    #[error("receipt for deal {deal} is signed by {signer}, not by the buyer {buyer}")]
    WrongSigner { deal: B256, signer: Address, buyer: Address },
    #[error("signing failed: {0}")]
    Sign(#[source] alloy::signers::Error),
}

/// The escrow's EIP-712 domain.
pub fn escrow_domain(chain_id: u64, escrow: Address) -> Eip712Domain {
    eip712_domain! {
        name: DOMAIN_NAME,
        version: DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: escrow,
    }
}

/// The digest a buyer signs for `receipt` (equal to `TransferEscrow.receiptDigest`).
pub fn receipt_digest(domain: &Eip712Domain, receipt: &Receipt) -> B256 {
    receipt.eip712_signing_hash(domain)
}

/// Signs a receipt (65-byte `r || s || v` signature, as the contract expects).
pub async fn sign_receipt(
    signer: &(impl Signer + Sync),
    domain: &Eip712Domain,
    deal_id: B256,
    cumulative: U256,
) -> Result<Signature, ReceiptError> {
    let r = Receipt { dealId: deal_id, cumulativeAmount: cumulative };
    signer.sign_hash(&receipt_digest(domain, &r)).await.map_err(ReceiptError::Sign)
}

/// Signs a receipt synchronously.
pub fn sign_receipt_sync(
    signer: &impl SignerSync,
    domain: &Eip712Domain,
    deal_id: B256,
    cumulative: U256,
) -> Result<Signature, ReceiptError> {
    let r = Receipt { dealId: deal_id, cumulativeAmount: cumulative };
    signer.sign_hash_sync(&receipt_digest(domain, &r)).map_err(ReceiptError::Sign)
}

/// Checks that `sig` over `receipt` was made by `buyer`.
pub fn verify_receipt(
    domain: &Eip712Domain,
    receipt: &Receipt,
    sig: &[u8],
    buyer: Address,
) -> Result<(), ReceiptError> {
    let signer = receipt_signer(domain, receipt, sig)?;
    if signer != buyer {
        return Err(ReceiptError::WrongSigner { deal: receipt.dealId, signer, buyer });
    }
    Ok(())
}

/// Signs a connection hello.
pub fn sign_hello_sync(
    signer: &impl SignerSync,
    domain: &Eip712Domain,
    deal_id: B256,
    buyer_node: B256,
) -> Result<Signature, ReceiptError> {
    let h = Hello { dealId: deal_id, buyerNodeId: buyer_node };
    signer.sign_hash_sync(&h.eip712_signing_hash(domain)).map_err(ReceiptError::Sign)
}

/// Returns the address that signed `hello`.
pub fn hello_signer(domain: &Eip712Domain, hello: &Hello, sig: &[u8]) -> Result<Address, ReceiptError> {
    recover_canonical(&hello.eip712_signing_hash(domain), sig).map(|(a, _)| a)
}

/// Returns the address that signed `receipt`.
pub fn receipt_signer(domain: &Eip712Domain, receipt: &Receipt, sig: &[u8]) -> Result<Address, ReceiptError> {
    recover_canonical(&receipt_digest(domain, receipt), sig).map(|(a, _)| a)
}

/// Recovers the signer of `digest` from a 65-byte `r || s || v` signature and returns it with
/// the signature's canonical form: low `s` and `v ∈ {27, 28}`, the only form OpenZeppelin's
/// `ECDSA.recover` accepts. The canonical form recovers the same address, so storing it instead
/// of what a peer sent turns a malleated signature into a redeemable one.
pub fn recover_canonical(digest: &B256, sig: &[u8]) -> Result<(Address, [u8; 65]), ReceiptError> {
    if sig.len() != 65 {
        return Err(ReceiptError::Length(sig.len()));
    }
    if !matches!(sig[64], 0 | 1 | 27 | 28) {
        return Err(ReceiptError::BadV(sig[64]));
    }
    let parsed = Signature::try_from(sig).map_err(ReceiptError::Malformed)?;
    let canonical = parsed.normalized_s();
    let signer = canonical.recover_address_from_prehash(digest).map_err(ReceiptError::Malformed)?;
    Ok((signer, canonical.as_bytes()))
}

/// [`recover_canonical`] for a receipt.
pub fn receipt_signer_canonical(
    domain: &Eip712Domain,
    receipt: &Receipt,
    sig: &[u8],
) -> Result<(Address, [u8; 65]), ReceiptError> {
    recover_canonical(&receipt_digest(domain, receipt), sig)
}

/// The same signature in the two forms the escrow rejects but alloy accepts: `v ∈ {0, 1}` and
/// high `s` (with the parity flipped). For tests that play a hostile buyer.
pub fn malleate(sig: &Signature) -> [u8; 65] {
    const N: U256 = alloy::primitives::uint!(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256);
    let mut out = [0u8; 65];
    out[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
    out[32..64].copy_from_slice(&(N - sig.s()).to_be_bytes::<32>());
    out[64] = u8::from(!sig.v());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::local::PrivateKeySigner;

    #[test]
    fn sign_then_verify_and_reject_replays() {
        let buyer = PrivateKeySigner::random();
        let escrow = Address::repeat_byte(0xE5);
        let d = escrow_domain(31337, escrow);
        let deal = B256::repeat_byte(1);
        let sig = sign_receipt_sync(&buyer, &d, deal, U256::from(500)).unwrap();
        let r = Receipt { dealId: deal, cumulativeAmount: U256::from(500) };
        verify_receipt(&d, &r, &sig.as_bytes(), buyer.address()).unwrap();
        // another deal, another amount, another chain, another contract: all rejected
        let other_deal = Receipt { dealId: B256::repeat_byte(2), ..r.clone() };
        assert!(verify_receipt(&d, &other_deal, &sig.as_bytes(), buyer.address()).is_err());
        let more = Receipt { cumulativeAmount: U256::from(501), ..r.clone() };
        assert!(verify_receipt(&d, &more, &sig.as_bytes(), buyer.address()).is_err());
        assert!(verify_receipt(&escrow_domain(1, escrow), &r, &sig.as_bytes(), buyer.address()).is_err());
        let other = escrow_domain(31337, Address::repeat_byte(0xE6));
        assert!(verify_receipt(&other, &r, &sig.as_bytes(), buyer.address()).is_err());
        assert!(matches!(verify_receipt(&d, &r, &[1, 2, 3], buyer.address()), Err(ReceiptError::Length(3))));
    }

    #[test]
    fn malleated_signatures_recover_the_buyer_in_canonical_form() {
        let buyer = PrivateKeySigner::random();
        let d = escrow_domain(31337, Address::repeat_byte(0xE5));
        let deal = B256::repeat_byte(1);
        let r = Receipt { dealId: deal, cumulativeAmount: U256::from(7) };
        let sig = sign_receipt_sync(&buyer, &d, deal, U256::from(7)).unwrap();
        let good = sig.as_bytes();
        let bad = malleate(&sig);
        assert_ne!(bad, good);
        // high s, v in {0, 1}: what the escrow's ECDSA.recover rejects
        assert!(U256::from_be_slice(&bad[32..64]) > U256::from_be_slice(&good[32..64]));
        assert!(bad[64] < 2);
        let (who, canonical) = receipt_signer_canonical(&d, &r, &bad).unwrap();
        assert_eq!(who, buyer.address());
        assert_eq!(canonical, good, "the canonical form is the low-s, v=27/28 signature");
        let (_, again) = receipt_signer_canonical(&d, &r, &good).unwrap();
        assert_eq!(again, good);
        // other lengths and v values are refused, not guessed at
        let mut v37 = good;
        v37[64] = 37;
        assert!(matches!(receipt_signer_canonical(&d, &r, &v37), Err(ReceiptError::BadV(37))));
        assert!(matches!(receipt_signer_canonical(&d, &r, &good[..64]), Err(ReceiptError::Length(64))));
    }
}
