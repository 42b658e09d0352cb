//! `bdc arbiter review`, `bdc arbiter resolve`: the arbiter's side of a dispute.

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use alloy::primitives::{B256, U256};
use anyhow::Context;
use bdc_core::ticket::{BlobTicket, parse_ticket};
use bdc_fetcher::{FetchError, FetchEvent, FetchOptions, Fetcher};
use clap::{Subcommand, ValueEnum};

use super::chain::{ChainArgs, format_bdc};
use crate::review::{ReviewInput, Ruling, favoured, open_evidence, rerun::RerunLimits, review};

#[derive(Debug, Subcommand)]
pub enum ArbiterCmd {
    /// Review a disputed deal: check the buyer's evidence against the hash it committed on
    /// chain, then check its claim on a verified copy of the dataset (a SQL result is re-run
    /// and compared; a manifest's claims are checked file by file). Prints the ruling it
    /// supports and why; nothing is sent to the chain.
    ///
    /// The dataset comes from this data dir's fetcher store: a sold dataset must be bought
    /// first (`bdc fetch <offer> --pay`, same --data-dir); a free one is fetched.
    Review {
        /// The disputed deal id (0x…).
        id: B256,
        /// The evidence document: a file the buyer gave you, or a ticket of it as a raw blob
        /// (`bdc provider publish --raw`), fetched verified.
        #[arg(long, value_name = "PATH|TICKET")]
        evidence: String,
        /// A ticket (or `bdcoffer…`) of the deal's dataset (default: the one in the evidence).
        #[arg(long, value_name = "TICKET")]
        dataset: Option<String>,
        /// The buyer's copy of the signed result (checked against the signed root): needed to
        /// compare rows when the re-run's bytes differ.
        #[arg(long, value_name = "PATH")]
        result_file: Option<std::path::PathBuf>,
        /// Print the review as JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for a provider when something must be fetched (e.g. 10s).
        #[arg(long, default_value = "10s", value_name = "DURATION")]
        timeout: super::units::Span,
        /// Wall-time limit of each re-run of a SQL job, seconds.
        #[arg(long, default_value_t = 600)]
        rerun_secs: u64,
        /// DataFusion's memory pool for a re-run, MiB (it spills into the review's directory past it).
        #[arg(long, default_value_t = 2048)]
        rerun_memory_mib: usize,
        /// Largest result file a re-run may write, MiB.
        #[arg(long, default_value_t = 1024)]
        rerun_max_result_mib: u64,
        /// Local UDP address to bind.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Rule on a disputed deal, as its arbiter, before the deadline: the frozen pot (or
    /// --to-buyer of it) goes back to the buyer or on to provider and vendor, and the bond to
    /// the side ruled for.
    Resolve {
        /// The disputed deal id (0x…).
        id: B256,
        /// Whom the ruling is for.
        #[arg(long = "for", value_enum)]
        side: Side,
        /// Token base units of the frozen pot returned to the buyer (default: all of it when
        /// ruling for the buyer, none when ruling for the provider).
        #[arg(long)]
        to_buyer: Option<U256>,
        /// Print the ruling as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    Buyer,
    Provider,
}

pub async fn run(cmd: ArbiterCmd, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    match cmd {
        ArbiterCmd::Review {
            id,
            evidence,
            dataset,
            result_file,
            json,
            timeout,
            rerun_secs,
            rerun_memory_mib,
            rerun_max_result_mib,
            bind,
            chain,
        } => {
            let c = chain.connect_readonly()?;
            let deal = c.find_deal(id).await?.with_context(|| format!("no deal {id} on this escrow"))?;
            let state = c.deal_state(id).await?;
            let dispute = c.find_dispute(id).await?.with_context(|| format!("deal {id} was never disputed"))?;
            anyhow::ensure!(
                dispute.evidence != B256::ZERO,
                "the buyer committed no evidence with its dispute of deal {id}: there is nothing to review"
            );
            // a fresh directory per review (removed after it): reviews of the same deal do not
            // clobber each other, and inputs kept from an earlier one are never deleted
            let base = dir.join("arbiter");
            std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
            let work = tempfile::Builder::new()
                .prefix(&format!("{id:#x}-"))
                .tempdir_in(&base)
                .with_context(|| format!("cannot create a review directory in {}", base.display()))?;
            let work = work.path();
            let limits = RerunLimits {
                worker: std::env::current_exe().context("cannot find the bdc binary for the re-run")?,
                wall_time: std::time::Duration::from_secs(rerun_secs.max(1)),
                memory_pool: rerun_memory_mib.max(16) << 20,
                max_result_bytes: rerun_max_result_mib.max(1) << 20,
            };
            let fetcher = Fetcher::open(super::fetcher_config(&dir.join("fetcher"), bind, timeout)).await?;
            let res = async {
                let bytes = load_evidence(&fetcher, &evidence, dispute.evidence, work, quiet).await?;
                let ev = open_evidence(&bytes, dispute.evidence, id)?;
                let ticket = dataset.or(ev.dataset_ticket.clone()).context(
                    "the evidence names no dataset ticket: give --dataset TICKET (of the deal's dataset)",
                )?;
                let ticket = dataset_ticket(&ticket)?;
                anyhow::ensure!(
                    ticket.hash().as_bytes() == &deal.terms.datasetRoot.0,
                    "the --dataset ticket is for {}, the deal for {}",
                    ticket.hash(),
                    deal.terms.datasetRoot
                );
                let data = work.join("data");
                let report = fetcher
                    .fetch(&ticket, &data, &FetchOptions::default(), |_| {})
                    .await
                    .map_err(|e| match e {
                        FetchError::Refused { .. } => anyhow::anyhow!(
                            "{e}: buy the dataset into this data dir first (`bdc fetch <offer> --pay`), then review again"
                        ),
                        e => e.into(),
                    })?;
                let files: Vec<String> = report.files.iter().map(|f| f.name.clone()).collect();
                let input = ReviewInput {
                    deal: id,
                    terms: &deal.terms,
                    evidence: &ev,
                    data: &data,
                    files: &files,
                    result_file: result_file.as_deref(),
                    work,
                    rerun: &limits,
                };
                anyhow::Ok((review(&input).await?, ev))
            }
            .await;
            fetcher.shutdown().await;
            let (rev, ev) = res?;
            let now = c.chain_time().await?;
            // the pot now: redeems after the dispute joined it
            let pot = state.redeemed.saturating_sub(state.paid_out);
            if json {
                let out = serde_json::json!({
                    "deal": id,
                    "disputed": state.disputed,
                    "frozen": pot.to_string(),
                    "bond": dispute.bond.to_string(),
                    "rule_by": dispute.rule_by,
                    "evidence": dispute.evidence,
                    "note": ev.note,
                    "review": rev,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let who = match favoured(rev.ruling, &deal.terms) {
                    Some(a) => format!("for the {:?} {a}", rev.ruling).to_lowercase(),
                    None => "inconclusive".into(),
                };
                println!("deal {id}: {} claim, review {who}", rev.claim.replace('_', " "));
                // findings quote the query, rows and errors, the note is the buyer's: no control
                // characters reach the terminal (a newline could fake a line of this review)
                for f in &rev.findings {
                    println!("  - {}", printable(f));
                }
                if !ev.note.is_empty() {
                    println!("  buyer's note: {}", printable(&ev.note));
                }
                let left = dispute.rule_by.saturating_sub(now);
                let side = match rev.ruling {
                    Ruling::Buyer => Some("buyer"),
                    Ruling::Provider => Some("provider"),
                    Ruling::Inconclusive => None,
                };
                match (state.disputed, side) {
                    (false, _) => println!("the dispute is settled already"),
                    (true, Some(side)) => println!(
                        "pot {} and bond {}; rule by {} ({left} s left): bdc arbiter resolve {id} --for {side}",
                        format_bdc(pot),
                        format_bdc(dispute.bond),
                        dispute.rule_by,
                    ),
                    (true, None) => println!(
                        "pot {} and bond {}; rule by {} ({left} s left); the review supports no ruling (without one, the default pays the provider)",
                        format_bdc(pot),
                        format_bdc(dispute.bond),
                        dispute.rule_by,
                    ),
                }
            }
        }
        ArbiterCmd::Resolve { id, side, to_buyer, json, chain } => {
            let (c, signer) = chain.connect()?;
            let deal = c.find_deal(id).await?.with_context(|| format!("no deal {id} on this escrow"))?;
            let t = &deal.terms;
            anyhow::ensure!(
                signer.address() == t.arbiter,
                "{} is not the arbiter of deal {id} ({} is): only it can rule",
                signer.address(),
                t.arbiter
            );
            let state = c.deal_state(id).await?;
            anyhow::ensure!(state.disputed, "deal {id} is not disputed: there is nothing to rule on");
            let now = c.chain_time().await?;
            anyhow::ensure!(
                now < state.release_at,
                "the ruling period of deal {id} ended at {} (now {now}): anyone may apply the default with `bdc deal settle`",
                state.release_at
            );
            let pending = state.redeemed.saturating_sub(state.paid_out);
            if let Some(v) = to_buyer {
                anyhow::ensure!(
                    v <= pending,
                    "--to-buyer {} is more than the frozen pot {}",
                    format_bdc(v),
                    format_bdc(pending)
                );
            }
            // for the buyer by default: the whole pot as it stands when the ruling lands (a
            // redeem may join it before then), not the amount read here
            let back = match (side, to_buyer) {
                (_, Some(v)) => v,
                (Side::Buyer, None) => U256::MAX,
                (Side::Provider, None) => U256::ZERO,
            };
            c.resolve(t, back, side == Side::Buyer).await?;
            let after = c.deal_state(id).await?;
            let settled = after.paid_out.saturating_sub(state.paid_out);
            let back = if back == U256::MAX { settled } else { back };
            let for_buyer = side == Side::Buyer;
            if json {
                let doc = serde_json::json!({
                    "deal": id, "for": if for_buyer { "buyer" } else { "provider" },
                    "to_buyer": back.to_string(), "to_provider_and_vendor": settled.saturating_sub(back).to_string(),
                });
                println!("{doc}");
                return Ok(());
            }
            println!(
                "ruled deal {id} for the {}: {} back to the buyer {}, {} to the provider {} and vendor, the bond to the {}",
                if side == Side::Buyer { "buyer" } else { "provider" },
                format_bdc(back),
                t.buyer,
                format_bdc(settled.saturating_sub(back)),
                t.provider,
                if side == Side::Buyer { "buyer" } else { "provider" },
            );
        }
    }
    Ok(())
}

/// A dataset ticket, or the ticket inside an offer.
fn dataset_ticket(s: &str) -> anyhow::Result<BlobTicket> {
    let s = s.trim();
    if s.starts_with("bdcoffer") {
        let offer: bdc_core::paid::Offer = s.parse()?;
        return Ok(parse_ticket(&offer.ticket)?);
    }
    Ok(parse_ticket(s)?)
}

/// The evidence bytes: a file, or a raw blob fetched (verified) from a ticket of the hash the
/// buyer committed to, stopped as soon as its size shows it is over the limit.
async fn load_evidence(
    fetcher: &Fetcher,
    src: &str,
    committed: B256,
    work: &Path,
    quiet: bool,
) -> anyhow::Result<Vec<u8>> {
    let limit = bdc_core::evidence::MAX_EVIDENCE_BYTES as u64;
    let path = if Path::new(src).exists() || !src.starts_with("blob") {
        std::path::PathBuf::from(src)
    } else {
        let ticket = parse_ticket(src)?;
        anyhow::ensure!(
            ticket.hash().as_bytes() == &committed.0 && ticket.format() == bdc_core::BlobFormat::Raw,
            "the evidence ticket is for {} ({:?}), not for the raw blob {committed} the buyer committed to",
            ticket.hash(),
            ticket.format()
        );
        let opts = FetchOptions { raw_name: Some("evidence.json".into()), ..Default::default() };
        if !quiet {
            eprintln!("fetching the evidence {}", ticket.hash());
        }
        // the size is verified before any content is asked for: past the limit, stop there
        let size = AtomicU64::new(0);
        let over = tokio::sync::Notify::new();
        let out = work.join("evidence");
        let fetch = fetcher.fetch(&ticket, &out, &opts, |ev| {
            if let FetchEvent::Plan { total, .. } = ev {
                size.store(total, Ordering::Relaxed);
                if total > limit {
                    over.notify_one();
                }
            }
        });
        let rep = tokio::select! {
            biased;
            () = over.notified() => anyhow::bail!(
                "the evidence blob has {} bytes, more than the {limit}-byte limit: not fetched",
                size.load(Ordering::Relaxed)
            ),
            r = fetch => r?,
        };
        rep.files.first().map(|f| f.path.clone()).context("the evidence ticket held no file")?
    };
    let meta = std::fs::metadata(&path).with_context(|| format!("cannot read the evidence {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "the evidence {} is not a regular file", path.display());
    let mut bytes = Vec::new();
    let file = std::fs::File::open(&path).with_context(|| format!("cannot read the evidence {}", path.display()))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
        .with_context(|| format!("cannot read the evidence {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= limit,
        "the evidence {} has more than the {limit}-byte limit",
        path.display()
    );
    Ok(bytes)
}

/// `s` with control characters shown escaped.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}
