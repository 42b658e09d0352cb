//! `bdc fetch ...`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bdc_core::ticket::parse_ticket;
use bdc_fetcher::{FetchEvent, FetchOptions, Fetcher};
use clap::Args;

use crate::progress::{bytes_bar, human};

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A ticket (`blob…`, from `bdc provider serve` / `bdc provider ticket`; any iroh-blobs
    /// ticket works) or an offer (`bdcoffer…`, from `serve --sell` / `bdc provider offer`).
    pub ticket: String,
    /// Output directory; the dataset's files are written under it.
    #[arg(short, long)]
    pub out: PathBuf,
    /// File name for a dataset published as a raw blob (default: its root).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds to wait for the provider to answer.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Local UDP address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
    /// Pay for the download (needed for an offer, `bdcoffer…`): opens or reuses a deal.
    #[arg(long)]
    pub pay: bool,
    /// Refuse offers above this price, token base units per GiB.
    #[arg(long)]
    pub max_price_per_gib: Option<u128>,
    /// Sign a receipt every this many verified bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub receipt_every: u64,
    /// Escrow for a new deal, token base units (default: the full price of the dataset).
    #[arg(long)]
    pub deposit: Option<u128>,
    /// A new deal expires after this many seconds.
    #[arg(long, default_value_t = 86_400)]
    pub deal_secs: u64,
    /// Address that settles disputes on a new deal (required with --pay; there is no default
    /// arbiter).
    #[arg(long)]
    pub arbiter: Option<alloy::primitives::Address>,
    #[command(flatten)]
    pub chain: super::chain::ChainArgs,
}

pub async fn run(a: FetchArgs, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    if a.pay || a.ticket.trim().starts_with("bdcoffer") {
        return run_paid(a, dir, quiet).await;
    }
    let ticket = parse_ticket(&a.ticket)?;
    let cfg = super::fetcher_config(dir, a.bind, a.timeout);
    let fetcher = Fetcher::open(cfg).await?;
    let pb = bytes_bar(0, "fetching", quiet);
    let opts = FetchOptions { raw_name: a.name };
    let res = fetcher.fetch(&ticket, &a.out, &opts, |ev| show(&pb, ev)).await;
    pb.finish_and_clear();
    fetcher.shutdown().await;
    let report = res?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "verified {} from {} ({} fetched, {} already local) in {:.1}s",
            human(report.total_bytes),
            report.provider.fmt_short(),
            human(report.fetched_bytes),
            human(report.local_bytes),
            report.elapsed_ms as f64 / 1000.0
        );
        for f in &report.files {
            println!("{}", f.path.display());
        }
    }
    Ok(())
}

async fn run_paid(a: FetchArgs, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let offer: bdc_core::paid::Offer = a.ticket.parse()?;
    let (chain, signer) = a.chain.connect()?;
    let arbiter = a.arbiter.context("--arbiter is required to open a paid deal (who settles disputes)")?;
    let cfg = super::fetcher_config(dir, a.bind, a.timeout);
    let fetcher = Fetcher::open(cfg).await?;
    let mut pay = bdc_fetcher::PaidOptions::new(arbiter);
    pay.max_price_per_byte = a.max_price_per_gib.map(bdc_core::paid::price_per_byte);
    pay.receipt_every = a.receipt_every;
    pay.deposit = a.deposit;
    pay.deal_duration = Duration::from_secs(a.deal_secs);
    let wallet = bdc_fetcher::Wallet { chain, signer };
    let pb = bytes_bar(0, "buying", quiet);
    let res =
        fetcher.fetch_paid(&offer, &wallet, &a.out, &FetchOptions { raw_name: a.name }, &pay, |ev| show(&pb, ev)).await;
    pb.finish_and_clear();
    fetcher.shutdown().await;
    let r = res?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        eprintln!(
            "verified {} from {}; deal {}; signed {} for {} bytes",
            human(r.fetch.total_bytes),
            r.fetch.provider.fmt_short(),
            r.deal.map(|d| d.to_string()).unwrap_or_else(|| "none (already local)".into()),
            super::chain::format_bdc(alloy::primitives::U256::from(r.paid)),
            r.fetch.fetched_bytes
        );
        for f in &r.fetch.files {
            println!("{}", f.path.display());
        }
    }
    Ok(())
}

/// Drives the progress bar from fetch events.
fn show(pb: &indicatif::ProgressBar, ev: FetchEvent) {
    match ev {
        FetchEvent::Plan { total, local } => {
            pb.set_length(total);
            pb.set_position(local);
            pb.reset_eta();
        }
        FetchEvent::Progress { done, .. } => pb.set_position(done),
        FetchEvent::Connected { .. } | FetchEvent::Exported(_) => {}
    }
}
