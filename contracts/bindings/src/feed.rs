//! Feed heads: a vendor's signed, hash-chained log of a feed's segments (issue 20's model).
//!
//! A feed is an append-only log of *segments*, each an ordinary bdc dataset (a collection or a
//! raw blob, fetched and verified like any other). Its *head* n is an EIP-712 [`FeedHead`] that
//! the vendor signs: the feed's id (`keccak256(abi.encode(vendor, name))`), the sequence number
//! n, segment n's root and size, the EIP-712 struct hash of head n − 1 (zero for head 0), and the
//! time. Heads chain by hash, so a subscriber holding head n checks every later head itself
//! ([`verify_next`]) whoever relays it; two heads the vendor signed for one sequence number
//! with different contents are an [`Equivocation`], which anyone can show.
//!
//! Heads are signed under the domain `{name: "BDC Feed", version: "1", chainId,
//! verifyingContract: registry}`, so they cannot be replayed on another chain or registry.

use alloy::{
    primitives::{Address, B256, keccak256},
    signers::SignerSync,
    sol,
    sol_types::{Eip712Domain, SolStruct, SolValue, eip712_domain},
};

use crate::receipt::{ReceiptError, recover_canonical};

sol! {
    /// Head `seq` of feed `feedId`: segment `seq` is the dataset `segmentRoot` of
    /// `segmentSize` payload bytes; `prevHead` is the EIP-712 struct hash of head `seq - 1`
    /// (zero for head 0); `time` is unix seconds.
    #[derive(Debug, PartialEq, Eq)]
    struct FeedHead {
        bytes32 feedId;
        uint64 seq;
        bytes32 segmentRoot;
        uint64 segmentSize;
        bytes32 prevHead;
        uint64 time;
    }
}

/// The domain feed heads are signed under.
pub fn feed_domain(chain_id: u64, registry: Address) -> Eip712Domain {
    eip712_domain! {
        name: "BDC Feed",
        version: "1",
        chain_id: chain_id,
        verifying_contract: registry,
    }
}

/// A feed's id: `keccak256(abi.encode(vendor, name))`.
pub fn feed_id(vendor: Address, name: &str) -> B256 {
    keccak256((vendor, name.to_string()).abi_encode_params())
}

/// A head and the vendor's signature over it (65 bytes, `r || s || v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub head: FeedHead,
    pub sig: [u8; 65],
}

/// Why a head is not the next one of a feed.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("the head's signature does not recover: {0}")]
    Signature(#[source] ReceiptError),
    #[error("head {seq} is signed by {signer}, not by the feed's vendor {vendor}")]
    NotTheVendor { seq: u64, signer: Address, vendor: Address },
    #[error("head {seq} is of feed {got}, not of feed {want}")]
    OtherFeed { seq: u64, got: B256, want: B256 },
    #[error("head {got} does not follow head {prev}")]
    NotNext { prev: u64, got: u64 },
    #[error("head {seq} names {got} as the head before it, not {want}")]
    BrokenChain { seq: u64, got: B256, want: B256 },
    #[error("head {seq} is dated {got}, before the head before it ({prev})")]
    TimeWentBack { seq: u64, got: u64, prev: u64 },
    #[error("head 0 must name no head before it (it names {0})")]
    FirstHasPrev(B256),
}

impl SignedHead {
    /// Signs `head` with the vendor's key.
    pub fn sign(vendor: &impl SignerSync, domain: &Eip712Domain, head: FeedHead) -> Result<Self, HeadError> {
        let sig = vendor
            .sign_hash_sync(&head.eip712_signing_hash(domain))
            .map_err(|e| HeadError::Signature(ReceiptError::Sign(e)))?;
        Ok(Self { head, sig: sig.as_bytes() })
    }

    /// The address that signed the head.
    pub fn signer(&self, domain: &Eip712Domain) -> Result<Address, HeadError> {
        recover_canonical(&self.head.eip712_signing_hash(domain), &self.sig)
            .map(|(a, _)| a)
            .map_err(HeadError::Signature)
    }

    /// The head's EIP-712 struct hash: what the next head names as `prevHead`. It covers the
    /// head's fields only, so another form of the same signature names the same head.
    pub fn hash(&self) -> B256 {
        self.head.eip712_hash_struct()
    }

    /// Checks that the head is the feed's and signed by its vendor.
    fn check(&self, domain: &Eip712Domain, vendor: Address, feed: B256) -> Result<(), HeadError> {
        let seq = self.head.seq;
        if self.head.feedId != feed {
            return Err(HeadError::OtherFeed { seq, got: self.head.feedId, want: feed });
        }
        let signer = self.signer(domain)?;
        if signer != vendor {
            return Err(HeadError::NotTheVendor { seq, signer, vendor });
        }
        Ok(())
    }
}

/// Checks head 0 of `vendor`'s feed `name` (its id is computed here, so a head of another
/// vendor's feed cannot pass for this one's).
pub fn verify_first(domain: &Eip712Domain, vendor: Address, name: &str, first: &SignedHead) -> Result<(), HeadError> {
    first.check(domain, vendor, feed_id(vendor, name))?;
    if first.head.seq != 0 {
        return Err(HeadError::NotNext { prev: 0, got: first.head.seq });
    }
    if first.head.prevHead != B256::ZERO {
        return Err(HeadError::FirstHasPrev(first.head.prevHead));
    }
    Ok(())
}

/// Checks that `next` follows `prev` (a head already trusted): same feed, signed by the vendor,
/// the next sequence number, naming `prev`'s hash, and not dated before it.
pub fn verify_next(
    domain: &Eip712Domain,
    vendor: Address,
    prev: &SignedHead,
    next: &SignedHead,
) -> Result<(), HeadError> {
    next.check(domain, vendor, prev.head.feedId)?;
    let seq = next.head.seq;
    if prev.head.seq.checked_add(1) != Some(seq) {
        return Err(HeadError::NotNext { prev: prev.head.seq, got: seq });
    }
    if next.head.prevHead != prev.hash() {
        return Err(HeadError::BrokenChain { seq, got: next.head.prevHead, want: prev.hash() });
    }
    if next.head.time < prev.head.time {
        return Err(HeadError::TimeWentBack { seq, got: next.head.time, prev: prev.head.time });
    }
    Ok(())
}

/// Two heads the vendor signed for the same feed and sequence number with different contents:
/// proof that it told two histories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub a: SignedHead,
    pub b: SignedHead,
}

/// The equivocation `a` and `b` prove, if they do: both of `vendor`'s feed `name`, both signed
/// by it, the same sequence number, different heads. The proof carries each signature in the
/// canonical form (low s, v in {27, 28}) the registry's `slash` accepts, whatever form the heads
/// were relayed in.
pub fn equivocation(
    domain: &Eip712Domain,
    vendor: Address,
    name: &str,
    a: &SignedHead,
    b: &SignedHead,
) -> Option<Equivocation> {
    let feed = feed_id(vendor, name);
    let same_slot = a.head.feedId == feed && b.head.feedId == feed && a.head.seq == b.head.seq;
    let canonical = |h: &SignedHead| match recover_canonical(&h.head.eip712_signing_hash(domain), &h.sig) {
        Ok((signer, sig)) if signer == vendor => Some(SignedHead { head: h.head.clone(), sig }),
        _ => None,
    };
    if !same_slot || a.hash() == b.hash() {
        return None;
    }
    Some(Equivocation { a: canonical(a)?, b: canonical(b)? })
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;

    use super::*;

    const NAME: &str = "kaiko/btc-usd/trades";

    fn chain(vendor: &PrivateKeySigner, domain: &Eip712Domain, n: u64) -> Vec<SignedHead> {
        let feed = feed_id(vendor.address(), NAME);
        let mut out: Vec<SignedHead> = Vec::new();
        for seq in 0..n {
            let head = FeedHead {
                feedId: feed,
                seq,
                segmentRoot: B256::repeat_byte(seq as u8 + 1),
                segmentSize: 1_000 + seq,
                prevHead: out.last().map(SignedHead::hash).unwrap_or_default(),
                time: 1_800_000_000 + 60 * seq,
            };
            out.push(SignedHead::sign(vendor, domain, head).unwrap());
        }
        out
    }

    #[test]
    fn a_feed_id_is_what_solidity_computes_for_keccak256_abi_encode_vendor_name() {
        let vendor = Address::repeat_byte(0xab);
        // abi.encode(address, string): the address in a word, the string's offset (0x40), its
        // length, its bytes padded to a word
        let mut enc = vec![0u8; 12];
        enc.extend_from_slice(vendor.as_slice());
        enc.extend_from_slice(&alloy::primitives::U256::from(0x40).to_be_bytes::<32>());
        enc.extend_from_slice(&alloy::primitives::U256::from(5).to_be_bytes::<32>());
        let mut word = [0u8; 32];
        word[..5].copy_from_slice(b"trade");
        enc.extend_from_slice(&word);
        assert_eq!(feed_id(vendor, "trade"), keccak256(&enc));
    }

    #[test]
    fn a_subscriber_holding_one_head_checks_every_later_one() {
        let (vendor, domain) = (PrivateKeySigner::random(), feed_domain(31337, Address::repeat_byte(7)));
        let heads = chain(&vendor, &domain, 5);
        verify_first(&domain, vendor.address(), NAME, &heads[0]).unwrap();
        for w in heads.windows(2) {
            verify_next(&domain, vendor.address(), &w[0], &w[1]).unwrap();
        }
        // the same head signed in the other (high-s) form names the same head
        let sig = alloy::primitives::Signature::try_from(&heads[1].sig[..]).unwrap();
        let other = SignedHead { head: heads[1].head.clone(), sig: crate::receipt::malleate(&sig) };
        assert_eq!(other.hash(), heads[1].hash());
        verify_next(&domain, vendor.address(), &heads[0], &other).unwrap();
    }

    #[test]
    fn a_relay_cannot_alter_skip_reorder_or_forge_heads() {
        let (vendor, domain) = (PrivateKeySigner::random(), feed_domain(31337, Address::repeat_byte(7)));
        let heads = chain(&vendor, &domain, 4);
        let v = vendor.address();
        // another segment root under the vendor's signature
        let mut altered = heads[2].clone();
        altered.head.segmentRoot = B256::repeat_byte(0xee);
        assert!(matches!(verify_next(&domain, v, &heads[1], &altered), Err(HeadError::NotTheVendor { .. })));
        // a head skipped, or given twice
        assert!(matches!(verify_next(&domain, v, &heads[1], &heads[3]), Err(HeadError::NotNext { .. })));
        assert!(matches!(verify_next(&domain, v, &heads[1], &heads[1]), Err(HeadError::NotNext { .. })));
        // a head signed by someone else, in the right place
        let stranger = PrivateKeySigner::random();
        let forged = SignedHead::sign(&stranger, &domain, heads[2].head.clone()).unwrap();
        assert!(matches!(verify_next(&domain, v, &heads[1], &forged), Err(HeadError::NotTheVendor { .. })));
        // the vendor's own head with a broken link, or dated before its predecessor
        let mut h = heads[2].head.clone();
        h.prevHead = heads[0].hash();
        let broken = SignedHead::sign(&vendor, &domain, h).unwrap();
        assert!(matches!(verify_next(&domain, v, &heads[1], &broken), Err(HeadError::BrokenChain { .. })));
        let mut h = heads[2].head.clone();
        h.time = heads[1].head.time - 1;
        let early = SignedHead::sign(&vendor, &domain, h).unwrap();
        assert!(matches!(verify_next(&domain, v, &heads[1], &early), Err(HeadError::TimeWentBack { .. })));
        // another feed of the same vendor, and a head replayed on another chain
        let other_feed = chain(&vendor, &domain, 2).remove(1);
        let mut h = other_feed.head.clone();
        h.feedId = feed_id(v, "kaiko/eth-usd/trades");
        let elsewhere = SignedHead::sign(&vendor, &domain, h).unwrap();
        assert!(matches!(verify_next(&domain, v, &heads[0], &elsewhere), Err(HeadError::OtherFeed { .. })));
        let mainnet = feed_domain(1, Address::repeat_byte(7));
        assert!(matches!(verify_next(&mainnet, v, &heads[0], &heads[1]), Err(HeadError::NotTheVendor { .. })));
        // head 0 must start the chain
        assert!(matches!(verify_first(&domain, v, NAME, &heads[1]), Err(HeadError::NotNext { .. })));
        assert!(matches!(verify_first(&domain, v, "another", &heads[0]), Err(HeadError::OtherFeed { .. })));
        // a stranger's own feed of the same name is not the vendor's
        let theirs = chain(&stranger, &domain, 1).remove(0);
        assert!(matches!(verify_first(&domain, v, NAME, &theirs), Err(HeadError::OtherFeed { .. })));
    }

    #[test]
    fn two_different_heads_for_one_sequence_number_prove_an_equivocation() {
        let (vendor, domain) = (PrivateKeySigner::random(), feed_domain(31337, Address::repeat_byte(7)));
        let heads = chain(&vendor, &domain, 3);
        let v = vendor.address();
        let mut h = heads[2].head.clone();
        h.segmentRoot = B256::repeat_byte(0x42);
        let fork = SignedHead::sign(&vendor, &domain, h).unwrap();
        // each verifies after head 1 on its own: only together do they show two histories
        verify_next(&domain, v, &heads[1], &fork).unwrap();
        let proof = equivocation(&domain, v, NAME, &heads[2], &fork).expect("an equivocation");
        assert_eq!((proof.a.head.seq, proof.b.head.seq), (2, 2));
        // the same head twice, two sequence numbers, or a stranger's head prove nothing
        // relayed in the other (high-s) form, the proof still carries the canonical one
        let sig = alloy::primitives::Signature::try_from(&fork.sig[..]).unwrap();
        let high = SignedHead { head: fork.head.clone(), sig: crate::receipt::malleate(&sig) };
        assert_eq!(equivocation(&domain, v, NAME, &heads[2], &high).unwrap().b.sig, fork.sig);
        assert!(equivocation(&domain, v, NAME, &heads[2], &heads[2]).is_none());
        assert!(equivocation(&domain, v, NAME, &heads[1], &heads[2]).is_none());
        assert!(equivocation(&domain, v, "another", &heads[2], &fork).is_none());
        let stranger = PrivateKeySigner::random();
        let mut h = heads[2].head.clone();
        h.segmentRoot = B256::repeat_byte(0x43);
        let forged = SignedHead::sign(&stranger, &domain, h).unwrap();
        assert!(equivocation(&domain, v, NAME, &heads[2], &forged).is_none());
    }
}
