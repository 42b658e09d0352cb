//! EIP-712 receipts.
//!
//! A buyer signs `Receipt{bytes32 dealId, uint256 cumulativeAmount}` under the escrow's domain
//! `{name: "BDC TransferEscrow", version: "1", chainId, verifyingContract: escrow}`. The chain id
//! and contract in the domain and the deal id in the struct mean a receipt cannot be replayed on
//! another chain, another escrow, or another deal. Everything here is offline: a provider checks
//! receipts without asking the chain.

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
    #[error("receipt signature is malformed: {0}")]
    Malformed(String),
    #[error("receipt for deal {deal} is signed by {signer}, not by the buyer {buyer}")]
    WrongSigner { deal: B256, signer: Address, buyer: Address },
    #[error("signing the receipt failed: {0}")]
    Sign(String),
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
    signer.sign_hash(&receipt_digest(domain, &r)).await.map_err(|e| ReceiptError::Sign(e.to_string()))
}

/// Signs a receipt synchronously.
pub fn sign_receipt_sync(
    signer: &impl SignerSync,
    domain: &Eip712Domain,
    deal_id: B256,
    cumulative: U256,
) -> Result<Signature, ReceiptError> {
    let r = Receipt { dealId: deal_id, cumulativeAmount: cumulative };
    signer.sign_hash_sync(&receipt_digest(domain, &r)).map_err(|e| ReceiptError::Sign(e.to_string()))
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
    signer.sign_hash_sync(&h.eip712_signing_hash(domain)).map_err(|e| ReceiptError::Sign(e.to_string()))
}

/// Returns the address that signed `hello`.
pub fn hello_signer(domain: &Eip712Domain, hello: &Hello, sig: &[u8]) -> Result<Address, ReceiptError> {
    let sig = Signature::try_from(sig).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    sig.recover_address_from_prehash(&hello.eip712_signing_hash(domain))
        .map_err(|e| ReceiptError::Malformed(e.to_string()))
}

/// Returns the address that signed `receipt`.
pub fn receipt_signer(domain: &Eip712Domain, receipt: &Receipt, sig: &[u8]) -> Result<Address, ReceiptError> {
    let sig = Signature::try_from(sig).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    sig.recover_address_from_prehash(&receipt_digest(domain, receipt))
        .map_err(|e| ReceiptError::Malformed(e.to_string()))
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
        assert!(matches!(verify_receipt(&d, &r, &[1, 2, 3], buyer.address()), Err(ReceiptError::Malformed(_))));
    }
}
