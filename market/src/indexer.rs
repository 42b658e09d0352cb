//! Chain indexer: follows the registry's and the escrow's events into the database.
//!
//! Each step reads the logs of the next block range, stores every log under its (block, log
//! index) — so re-reading a range changes nothing — and applies the new ones to the derived
//! tables (`datasets`, `deals`, `redemptions`) in the same transaction as the cursor move.
//! Before moving on it compares the hash of the cursor's block with the chain's: if they differ
//! (a reorg), it drops the logs of the last `depth` blocks and rebuilds the derived tables from
//! the logs that remain, then re-reads from there.

use std::collections::HashMap;

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
    rpc::types::Log,
};
use bdc_contracts::{
    Contracts,
    bindings::{DatasetRegistry::DatasetRegistryEvents, TransferEscrow::TransferEscrowEvents},
};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use crate::db::{Db, DbError};

const CURSOR: &str = "chain";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("chain: {0}")]
    Chain(#[from] bdc_contracts::ChainError),
    #[error("chain: eth_getBlockByNumber({block}) failed: {source}")]
    Block {
        block: u64,
        #[source]
        source: alloy::transports::TransportError,
    },
    #[error("chain: block {0} vanished")]
    Vanished(u64),
    #[error("a stored event is unreadable: {0}")]
    StoredEvent(#[from] serde_json::Error),
}

impl From<sqlx::Error> for IndexError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// One decoded event, as stored in `events.body` (replayed on a rebuild).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainEvent {
    DatasetRegistered {
        root: B256,
        vendor: Address,
        royalty_bps: u16,
        manifest_hash: B256,
        price_hint: String,
    },
    DatasetUpdated {
        root: B256,
        royalty_bps: u16,
        manifest_hash: B256,
        price_hint: String,
    },
    VendorTransferred {
        root: B256,
        to: Address,
    },
    DealOpened {
        id: B256,
        buyer: Address,
        provider: Address,
        root: B256,
        price_per_byte: String,
        max_amount: String,
        window: u64,
        expiry: u64,
        /// Absent from events stored by markets before 0006 (no arbiter: not trusted).
        #[serde(default)]
        arbiter: Address,
    },
    Redeemed {
        id: B256,
        cumulative: String,
    },
    Withdrawn {
        id: B256,
    },
    Refunded {
        id: B256,
        amount: String,
    },
    Disputed {
        id: B256,
        /// Absent from events stored by markets before 0007.
        #[serde(default)]
        rule_by: u64,
        #[serde(default)]
        evidence: B256,
    },
    Resolved {
        id: B256,
        buyer_wins: bool,
    },
}

impl ChainEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::DatasetRegistered { .. } => "dataset_registered",
            Self::DatasetUpdated { .. } => "dataset_updated",
            Self::VendorTransferred { .. } => "vendor_transferred",
            Self::DealOpened { .. } => "deal_opened",
            Self::Redeemed { .. } => "redeemed",
            Self::Withdrawn { .. } => "withdrawn",
            Self::Refunded { .. } => "refunded",
            Self::Disputed { .. } => "disputed",
            Self::Resolved { .. } => "resolved",
        }
    }

    fn from_registry(e: DatasetRegistryEvents) -> Option<Self> {
        Some(match e {
            DatasetRegistryEvents::DatasetRegistered(e) => Self::DatasetRegistered {
                root: e.root,
                vendor: e.vendor,
                royalty_bps: e.royaltyBps,
                manifest_hash: e.manifestHash,
                price_hint: e.priceHint.to_string(),
            },
            DatasetRegistryEvents::DatasetUpdated(e) => Self::DatasetUpdated {
                root: e.root,
                royalty_bps: e.royaltyBps,
                manifest_hash: e.manifestHash,
                price_hint: e.priceHint.to_string(),
            },
            DatasetRegistryEvents::VendorTransferred(e) => Self::VendorTransferred { root: e.root, to: e.to },
        })
    }

    fn from_escrow(e: TransferEscrowEvents) -> Option<Self> {
        Some(match e {
            TransferEscrowEvents::DealOpened(e) => Self::DealOpened {
                id: e.dealId,
                buyer: e.buyer,
                provider: e.provider,
                root: e.datasetRoot,
                price_per_byte: e.terms.pricePerByte.to_string(),
                max_amount: e.terms.maxAmount.to_string(),
                window: e.terms.window,
                expiry: e.terms.expiry,
                arbiter: e.terms.arbiter,
            },
            TransferEscrowEvents::Redeemed(e) => {
                Self::Redeemed { id: e.dealId, cumulative: e.cumulativeAmount.to_string() }
            }
            TransferEscrowEvents::Withdrawn(e) => Self::Withdrawn { id: e.dealId },
            TransferEscrowEvents::Refunded(e) => Self::Refunded { id: e.dealId, amount: e.amount.to_string() },
            TransferEscrowEvents::Disputed(e) => {
                Self::Disputed { id: e.dealId, rule_by: e.ruleBy.to::<u64>(), evidence: e.evidence }
            }
            TransferEscrowEvents::Resolved(e) => Self::Resolved { id: e.dealId, buyer_wins: e.buyerWins },
            #[allow(unreachable_patterns)]
            _ => return None,
        })
    }
}

/// What one [`Indexer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Newest block indexed.
    pub cursor: u64,
    /// The chain's head when the step began.
    pub head: u64,
    /// New events applied.
    pub applied: u64,
    /// Blocks rolled back because the chain reorganized.
    pub rolled_back: u64,
}

/// Follows the chain into the database.
#[derive(Debug, Clone)]
pub struct Indexer {
    db: Db,
    chain: Contracts<DynProvider>,
    /// Blocks re-read after a reorg is noticed (the deepest reorg survived).
    pub depth: u64,
    /// Most blocks read per step.
    pub batch: u64,
}

impl Indexer {
    pub fn new(db: Db, chain: Contracts<DynProvider>) -> Self {
        Self { db, chain, depth: 64, batch: 2_000 }
    }

    async fn block_hash(&self, n: u64) -> Result<Option<B256>, IndexError> {
        let b = self
            .chain
            .provider()
            .get_block_by_number(BlockNumberOrTag::Number(n))
            .await
            .map_err(|source| IndexError::Block { block: n, source })?;
        Ok(b.map(|b| b.header.hash))
    }

    /// The time of every block that holds one of `logs`: from the log when the node says it,
    /// else from the block's header (one request per block with events).
    async fn block_times(&self, logs: &[(Log, ChainEvent)]) -> Result<HashMap<u64, u64>, IndexError> {
        let mut times = HashMap::new();
        for (l, _) in logs {
            let Some(block) = l.block_number else { continue };
            if times.contains_key(&block) {
                continue;
            }
            let time = match l.block_timestamp {
                Some(t) => t,
                None => self
                    .chain
                    .provider()
                    .get_block_by_number(BlockNumberOrTag::Number(block))
                    .await
                    .map_err(|source| IndexError::Block { block, source })?
                    .map(|b| b.header.timestamp)
                    .unwrap_or(0),
            };
            times.insert(block, time);
        }
        Ok(times)
    }

    /// Indexes the next block range (or rolls back a reorg). Call until `cursor == head`.
    pub async fn step(&self) -> Result<Step, IndexError> {
        let head = self.chain.head().await?;
        let first = self.chain.deployment().deploy_block;
        let cursor = self.db.cursor(CURSOR).await?;
        if let Some((n, hash)) = &cursor
            && self.block_hash(*n).await?.map(|h| format!("{h:#x}")).as_deref() != Some(hash.as_str())
        {
            let back = n.saturating_sub(self.depth).max(first.saturating_sub(1));
            self.rollback(back).await?;
            tracing::warn!(from = n, to = back, "chain reorganized: re-reading");
            return Ok(Step { cursor: back, head, applied: 0, rolled_back: n - back });
        }
        let from = cursor.map(|c| c.0 + 1).unwrap_or(first);
        if from > head {
            return Ok(Step { cursor: from - 1, head, applied: 0, rolled_back: 0 });
        }
        let to = head.min(from + self.batch - 1);
        let mut logs: Vec<(Log, ChainEvent)> = Vec::new();
        for (l, e) in self.chain.registry_events(from, to).await? {
            logs.extend(ChainEvent::from_registry(e).map(|e| (l, e)));
        }
        for (l, e) in self.chain.escrow_events(from, to).await? {
            logs.extend(ChainEvent::from_escrow(e).map(|e| (l, e)));
        }
        logs.sort_by_key(|(l, _)| (l.block_number, l.log_index));
        let to_hash = self.block_hash(to).await?.ok_or(IndexError::Vanished(to))?;
        let times = self.block_times(&logs).await?;
        let mut tx = self.db.pool.begin().await?;
        let mut applied = 0;
        for (l, ev) in &logs {
            let (Some(block), Some(idx), Some(bh)) = (l.block_number, l.log_index, l.block_hash) else { continue };
            let time = times.get(&block).copied().unwrap_or(0);
            let body = serde_json::to_string(ev).expect("event serializes");
            let res = sqlx::query(
                "INSERT INTO events (block, log_index, block_hash, kind, body, block_time) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (block, log_index) DO NOTHING",
            )
            .bind(block as i64)
            .bind(idx as i64)
            .bind(format!("{bh:#x}"))
            .bind(ev.kind())
            .bind(body)
            .bind(time as i64)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() == 1 {
                apply(&mut tx, At { block, idx, time }, ev).await?;
                applied += 1;
            }
        }
        set_cursor(&mut tx, to, &format!("{to_hash:#x}")).await?;
        tx.commit().await?;
        Ok(Step { cursor: to, head, applied, rolled_back: 0 })
    }

    /// Deals indexed before the index kept their arbiter (migration 0006): reads each one's
    /// terms back from the chain and writes the arbiter into its row and its stored event, so
    /// a later rebuild keeps it. Returns how many were filled in.
    pub async fn backfill_arbiters(&self) -> Result<u64, IndexError> {
        let rows = sqlx::query("SELECT block, log_index, body FROM events WHERE kind = 'deal_opened'")
            .fetch_all(&self.db.pool)
            .await?;
        let mut filled = 0;
        for r in rows {
            let ev: ChainEvent = serde_json::from_str(&r.get::<String, _>(2))?;
            let ChainEvent::DealOpened { id, arbiter, .. } = &ev else { continue };
            if *arbiter != Address::ZERO {
                continue;
            }
            let Some(deal) = self.chain.find_deal(*id).await? else {
                continue;
            };
            let mut ev = ev.clone();
            if let ChainEvent::DealOpened { arbiter, .. } = &mut ev {
                *arbiter = deal.terms.arbiter;
            }
            let mut tx = self.db.pool.begin().await?;
            sqlx::query("UPDATE events SET body = $3 WHERE block = $1 AND log_index = $2")
                .bind(r.get::<i64, _>(0))
                .bind(r.get::<i64, _>(1))
                .bind(serde_json::to_string(&ev).expect("event serializes"))
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE deals SET arbiter = $2 WHERE id = $1")
                .bind(hex32(id))
                .bind(addr(&deal.terms.arbiter))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            filled += 1;
        }
        Ok(filled)
    }

    /// Runs [`Self::step`] until caught up.
    pub async fn catch_up(&self) -> Result<Step, IndexError> {
        loop {
            let s = self.step().await?;
            if s.cursor >= s.head && s.rolled_back == 0 {
                return Ok(s);
            }
        }
    }

    /// Forgets everything after block `to` and rebuilds the derived tables from what remains.
    async fn rollback(&self, to: u64) -> Result<(), IndexError> {
        let hash = match self.block_hash(to).await? {
            Some(h) => format!("{h:#x}"),
            None => String::new(),
        };
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM events WHERE block > $1").bind(to as i64).execute(&mut *tx).await?;
        for t in ["datasets", "deals", "redemptions"] {
            sqlx::query(&format!("DELETE FROM {t}")).execute(&mut *tx).await?;
        }
        let rows = sqlx::query("SELECT block, log_index, body, block_time FROM events ORDER BY block, log_index")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let ev: ChainEvent = serde_json::from_str(&r.get::<String, _>(2))?;
            let at = At {
                block: r.get::<i64, _>(0) as u64,
                idx: r.get::<i64, _>(1) as u64,
                time: r.get::<i64, _>(3) as u64,
            };
            apply(&mut tx, at, &ev).await?;
        }
        set_cursor(&mut tx, to, &hash).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn set_cursor(tx: &mut Transaction<'_, Any>, block: u64, hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cursor (name, block, block_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET block = excluded.block, block_hash = excluded.block_hash",
    )
    .bind(CURSOR)
    .bind(block as i64)
    .bind(hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn hex32(b: &B256) -> String {
    format!("{b:#x}")
}

fn addr(a: &Address) -> String {
    format!("{a:#x}")
}

/// Where an event is: its block, its index in the block, the block's time (unix seconds).
#[derive(Debug, Clone, Copy)]
struct At {
    block: u64,
    idx: u64,
    time: u64,
}

/// Applies one event to the derived tables.
async fn apply(tx: &mut Transaction<'_, Any>, at: At, ev: &ChainEvent) -> Result<(), sqlx::Error> {
    let At { block, idx, time } = at;
    let q = match ev {
        ChainEvent::DatasetRegistered { root, vendor, royalty_bps, manifest_hash, price_hint } => sqlx::query(
            "INSERT INTO datasets (root, vendor, royalty_bps, manifest_hash, price_hint, block) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (root) DO NOTHING",
        )
        .bind(hex32(root))
        .bind(addr(vendor))
        .bind(*royalty_bps as i64)
        .bind(hex32(manifest_hash))
        .bind(price_hint.clone())
        .bind(block as i64),
        ChainEvent::DatasetUpdated { root, royalty_bps, manifest_hash, price_hint } => {
            sqlx::query("UPDATE datasets SET royalty_bps = $2, manifest_hash = $3, price_hint = $4 WHERE root = $1")
                .bind(hex32(root))
                .bind(*royalty_bps as i64)
                .bind(hex32(manifest_hash))
                .bind(price_hint.clone())
        }
        ChainEvent::VendorTransferred { root, to } => {
            sqlx::query("UPDATE datasets SET vendor = $2 WHERE root = $1").bind(hex32(root)).bind(addr(to))
        }
        ChainEvent::DealOpened { id, buyer, provider, root, price_per_byte, max_amount, window, expiry, arbiter } => {
            sqlx::query(
                "INSERT INTO deals (id, buyer, provider, root, price_per_byte, max_amount, window_bytes, expiry, \
                 opened_block, redeemed, refunded, state, buyer_won, arbiter, opened_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '0', '0', 'open', 0, $10, $11) ON CONFLICT (id) DO NOTHING",
            )
            .bind(hex32(id))
            .bind(addr(buyer))
            .bind(addr(provider))
            .bind(hex32(root))
            .bind(price_per_byte.clone())
            .bind(max_amount.clone())
            .bind(*window as i64)
            .bind(*expiry as i64)
            .bind(block as i64)
            .bind(addr(arbiter))
            .bind(time as i64)
        }
        ChainEvent::Redeemed { id, cumulative } => {
            sqlx::query(
                "INSERT INTO redemptions (deal, block, log_index, cumulative, block_time) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (deal, block, log_index) DO NOTHING",
            )
            .bind(hex32(id))
            .bind(block as i64)
            .bind(idx as i64)
            .bind(cumulative.clone())
            .bind(time as i64)
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE deals SET redeemed = $2 WHERE id = $1").bind(hex32(id)).bind(cumulative.clone())
        }
        // A deal's outcome only moves forward: a payout makes it completed (also after a refund
        // of the unspent deposit, which every buyer does), a refund of a deal that never paid
        // out makes it refunded, and a dispute the buyer won stays on the record whatever follows.
        ChainEvent::Withdrawn { id } => sqlx::query(
            "UPDATE deals SET state = 'completed' WHERE id = $1 AND NOT (state = 'resolved' AND buyer_won = 1)",
        )
        .bind(hex32(id)),
        ChainEvent::Refunded { id, amount } => sqlx::query(
            "UPDATE deals SET refunded = $2, state = CASE WHEN state = 'open' THEN 'refunded' ELSE state END \
             WHERE id = $1",
        )
        .bind(hex32(id))
        .bind(amount.clone()),
        ChainEvent::Disputed { id, rule_by, evidence } => sqlx::query(
            "UPDATE deals SET state = CASE WHEN state = 'resolved' AND buyer_won = 1 THEN state ELSE 'disputed' END, \
             rule_by = $2, evidence = $3 WHERE id = $1",
        )
        .bind(hex32(id))
        .bind(*rule_by as i64)
        .bind(hex32(evidence)),
        ChainEvent::Resolved { id, buyer_wins } => sqlx::query(
            "UPDATE deals SET state = 'resolved', buyer_won = CASE WHEN buyer_won = 1 THEN 1 ELSE $2 END WHERE id = $1",
        )
        .bind(hex32(id))
        .bind(*buyer_wins as i64),
    };
    q.execute(&mut **tx).await?;
    Ok(())
}
