//! `bdc fetch ...`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use alloy::{primitives::B256, signers::local::PrivateKeySigner};
use anyhow::Context;
use bdc_contracts::{Deployment, listing::market_domain};
use bdc_core::ticket::parse_ticket;
use bdc_fetcher::{Export, FetchEvent, FetchOptions, Fetcher};
use bdc_market_api::{MarketClient, SignedReport};
use clap::Args;

use crate::progress::{bytes_bar, human};

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub src: SourceArgs,
    /// Output directory; the dataset's files are written under it.
    #[arg(short, long)]
    pub out: PathBuf,
    /// File name for a dataset published as a raw blob (default: its root; with --range,
    /// `<root>.<start>-<end>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Only the files of a collection whose names match this pattern (`*.csv`, `2026-*/**`);
    /// repeatable. Only their bytes are requested, verified and paid for.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Only bytes START..END of a raw blob (`0..1MiB`): the 16 KiB groups covering them are
    /// requested, verified and paid for, and exactly those bytes are written.
    #[arg(long, value_name = "START..END", conflicts_with = "include")]
    pub range: Option<super::units::ByteRange>,
    /// Move the verified files out of a staging store instead of copying them out of the
    /// fetcher's store: no second full copy, but the store keeps nothing, so fetching the
    /// dataset again downloads (and, paid, buys) it again.
    #[arg(long = "move")]
    pub move_out: bool,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

/// Where a dataset comes from and how it is paid for: what `bdc fetch` and
/// `bdc provider mirror` share.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A ticket (`blob…`, from `bdc provider serve` / `bdc provider ticket`; any iroh-blobs
    /// ticket works), an offer (`bdcoffer…`, from `serve --sell` / `bdc provider offer`), or a
    /// dataset root (0x…, with --market: the market picks the provider and the fetch is paid).
    /// Several tickets or offers of the same dataset: tried in turn while a provider cannot
    /// serve (a duplicate provider is tried once).
    #[arg(required = true, value_name = "TICKET")]
    pub tickets: Vec<String>,
    /// Fetch from up to N providers at once (of the tickets or offers given, or the market's
    /// best offers): each piece of the dataset comes from one of them, verified; one that
    /// fails, stalls or lies is dropped and the others take its pieces. Paid: a deal with each,
    /// paid for exactly what it delivered.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub sources: u16,
    /// A market (`bdc market serve`): picks the provider of a dataset root, and receives a
    /// throughput report signed with the buyer's key after a paid download.
    #[arg(long, env = "BDC_MARKET")]
    pub market: Option<String>,
    #[command(flatten)]
    pub matching: super::pick::MatchArgs,
    /// How long to wait for the provider to answer (e.g. 10s).
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub timeout: super::units::Span,
    /// Local UDP address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// Pay for the download (needed for an offer, `bdcoffer…`): opens or reuses a deal.
    #[arg(long)]
    pub pay: bool,
    /// Refuse offers above this price, token base units per GiB (default 1,000 BDC).
    #[arg(long, default_value_t = bdc_fetcher::paid::DEFAULT_MAX_PRICE_PER_GIB)]
    pub max_price_per_gib: u128,
    /// Refuse to open a deal escrowing more than this, token base units (default 1,000 BDC):
    /// the offer's size is the provider's (or the market's) word. --deposit overrides it.
    #[arg(long, default_value_t = bdc_fetcher::paid::DEFAULT_MAX_DEPOSIT)]
    pub max_deposit: u128,
    /// Sign a receipt each time this much more has verified (e.g. 1MiB).
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub receipt_every: super::units::Size,
    /// Escrow for a new deal, token base units (default: the full price of the dataset).
    #[arg(long)]
    pub deposit: Option<u128>,
    /// A new deal expires after this long (e.g. 24h).
    #[arg(long, default_value = "24h", value_name = "DURATION", alias = "deal-secs")]
    pub deal_duration: super::units::Span,
    /// Address that settles disputes on a new deal (required with --pay; there is no default
    /// arbiter). It must be one the provider's offer accepts, or the deal is not opened.
    #[arg(long)]
    pub arbiter: Option<alloy::primitives::Address>,
    #[command(flatten)]
    pub chain: super::chain::ChainArgs,
}

/// What a fetch got.
pub(crate) struct Fetched {
    pub root: bdc_core::Hash,
    pub format: bdc_core::BlobFormat,
    /// Bought (an offer), rather than served free (a ticket).
    pub paid: bool,
}

/// Where a fetch puts the dataset, and how it reports.
pub(crate) struct Target {
    pub out: PathBuf,
    pub opts: FetchOptions,
    pub json: bool,
    /// Fetch into this store (a mirror's provider store) instead of the fetcher's own.
    pub store: Option<iroh_blobs::store::fs::FsStore>,
}

pub async fn run(a: FetchArgs, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    let opts = fetch_options(&a)?;
    let to = Target { out: a.out, opts, json: a.json, store: None };
    fetch(a.src, to, dir, quiet).await.map(|_| ())
}

/// Fetches the dataset `src` names into `to`, free or paid, moving to the next provider while
/// one cannot serve; prints what it did.
pub(crate) async fn fetch(src: SourceArgs, to: Target, dir: &Path, quiet: bool) -> anyhow::Result<Fetched> {
    let first = src.tickets[0].trim();
    if let Ok(root) = first.parse::<B256>() {
        anyhow::ensure!(src.tickets.len() == 1, "a dataset root comes alone: the market picks its providers");
        return run_from_market(src, to, root, dir, quiet).await;
    }
    if src.pay || first.starts_with("bdcoffer") {
        let offers =
            src.tickets.iter().map(|t| t.trim().parse::<bdc_core::paid::Offer>()).collect::<Result<Vec<_>, _>>()?;
        let tickets = offers.iter().map(|o| parse_ticket(&o.ticket)).collect::<Result<Vec<_>, _>>()?;
        let keep = one_per_provider(&tickets)?;
        let offers = offers.into_iter().zip(keep).filter(|(_, k)| *k).map(|(o, _)| (o, None)).collect();
        return run_paid(src, to, offers, dir, quiet).await;
    }
    let tickets = src.tickets.iter().map(|t| parse_ticket(t)).collect::<Result<Vec<_>, _>>()?;
    let keep = one_per_provider(&tickets)?;
    let tickets: Vec<_> = tickets.into_iter().zip(keep).filter(|(_, k)| *k).map(|(t, _)| t).collect();
    let fetcher = open_fetcher(super::fetcher_config(dir, src.bind, src.timeout), &to).await?;
    // --sources N: N providers at a time, the next N when all of them failed
    let groups: Vec<Vec<_>> = tickets.chunks(usize::from(src.sources)).map(<[_]>::to_vec).collect();
    let res = super::pick::first_that_serves(
        &groups,
        "ticket",
        |g| (providers(g.iter().map(|t| t.addr().id.fmt_short().to_string())), None),
        bdc_fetcher::FetchError::another_provider_may_serve,
        bdc_fetcher::FetchError::BadRequest(bdc_fetcher::BadRequest::NoProvider),
        |group| {
            let (fetcher, opts, out) = (&fetcher, &to.opts, &to.out);
            async move {
                let pb = bytes_bar(0, "fetching", quiet);
                let get = async |f: &Fetcher| f.fetch_from(&group, out, opts, |ev| show(&pb, ev)).await;
                let res = match opts.export {
                    Export::Move => fetcher.staged(group[0].hash(), get).await,
                    _ => get(fetcher).await,
                };
                pb.finish_and_clear();
                res
            }
        },
    )
    .await;
    fetcher.shutdown().await;
    let report = res?;
    if to.json {
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
        print_sources(&report.sources, |_| None);
        for f in &report.files {
            println!("{}", f.path.display());
        }
    }
    Ok(Fetched { root: report.root, format: tickets[0].format(), paid: false })
}

/// "provider a" or "providers a, b".
fn providers(names: impl Iterator<Item = String>) -> String {
    let names: Vec<String> = names.collect();
    match names.len() {
        1 => format!("provider {}", names[0]),
        _ => format!("providers {}", names.join(", ")),
    }
}

/// A multi-source fetch's part of each provider, on stderr (`paid`: what its deal signed).
fn print_sources(sources: &[bdc_fetcher::SourceReport], paid: impl Fn(&iroh::EndpointId) -> Option<String>) {
    for s in sources {
        let signed = paid(&s.provider).map(|p| format!(", signed {p}")).unwrap_or_default();
        match &s.dropped {
            None => eprintln!("  {}: {} in {} pieces{signed}", s.provider.fmt_short(), human(s.bytes), s.pieces),
            Some(why) => eprintln!(
                "  {}: {} in {} pieces{signed}, dropped: {why}",
                s.provider.fmt_short(),
                human(s.bytes),
                s.pieces
            ),
        }
    }
}

/// The fetcher `to` wants: its own store, or the one it lends.
async fn open_fetcher(cfg: bdc_fetcher::FetcherConfig, to: &Target) -> Result<Fetcher, bdc_fetcher::FetchError> {
    match &to.store {
        Some(store) => Fetcher::with_store(cfg, store.clone()).await,
        None => Fetcher::open(cfg).await,
    }
}

/// Which of `tickets` to try: all must name the same dataset in the same format; a provider
/// (node) named twice is tried once, with a warning.
fn one_per_provider(tickets: &[bdc_core::ticket::BlobTicket]) -> anyhow::Result<Vec<bool>> {
    let mut seen = std::collections::HashSet::new();
    let mut keep = Vec::with_capacity(tickets.len());
    for t in tickets {
        if t.hash() != tickets[0].hash() {
            return Err(bdc_fetcher::BadRequest::DifferentDatasets(tickets[0].hash(), t.hash()).into());
        }
        if t.format() != tickets[0].format() {
            return Err(bdc_fetcher::BadRequest::DifferentFormats(t.hash()).into());
        }
        let new = seen.insert(t.addr().id);
        if !new {
            eprintln!("warning: provider {} is given twice: trying it once", t.addr().id.fmt_short());
        }
        keep.push(new);
    }
    Ok(keep)
}

/// What of the dataset to fetch: all of it, `--include` files, or a `--range` of bytes.
fn fetch_options(a: &FetchArgs) -> anyhow::Result<FetchOptions> {
    let select = match &a.range {
        Some(r) => bdc_fetcher::Select::range(r.0.clone())?,
        None => bdc_fetcher::Select::files(&a.include)?,
    };
    let export = if a.move_out { bdc_fetcher::Export::Move } else { bdc_fetcher::Export::Copy };
    Ok(FetchOptions { raw_name: a.name.clone(), select, export })
}

/// `bdc fetch <root> --market URL`: the market ranks the dataset's offers; the buyer checks the
/// top offer's listing signature itself (the market is trusted to rank, not to speak for the
/// provider), then buys from it.
async fn run_from_market(src: SourceArgs, to: Target, root: B256, dir: &Path, quiet: bool) -> anyhow::Result<Fetched> {
    let market = src.market.clone().context("a dataset root needs --market URL (or BDC_MARKET) to find a provider")?;
    let chain = src.chain.connect_readonly()?;
    let d = chain.deployment();
    let offers = super::pick::offers(&market, root, &src.matching, 5.max(usize::from(src.sources)), d).await?;
    let n = offers.len();
    let (mut seen, mut seen_nodes) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    let offers = offers
        .into_iter()
        // one try per provider, and per node (a listing can name another's node id)
        .filter(|o| seen.insert(o.provider) & seen_nodes.insert(o.ticket.addr().id))
        .map(|o| {
            let offer = bdc_core::paid::Offer {
                ticket: o.ticket.to_string(),
                provider: o.provider.into_array(),
                price_per_byte: o.price_per_byte,
                window: o.listing.window,
                size: o.size,
                chain_id: d.chain_id,
                escrow: d.escrow.into_array(),
                arbiters: o.arbiters.iter().map(|a| a.into_array()).collect(),
                // listings do not carry the margin: assume the default
                expiry_margin: bdc_core::paid::DEFAULT_EXPIRY_MARGIN_SECS,
            };
            (offer, Some(o.picked(n)))
        })
        .collect();
    run_paid(src, to, offers, dir, quiet).await
}

/// Posts a signed throughput report for `deal` to the market; a failure is a warning.
async fn report_throughput(market: &str, signer: &PrivateKeySigner, d: &Deployment, deal: B256, bytes: u64, ms: u64) {
    let issued = bdc_core::time::unix_now();
    let domain = market_domain(d.chain_id, d.registry);
    let res = async {
        let rep = SignedReport::sign(signer, &domain, deal, bytes, ms.max(1), issued)?;
        // the client asks again while the market's indexer has not seen the deal yet (422)
        anyhow::Ok(MarketClient::new(market)?.post_report(&rep).await?.mibps)
    }
    .await;
    match res {
        Ok(mibps) => eprintln!("reported {mibps:.1} MiB/s for deal {deal} to the market"),
        Err(e) => eprintln!("warning: the market did not take the throughput report: {e:#}"),
    }
}

/// Posts a signed fault report to the market for each deal whose provider sent bytes that did
/// not verify (`(deal, verified bytes before)`); a failure is a warning.
async fn report_faults(market: &str, signer: &PrivateKeySigner, d: &Deployment, deals: &[(B256, u64)]) {
    let domain = market_domain(d.chain_id, d.registry);
    for (deal, verified) in deals {
        let res = async {
            let f = bdc_market_api::SignedFault::sign(signer, &domain, *deal, *verified, bdc_core::time::unix_now())?;
            anyhow::Ok(MarketClient::new(market)?.post_fault(&f).await?)
        }
        .await;
        match res {
            Ok(_) => eprintln!("reported to the market: deal {deal}'s provider sent bytes that did not verify"),
            Err(e) => eprintln!("warning: the market did not take the fault report for deal {deal}: {e:#}"),
        }
    }
}

/// Buys the dataset from the first of `offers` that serves it: a provider that cannot be
/// reached, refuses, stalls, breaks off or lies is left for the next offer, said on stderr
/// (what it verified stays in the store, so the next one sends only the rest; a deal opened
/// with it keeps what it paid, and its unspent escrow returns at expiry: `bdc deals refund`).
async fn run_paid(
    a: SourceArgs,
    to: Target,
    offers: Vec<(bdc_core::paid::Offer, Option<String>)>,
    dir: &Path,
    quiet: bool,
) -> anyhow::Result<Fetched> {
    let (chain, signer) = a.chain.connect()?;
    let arbiter = a.arbiter.context("--arbiter is required to open a paid deal (who settles disputes)")?;
    let (root, format) = match offers.first() {
        Some((o, _)) => parse_ticket(&o.ticket).map(|t| (t.hash(), t.format()))?,
        None => return Err(bdc_fetcher::FetchError::BadRequest(bdc_fetcher::BadRequest::NoProvider).into()),
    };
    let fetcher = open_fetcher(super::fetcher_config(dir, a.bind, a.timeout), &to).await?;
    let mut pay = bdc_fetcher::PaidOptions::new(vec![arbiter]);
    pay.max_price_per_byte = Some(bdc_core::paid::price_per_byte(a.max_price_per_gib));
    pay.max_deposit = a.max_deposit;
    pay.receipt_every = a.receipt_every.0;
    pay.deposit = a.deposit;
    pay.deal_duration = a.deal_duration.0;
    let wallet = bdc_fetcher::Wallet { chain, signer };
    // --sources N: N providers at a time, the next N when all of them failed
    let groups: Vec<Vec<_>> = offers.chunks(usize::from(a.sources)).map(<[_]>::to_vec).collect();
    let res = super::pick::first_that_serves(
        &groups,
        "offer",
        |g| {
            let who = providers(g.iter().map(|(o, _)| format!("{:#x}", alloy::primitives::Address::from(o.provider))));
            let picked: Vec<String> = g.iter().filter_map(|(_, p)| p.clone()).collect();
            (who, (!picked.is_empty()).then(|| picked.join("\n")))
        },
        bdc_fetcher::FetchError::another_provider_may_serve,
        bdc_fetcher::FetchError::BadRequest(bdc_fetcher::BadRequest::NoProvider),
        |group| {
            let (fetcher, wallet, opts, pay, out) = (&fetcher, &wallet, &to.opts, &pay, &to.out);
            let offers: Vec<_> = group.into_iter().map(|(o, _)| o).collect();
            async move {
                let pb = bytes_bar(0, "buying", quiet);
                let buy =
                    async |f: &Fetcher| f.fetch_paid_from(&offers, wallet, out, opts, pay, |ev| show(&pb, ev)).await;
                let res = match opts.export {
                    Export::Move => fetcher.staged(root, buy).await,
                    _ => buy(fetcher).await,
                };
                pb.finish_and_clear();
                res
            }
        },
    )
    .await;
    fetcher.shutdown().await;
    let r = res?;
    // providers that sent bytes that did not verify (dropped, never paid for them): the market
    // hears it from the buyer that paid them
    let lied = r.faulty_deals();
    if let Some(market) = &a.market
        && !lied.is_empty()
    {
        report_faults(market, &wallet.signer, wallet.chain.deployment(), &lied).await;
    }
    // each provider's throughput is what it delivered over the download's time (several at
    // once: each its own bytes, not the whole dataset's)
    let measured: Vec<(B256, u64)> = match (r.deal, r.deals.is_empty()) {
        (Some(deal), true) => vec![(deal, r.fetch.fetched_bytes)],
        (_, false) => r
            .deals
            .iter()
            .filter_map(|d| r.fetch.sources.iter().find(|s| s.provider == d.node).map(|s| (d.deal, s.bytes)))
            .collect(),
        (None, true) => Vec::new(),
    };
    if let Some(market) = &a.market {
        for (deal, bytes) in measured.into_iter().filter(|(_, b)| *b > 0) {
            let (d, ms) = (wallet.chain.deployment(), r.fetch.elapsed_ms);
            report_throughput(market, &wallet.signer, d, deal, bytes, ms).await;
        }
    }
    if to.json {
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
        let signed = |node: &iroh::EndpointId| {
            let deal = r.deals.iter().find(|d| d.node == *node)?;
            Some(super::chain::format_bdc(alloy::primitives::U256::from(deal.paid)))
        };
        print_sources(&r.fetch.sources, signed);
        for f in &r.fetch.files {
            println!("{}", f.path.display());
        }
    }
    Ok(Fetched { root: r.fetch.root, format, paid: true })
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
        FetchEvent::Dropped { provider, reason } => {
            pb.suspend(|| eprintln!("warning: dropped source {}: {reason}", provider.fmt_short()))
        }
        FetchEvent::Connected { .. } | FetchEvent::Exported(_) => {}
    }
}
