//! The receipt ledger: the newest valid receipt per deal, stored durably (redb commits are
//! fsync'd) *before* the gate lets more bytes out, plus what was redeemed on chain. A provider
//! killed at any point redeems from here on its next start.

use std::path::Path;

use alloy::primitives::B256;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// The ledger's file in the provider's data dir.
pub const LEDGER_FILE: &str = "ledger.redb";

const DEALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("deals-v1");
/// Per sold root: the vendor and royalty ceiling the provider pinned (`admission::SaleTerms`),
/// kept across restarts so a vendor cannot raise the royalty and wait for one.
const SALES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sales-v1");

/// What the provider knows about one deal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `abi.encode(Terms)`: what `redeem` must present.
    pub terms_abi: Vec<u8>,
    /// Newest receipt: cumulative amount and the buyer's signature.
    pub amount: u128,
    pub sig: Vec<u8>,
    /// Amount already redeemed on chain.
    pub redeemed: u128,
    /// Upper bound on bytes ever sent under this deal (persisted ahead of sending).
    pub reserved: u64,
    /// Deal expiry (unix seconds): redeem before it.
    pub expiry: u64,
    /// Redeeming failed for good (deal refunded or expired before the receipt was redeemed).
    pub lost: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("receipt ledger: {0}")]
    Db(#[from] redb::Error),
    #[error("receipt ledger: an entry does not encode or decode: {0}")]
    Entry(#[from] postcard::Error),
    #[error("receipt ledger: the ledger task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn err(e: impl Into<redb::Error>) -> LedgerError {
    LedgerError::Db(e.into())
}

#[derive(Debug)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(DEALS).map_err(err)?;
        tx.open_table(SALES).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// The sale terms pinned for `root`: (vendor address, royalty ceiling in bps).
    pub fn pinned_sale(&self, root: &[u8; 32]) -> Result<Option<([u8; 20], u16)>, LedgerError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(SALES).map_err(err)?;
        let v = t.get(root.as_slice()).map_err(err)?;
        v.map(|v| postcard::from_bytes(v.value()).map_err(LedgerError::Entry)).transpose()
    }

    /// Pins the sale terms of `root`, unless some are pinned already; returns the pinned ones.
    pub fn pin_sale(&self, root: &[u8; 32], terms: ([u8; 20], u16)) -> Result<([u8; 20], u16), LedgerError> {
        let tx = self.db.begin_write().map_err(err)?;
        let pinned = {
            let mut t = tx.open_table(SALES).map_err(err)?;
            let existing: Option<([u8; 20], u16)> = match t.get(root.as_slice()).map_err(err)? {
                Some(v) => Some(postcard::from_bytes(v.value()).map_err(LedgerError::Entry)?),
                None => None,
            };
            match existing {
                Some(p) => p,
                None => {
                    let bytes = postcard::to_stdvec(&terms).map_err(LedgerError::Entry)?;
                    t.insert(root.as_slice(), bytes.as_slice()).map_err(err)?;
                    terms
                }
            }
        };
        tx.commit().map_err(err)?;
        Ok(pinned)
    }

    /// Replaces the pinned sale terms of `root` (an operator's re-pin after a vendor transfer);
    /// returns the ones it replaced.
    pub fn repin_sale(&self, root: &[u8; 32], terms: ([u8; 20], u16)) -> Result<Option<([u8; 20], u16)>, LedgerError> {
        let tx = self.db.begin_write().map_err(err)?;
        let before = {
            let mut t = tx.open_table(SALES).map_err(err)?;
            let before: Option<([u8; 20], u16)> = match t.get(root.as_slice()).map_err(err)? {
                Some(v) => Some(postcard::from_bytes(v.value()).map_err(LedgerError::Entry)?),
                None => None,
            };
            let bytes = postcard::to_stdvec(&terms).map_err(LedgerError::Entry)?;
            t.insert(root.as_slice(), bytes.as_slice()).map_err(err)?;
            before
        };
        tx.commit().map_err(err)?;
        Ok(before)
    }

    pub fn get(&self, deal: &B256) -> Result<Option<LedgerEntry>, LedgerError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(DEALS).map_err(err)?;
        let v = t.get(deal.as_slice()).map_err(err)?;
        v.map(|v| postcard::from_bytes(v.value()).map_err(LedgerError::Entry)).transpose()
    }

    /// All entries.
    pub fn all(&self) -> Result<Vec<(B256, LedgerEntry)>, LedgerError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(DEALS).map_err(err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push((B256::from_slice(k.value()), postcard::from_bytes(v.value()).map_err(LedgerError::Entry)?));
        }
        Ok(out)
    }

    /// Applies `f` to the entry (default if absent) and commits durably.
    pub fn update(&self, deal: &B256, f: impl FnOnce(&mut LedgerEntry)) -> Result<LedgerEntry, LedgerError> {
        let tx = self.db.begin_write().map_err(err)?;
        let entry = {
            let mut t = tx.open_table(DEALS).map_err(err)?;
            let mut e: LedgerEntry = match t.get(deal.as_slice()).map_err(err)? {
                Some(v) => postcard::from_bytes(v.value()).map_err(LedgerError::Entry)?,
                None => LedgerEntry::default(),
            };
            f(&mut e);
            let bytes = postcard::to_stdvec(&e).map_err(LedgerError::Entry)?;
            t.insert(deal.as_slice(), bytes.as_slice()).map_err(err)?;
            e
        };
        tx.commit().map_err(err)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.redb");
        let id = B256::repeat_byte(9);
        {
            let l = Ledger::open(&p).unwrap();
            l.update(&id, |e| {
                e.amount = 42;
                e.sig = vec![1, 2];
            })
            .unwrap();
        }
        let l = Ledger::open(&p).unwrap();
        let e = l.get(&id).unwrap().unwrap();
        assert_eq!((e.amount, e.sig.as_slice()), (42, &[1u8, 2][..]));
        assert_eq!(l.all().unwrap().len(), 1);
    }

    #[test]
    fn the_first_pinned_sale_terms_stay_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.redb");
        {
            let l = Ledger::open(&p).unwrap();
            assert_eq!(l.pin_sale(&[1; 32], ([7; 20], 1_000)).unwrap(), ([7; 20], 1_000));
        }
        let l = Ledger::open(&p).unwrap();
        // a later, higher royalty does not replace what was pinned
        assert_eq!(l.pin_sale(&[1; 32], ([7; 20], 10_000)).unwrap(), ([7; 20], 1_000));
        assert_eq!(l.pinned_sale(&[1; 32]).unwrap(), Some(([7; 20], 1_000)));
        assert_eq!(l.pinned_sale(&[2; 32]).unwrap(), None);
    }
}
