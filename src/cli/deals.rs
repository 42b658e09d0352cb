//! `bdc deals`, `bdc deal ...`: the buyer's deals and what can be done with them.

use std::path::Path;

use alloy::primitives::{B256, U256};
use anyhow::Context;
use bdc_core::{
    evidence::{Claim, EVIDENCE_VERSION, Evidence},
    jobs::SignedJobResult,
};
use bdc_fetcher::DealBook;
use clap::Subcommand;

use super::chain::{ChainArgs, format_bdc};

#[derive(Debug, Subcommand)]
pub enum DealCmd {
    /// After expiry: return the unredeemed escrow to the buyer.
    Refund {
        /// The deal id (0x…, as `bdc deals` lists it).
        id: B256,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// As the buyer, inside the dispute window: freeze the redeemed-but-pending pot (posts a
    /// bond). The arbiter has the escrow's arbitration period to rule; after it, `bdc deal
    /// settle` applies the default (the signed receipts stand, the bond goes to the provider).
    ///
    /// With --result or --manifest-claim the evidence document `bdc arbiter review` reads is
    /// written to <data-dir>/fetcher/evidence/<deal>.json and its hash committed; give it to the
    /// arbiter (or publish it: `bdc provider publish --raw`), with the result file for a job.
    Dispute {
        /// The deal id (0x…, as `bdc deals` lists it).
        id: B256,
        /// A prepared evidence file: its BLAKE3 hash (its root as a raw bdc blob, so the arbiter
        /// can fetch it verified once it is published) is committed on chain.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["result", "manifest_claim"])]
        evidence: Option<std::path::PathBuf>,
        /// The job's result is wrong: its signed result manifest (`bdc compute --json`);
        /// repeat for replicas of the job at other providers.
        #[arg(long, value_name = "MANIFEST.json", conflicts_with = "manifest_claim")]
        result: Vec<std::path::PathBuf>,
        /// The dataset's bytes contradict its manifest (files, sizes, hashes, schemas).
        #[arg(long)]
        manifest_claim: bool,
        /// A ticket of the dataset, for the arbiter to fetch it from.
        #[arg(long, value_name = "TICKET")]
        dataset: Option<String>,
        /// A note for the arbiter.
        #[arg(long, default_value = "")]
        note: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// After the arbiter's deadline passed without a ruling: apply the default (anyone may call).
    Settle {
        /// The deal id (0x…, as `bdc deals` lists it).
        id: B256,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// After the dispute window: pay the pending pot to provider and vendor (anyone may call).
    Withdraw {
        /// The deal id (0x…, as `bdc deals` lists it).
        id: B256,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

async fn terms_of(
    id: B256,
    dir: &Path,
    c: &bdc_contracts::Contracts<alloy::providers::DynProvider>,
) -> anyhow::Result<bdc_contracts::client::Terms> {
    if let Some(d) = DealBook::load(dir)?.get(&id) {
        return d.terms().map_err(|e| anyhow::anyhow!("deal {id} in the deal book has bad terms: {e}"));
    }
    Ok(c.find_deal(id).await?.with_context(|| format!("no deal {id} on this escrow"))?.terms)
}

pub async fn deal(cmd: DealCmd, dir: &Path) -> anyhow::Result<()> {
    match cmd {
        DealCmd::Refund { id, json, chain } => {
            let (c, _) = chain.connect()?;
            let t = terms_of(id, dir, &c).await?;
            let amount = c.refund(&t).await?;
            if json {
                println!("{}", serde_json::json!({"deal": id, "refunded": amount.to_string(), "to": t.buyer}));
            } else {
                println!("refunded {} to {}", format_bdc(amount), t.buyer);
            }
        }
        DealCmd::Dispute { id, evidence, result, manifest_claim, dataset, note, json, chain } => {
            let (c, signer) = chain.connect()?;
            let t = terms_of(id, dir, &c).await?;
            let claim = if manifest_claim {
                Some(Claim::DataContradictsManifest)
            } else if !result.is_empty() {
                Some(Claim::WrongResult { results: read_results(id, &result)? })
            } else {
                None
            };
            let bytes = match (&evidence, claim) {
                (Some(p), _) => {
                    Some(std::fs::read(p).with_context(|| format!("cannot read evidence {}", p.display()))?)
                }
                (None, Some(claim)) => {
                    let doc = Evidence {
                        version: EVIDENCE_VERSION,
                        deal: format!("{id:#x}"),
                        claim,
                        dataset_ticket: dataset,
                        note,
                    };
                    let bytes = doc.to_bytes();
                    let path = dir.join("evidence").join(format!("{id:#x}.json"));
                    std::fs::create_dir_all(dir.join("evidence"))
                        .and_then(|()| std::fs::write(&path, &bytes))
                        .with_context(|| format!("cannot write the evidence {}", path.display()))?;
                    println!("evidence written to {}: give it to the arbiter {}", path.display(), t.arbiter);
                    Some(bytes)
                }
                (None, None) => None,
            };
            let evidence = bytes.map(|b| B256::from(*Evidence::hash_of(&b).as_bytes())).unwrap_or(B256::ZERO);
            c.dispute(signer.address(), &t, evidence).await?;
            let rule_by = c.deal_state(id).await?.release_at;
            if json {
                let doc =
                    serde_json::json!({"deal": id, "evidence": evidence, "arbiter": t.arbiter, "rule_by": rule_by});
                println!("{doc}");
            } else {
                println!(
                    "deal {id} disputed (evidence {evidence}); the arbiter {} rules by {}",
                    t.arbiter,
                    bdc_market_api::human::date(rule_by)
                );
            }
        }
        DealCmd::Settle { id, json, chain } => {
            let (c, _) = chain.connect()?;
            let t = terms_of(id, dir, &c).await?;
            c.settle_dispute(&t).await?;
            if json {
                println!("{}", serde_json::json!({"deal": id, "settled": true, "bond_to": t.provider}));
            } else {
                println!(
                    "deal {id} settled by default: the receipts stand, the bond went to the provider {}",
                    t.provider
                );
            }
        }
        DealCmd::Withdraw { id, json, chain } => {
            let (c, _) = chain.connect()?;
            let t = terms_of(id, dir, &c).await?;
            let (p, v) = c.withdraw(&t).await?;
            if json {
                let doc = serde_json::json!({
                    "deal": id, "provider": t.provider, "to_provider": p.to_string(),
                    "vendor": t.vendor, "to_vendor": v.to_string(),
                });
                println!("{doc}");
            } else {
                println!(
                    "paid {} to the provider {} and {} to the vendor {}",
                    format_bdc(p),
                    t.provider,
                    format_bdc(v),
                    t.vendor
                );
            }
        }
    }
    Ok(())
}

/// Signed result manifests (`bdc compute --json`) for the evidence of a dispute of `deal`: one
/// of them must be for it.
fn read_results(deal: B256, paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<SignedJobResult>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let text = std::fs::read(p).with_context(|| format!("cannot read result manifest {}", p.display()))?;
        let signed: SignedJobResult = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a signed result manifest (`bdc compute --json`)", p.display()))?;
        out.push(signed);
    }
    anyhow::ensure!(
        out.iter().any(|s| s.result.deal_id == deal.0),
        "none of the --result manifests is for deal {deal} (a paid job's manifest names its deal)"
    );
    Ok(out)
}

/// Lists the buyer's deals with local and (when a chain is given) on-chain amounts.
pub async fn deals(dir: &Path, chain: ChainArgs, json: bool) -> anyhow::Result<()> {
    let book = DealBook::load(dir)?;
    let client = match (&chain.deployment, chain.connect_readonly()) {
        (Some(_), Ok(c)) => Some(c),
        _ => None,
    };
    let mut rows = Vec::new();
    for d in &book.deals {
        let t = d.terms().map_err(|e| anyhow::anyhow!("deal {} has bad terms: {e}", d.id))?;
        let max = U256::from(t.maxAmount);
        let state = match &client {
            Some(c) => Some(c.deal_state(d.id).await?),
            None => None,
        };
        let redeemed = state.map(|s| s.redeemed);
        let rule_by = state.filter(|s| s.disputed).map(|s| format!(" (the arbiter rules by {})", s.release_at));
        let status = match state {
            None => "unknown (no chain given)",
            Some(s) if s.disputed => "disputed",
            Some(s) if s.refunded => "refunded",
            Some(_) => "open",
        };
        rows.push(serde_json::json!({
            "id": d.id,
            "root": d.root,
            "provider": t.provider,
            "escrowed": max.to_string(),
            "signed": d.paid.to_string(),
            // what the provider confirmed storing; less than signed on an open deal: the next
            // paid fetch of the dataset from that provider delivers the rest
            "confirmed": d.confirmed.to_string(),
            "redeemed": redeemed.map(|r| r.to_string()),
            "unredeemed_signed": redeemed.map(|r| U256::from(d.paid).saturating_sub(r).to_string()),
            "refundable_after_expiry": redeemed.map(|r| max.saturating_sub(r).to_string()),
            "verified_bytes": d.verified,
            "expiry": t.expiry,
            "status": status,
            "rule_by": state.filter(|s| s.disputed).map(|s| s.release_at),
        }));
        if !json {
            println!(
                "{}  {}  escrowed {}  signed {}  redeemed {}  verified {} B  expiry {}  {}{}",
                d.id,
                d.root.fmt_short(),
                format_bdc(max),
                format_bdc(U256::from(d.paid)),
                redeemed.map(format_bdc).unwrap_or_else(|| "?".into()),
                d.verified,
                t.expiry,
                status,
                rule_by.unwrap_or_default()
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        eprintln!("no deals in {}", dir.display());
    }
    Ok(())
}
