//! The buyer's deal book (`<data-dir>/deals.json`) and how a resumed run of a deal counts what
//! it pays for.

use std::path::{Path, PathBuf};

use alloy::{primitives::B256, sol_types::SolValue};
use bdc_contracts::client::Terms;
use bdc_core::Hash;
use serde::{Deserialize, Serialize};

use crate::paid::PaidError;

/// A deal as the buyer records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerDeal {
    pub id: B256,
    /// `abi.encode(Terms)`, hex.
    pub terms: String,
    pub root: Hash,
    /// Bytes verified under this deal, over all runs.
    pub verified: u64,
    /// Newest cumulative amount signed (what the buyer owes).
    pub paid: u128,
    /// The provider refused this deal for good (`WINDOW_SPENT`, `TERMS_NOT_ACCEPTED`, …): not
    /// reused.
    #[serde(default)]
    pub spent: bool,
    /// Newest cumulative amount the provider confirmed storing (it closed the connection with
    /// `DONE` after the final receipt). Below `paid`: a receipt the buyer signed may never have
    /// arrived, and the next fetch of the dataset delivers it.
    #[serde(default)]
    pub confirmed: u128,
}

/// Why a deal book entry's terms do not decode.
#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    #[error("terms are not hex: {0}")]
    Hex(#[from] hex::FromHexError),
    #[error("terms are not an ABI-encoded Terms: {0}")]
    Abi(#[from] alloy::sol_types::Error),
}

impl BuyerDeal {
    pub fn terms(&self) -> Result<Terms, TermsError> {
        let bytes = hex::decode(self.terms.trim_start_matches("0x"))?;
        Ok(Terms::abi_decode(&bytes)?)
    }
}

/// `<data-dir>/deals.json`: every deal this buyer opened, with what it verified and signed.
#[derive(Debug)]
pub struct DealBook {
    path: PathBuf,
    pub deals: Vec<BuyerDeal>,
}

impl DealBook {
    pub fn load(data_dir: &Path) -> Result<Self, PaidError> {
        let path = data_dir.join("deals.json");
        let deals = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| PaidError::Book { path: path.clone(), source: e.into() })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(PaidError::Book { path, source: e.into() }),
        };
        Ok(Self { path, deals })
    }

    /// Replaces the book atomically and durably.
    pub fn save(&self) -> Result<(), PaidError> {
        self.save_with(true)
    }

    /// Replaces the book atomically; `durable` also flushes it to disk first.
    pub(crate) fn save_with(&self, durable: bool) -> Result<(), PaidError> {
        let bytes = serde_json::to_vec_pretty(&self.deals).expect("deals serialize");
        bdc_core::keys::write_private_with(&self.path, &bytes, durable)
            .map_err(|e| PaidError::Book { path: self.path.clone(), source: e.into() })
    }

    pub fn get(&self, id: &B256) -> Option<&BuyerDeal> {
        self.deals.iter().find(|d| d.id == *id)
    }

    pub(crate) fn upsert(&mut self, d: BuyerDeal) {
        match self.deals.iter_mut().find(|x| x.id == d.id) {
            Some(x) => *x = d,
            None => self.deals.push(d),
        }
    }
}

/// How a run of a deal counts its cumulative bytes, from what the deal book says was paid for
/// this dataset and what the store still holds.
///
/// A killed buyer can hold fewer bytes than it paid for (the store lost what it had not
/// committed): its resumed run must not pay twice for them. It can also hold bytes that verified
/// after its last receipt; those are not paid on resume, because the store cannot say which
/// deal (or which other dataset sharing a blob) brought them, and a hostile provider must not be
/// able to make the buyer sign for bytes it never sent. The provider lost them within its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Bytes already paid for under this deal (its newest recorded receipt).
    pub(crate) base: u64,
    /// The run's first `skip` verified bytes replace bytes this buyer lost after paying for them.
    pub(crate) skip: u64,
}

impl Resume {
    /// `base`: paid under this deal; `paid_for_root`: paid under every deal for the dataset;
    /// `held`: payload bytes of the dataset in the store now.
    ///
    /// Lost bytes are skipped only up to one window: a receipt is signed after the store
    /// committed, so a kill loses at most what verified since the last receipt (and the odd
    /// partial chunk group), which is less. A store that lost more lost it outside the paid path
    /// (a failed disk, a deleted store), and the buyer buys it again rather than ask a provider
    /// to resend more than its window unpaid.
    pub(crate) fn new(base: u64, paid_for_root: u64, held: u64, window: u64) -> Self {
        let lost = paid_for_root.saturating_sub(held);
        Self { base, skip: if lost <= window { lost } else { 0 } }
    }
}

#[cfg(test)]
mod tests {
    use super::Resume;

    const W: u64 = 4 << 20;

    #[test]
    fn a_clean_resume_continues_from_the_book() {
        let r = Resume::new(10 << 20, 10 << 20, 10 << 20, W);
        assert_eq!((r.base, r.skip), (10 << 20, 0));
        // more held than paid for (bytes after the last receipt, or blobs another dataset
        // shares): nothing extra is paid
        let r = Resume::new(10 << 20, 10 << 20, 30 << 20, W);
        assert_eq!((r.base, r.skip), (10 << 20, 0));
    }

    #[test]
    fn bytes_lost_after_paying_are_not_paid_again() {
        // paid 10 MiB, the store kept 7: the run's first 3 MiB are re-downloads
        let r = Resume::new(10 << 20, 10 << 20, 7 << 20, W);
        assert_eq!(r.skip, 3 << 20);
        // the same on a fresh deal after an earlier deal paid for them
        let r = Resume::new(0, 10 << 20, 7 << 20, W);
        assert_eq!((r.base, r.skip), (0, 3 << 20));
        // more than a window lost (not by a kill): bought again
        let r = Resume::new(10 << 20, 10 << 20, 5 << 20, W);
        assert_eq!(r.skip, 0);
    }
}
