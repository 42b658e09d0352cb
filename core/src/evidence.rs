//! Dispute evidence: what a buyer commits to on chain when it disputes a deal, and what an
//! arbiter reviews.
//!
//! `bdc deal dispute` writes an [`Evidence`] document (canonical JSON, [`Evidence::to_bytes`])
//! and commits its BLAKE3 hash with the dispute (`TransferEscrow.dispute(terms, evidence)`). The
//! hash is also the document's root as a raw bdc blob, so the buyer can publish it and the
//! arbiter fetch it verified; however it arrives, the arbiter checks it against the hash on
//! chain before reading it. The document holds statements the buyer cannot forge: result
//! manifests the provider signed, and the dataset root the deal's terms name. Everything else
//! the arbiter checks itself, on its own verified copy of the dataset (`bdc arbiter review`).

use serde::{Deserialize, Serialize};

use crate::{Hash, jobs::SignedJobResult};

/// Version of the evidence document.
pub const EVIDENCE_VERSION: u32 = 1;

/// Largest evidence document an arbiter reads (a signed result manifest is at most
/// [`crate::jobs::MAX_UPDATE_BYTES`]; a few of them fit).
pub const MAX_EVIDENCE_BYTES: usize = 1 << 20;

/// What the buyer says went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Claim {
    /// The signed result of the deal's job is wrong. `results` holds the manifest of the
    /// disputed job deal, signed by its provider, and may hold manifests of the same job from
    /// other providers (replicas that disagree).
    WrongResult { results: Vec<SignedJobResult> },
    /// The dataset's bytes contradict its manifest (`bdc.json`): a listed file is missing, or
    /// its size, hash or schema is not what the manifest says, or a file is not listed.
    DataContradictsManifest,
}

/// A dispute's evidence document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub version: u32,
    /// The disputed deal, 0x-hex.
    pub deal: String,
    pub claim: Claim,
    /// Where the arbiter can fetch the dataset (a ticket), when the buyer knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_ticket: Option<String>,
    /// Free text for the arbiter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence of {len} bytes is larger than the {MAX_EVIDENCE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("evidence is not a bdc evidence document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("evidence version {0} is not supported (this build reads version {EVIDENCE_VERSION})")]
    Version(u32),
    #[error("evidence of a wrong result carries no signed result manifest")]
    NoResults,
}

impl Evidence {
    /// Canonical encoding (pretty JSON and a newline): the bytes whose hash is committed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("evidence serializes");
        v.push(b'\n');
        v
    }

    /// The hash committed on chain for these bytes: their BLAKE3 root as a raw blob.
    pub fn hash_of(bytes: &[u8]) -> Hash {
        Hash::new(bytes)
    }

    /// Parses and checks a document, refusing one above [`MAX_EVIDENCE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(EvidenceError::TooLarge { len: bytes.len() });
        }
        let e: Self = serde_json::from_slice(bytes)?;
        if e.version != EVIDENCE_VERSION {
            return Err(EvidenceError::Version(e.version));
        }
        if let Claim::WrongResult { results } = &e.claim
            && results.is_empty()
        {
            return Err(EvidenceError::NoResults);
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        Evidence {
            version: EVIDENCE_VERSION,
            deal: format!("0x{}", "ab".repeat(32)),
            claim: Claim::DataContradictsManifest,
            dataset_ticket: None,
            note: "row counts".into(),
        }
    }

    #[test]
    fn round_trips_and_hashes_its_canonical_bytes() {
        let e = sample();
        let bytes = e.to_bytes();
        assert_eq!(Evidence::from_bytes(&bytes).unwrap(), e);
        assert_eq!(Evidence::hash_of(&bytes), Hash::new(&bytes));
        assert!(String::from_utf8(bytes).unwrap().contains("\"kind\": \"data_contradicts_manifest\""));
    }

    #[test]
    fn refuses_oversized_unknown_and_empty_documents() {
        let big = vec![b' '; MAX_EVIDENCE_BYTES + 1];
        assert!(matches!(Evidence::from_bytes(&big), Err(EvidenceError::TooLarge { .. })));
        let mut e = sample();
        e.version = 7;
        assert!(matches!(Evidence::from_bytes(&e.to_bytes()), Err(EvidenceError::Version(7))));
        let mut e = sample();
        e.claim = Claim::WrongResult { results: vec![] };
        assert!(matches!(Evidence::from_bytes(&e.to_bytes()), Err(EvidenceError::NoResults)));
        assert!(matches!(Evidence::from_bytes(b"{\"version\":1}"), Err(EvidenceError::Json(_))));
    }
}
