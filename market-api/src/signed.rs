//! The EIP-712 structs the signed bodies of [`crate::types`] stand for: signing and recovering.

use alloy::primitives::{Address, B256, Bytes};

use crate::types::*;

impl ListingBody {
    /// The EIP-712 struct the provider signs.
    pub fn to_eip712(&self) -> bdc_contracts::listing::Listing {
        bdc_contracts::listing::Listing {
            datasetRoot: self.dataset_root,
            provider: self.provider,
            providerNodeId: self.provider_node_id,
            pricePerByte: alloy::primitives::U256::from(self.price_per_byte.0),
            window: self.window,
            size: self.size,
            mirror: self.mirror,
            addrs: self.addrs.join(","),
            region: self.region.clone(),
            capacityMiBps: self.capacity_mibps,
            arbiters: self.arbiters.clone(),
            issuedAt: self.issued_at,
            expiresAt: self.expires_at,
        }
    }
}

impl SignedListing {
    /// Signs `listing` with the provider's key under the market domain.
    pub fn sign(
        signer: &impl alloy::signers::SignerSync,
        domain: &alloy::sol_types::Eip712Domain,
        listing: ListingBody,
        manifest: String,
    ) -> Result<Self, bdc_contracts::listing::SignatureError> {
        let sig = bdc_contracts::listing::sign_listing(signer, domain, &listing.to_eip712())?;
        Ok(Self { listing, manifest, signature: Bytes::from(sig.as_bytes().to_vec()) })
    }

    /// The address that signed the listing.
    pub fn signer(
        &self,
        domain: &alloy::sol_types::Eip712Domain,
    ) -> Result<Address, bdc_contracts::listing::SignatureError> {
        bdc_contracts::listing::listing_signer(domain, &self.listing.to_eip712(), &self.signature)
    }
}

impl SignedFault {
    /// Signs a fault report for `deal_id` with the deal's buyer key under the market domain.
    pub fn sign(
        signer: &impl alloy::signers::SignerSync,
        domain: &alloy::sol_types::Eip712Domain,
        deal_id: B256,
        verified_bytes: u64,
        issued_at: u64,
    ) -> Result<Self, bdc_contracts::listing::SignatureError> {
        let mut r = Self { deal_id, verified_bytes, issued_at, signature: Bytes::new() };
        let sig = bdc_contracts::listing::sign_fault(signer, domain, &r.typed())?;
        r.signature = Bytes::from(sig.as_bytes().to_vec());
        Ok(r)
    }

    /// The EIP-712 struct the buyer signs.
    pub fn typed(&self) -> bdc_contracts::listing::FaultReport {
        bdc_contracts::listing::FaultReport {
            dealId: self.deal_id,
            verifiedBytes: self.verified_bytes,
            issuedAt: self.issued_at,
        }
    }
}

impl SignedReport {
    /// Signs a report for `deal_id` with the deal's buyer key under the market domain.
    pub fn sign(
        signer: &impl alloy::signers::SignerSync,
        domain: &alloy::sol_types::Eip712Domain,
        deal_id: B256,
        bytes: u64,
        millis: u64,
        issued_at: u64,
    ) -> Result<Self, bdc_contracts::listing::SignatureError> {
        let mut r = Self { deal_id, bytes, millis, issued_at, signature: Bytes::new() };
        let sig = bdc_contracts::listing::sign_report(signer, domain, &r.typed())?;
        r.signature = Bytes::from(sig.as_bytes().to_vec());
        Ok(r)
    }

    /// The EIP-712 struct the buyer signs.
    pub fn typed(&self) -> bdc_contracts::listing::ThroughputReport {
        bdc_contracts::listing::ThroughputReport {
            dealId: self.deal_id,
            bytes: self.bytes,
            millis: self.millis,
            issuedAt: self.issued_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;

    use super::*;
    use crate::Amount;

    #[test]
    fn the_signed_size_and_mirror_flag_cannot_be_changed_by_whoever_relays_the_listing() {
        let key = PrivateKeySigner::random();
        let domain = bdc_contracts::listing::market_domain(31337, Address::repeat_byte(9));
        let body = ListingBody {
            dataset_root: B256::repeat_byte(1),
            provider: key.address(),
            provider_node_id: B256::repeat_byte(2),
            price_per_byte: Amount(1_000),
            window: 4 << 20,
            size: 3 << 20,
            mirror: true,
            addrs: vec!["127.0.0.1:4433".into()],
            region: "eu".into(),
            capacity_mibps: 100,
            arbiters: vec![Address::repeat_byte(3)],
            issued_at: 1,
            expires_at: 2,
        };
        let signed = SignedListing::sign(&key, &domain, body, String::new()).unwrap();
        assert_eq!(signed.signer(&domain).unwrap(), key.address());
        // a market that inflates the size (so buyers escrow more) no longer has the provider's word
        let mut inflated = signed.clone();
        inflated.listing.size = 3 << 30;
        assert_ne!(inflated.signer(&domain).unwrap(), key.address());
        // nor one that passes a mirror off as the origin
        let mut unmirrored = signed;
        unmirrored.listing.mirror = false;
        assert_ne!(unmirrored.signer(&domain).unwrap(), key.address());
    }
}
