//! `bdc provider ...`

use std::path::{Path, PathBuf};

use anyhow::Context;
use bdc_core::{Hash, net::NetConfig, ticket::BlobTicket};
use bdc_provider::{
    Catalog, DatasetRecord, Provider, ProviderStore, PublishOptions, ServeConfig, ServeError, publish, serve::ServeInfo,
};
use clap::{Args, Subcommand};

use super::serve::ServeArgs;
use crate::progress::{bytes_bar, human};

#[derive(Debug, Subcommand)]
pub enum ProviderCmd {
    /// Publish a file or a folder as a dataset; prints its root.
    Publish(PublishArgs),
    /// Serve datasets over iroh until SIGINT/SIGTERM; prints a ticket per free dataset.
    Serve(Box<ServeArgs>),
    /// Print an example provider config file (every `serve` flag, commented) to start from.
    Config,
    /// Print the ticket of a published dataset (uses the address of the running `serve`).
    Ticket {
        /// Dataset root (hex or base32).
        root: Hash,
        /// Print a JSON record (root, name, free, ticket).
        #[arg(long)]
        json: bool,
    },
    /// Print the offer (`bdcoffer…`) of a dataset sold by the running `serve --sell`.
    Offer {
        /// Dataset root.
        root: Hash,
    },
    /// List published datasets.
    List {
        /// Print the catalog as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mirror a dataset another provider serves: fetch it verified (paying, with an offer or
    /// `0xROOT --market`, if it is sold) into this node's store; `serve` then serves it and
    /// `serve --sell` sells it like one's own. Each byte sold still pays the vendor's royalty
    /// (deals copy it from the registry).
    Mirror(Box<super::mirror::MirrorArgs>),
    /// After a sold dataset's vendor moved it to a new vendor (`transferVendor`): sell it for
    /// that vendor from now on. The provider pinned the vendor (and royalty) it first saw and
    /// refuses deals paying another; this replaces the pin, once the registry names `--vendor`.
    /// Run it while `serve` is stopped.
    Repin {
        /// Dataset root.
        root: Hash,
        /// The vendor you agree to sell for: it must be the one the registry names now.
        #[arg(long)]
        vendor: alloy::primitives::Address,
        /// The royalty ceiling to sell at (default: the royalty registered now).
        #[arg(long)]
        max_royalty_bps: Option<u16>,
        #[command(flatten)]
        chain: super::chain::ChainArgs,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// File or folder to publish.
    pub path: PathBuf,
    /// Dataset name (default: the file or folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve it to anyone on the free protocol.
    #[arg(long)]
    pub free: bool,
    /// Publish a single file as a raw blob (root == b3sum of the file) instead of a collection.
    #[arg(long)]
    pub raw: bool,
    /// Reference files in place instead of copying them into the store (they must not change).
    #[arg(long)]
    pub in_place: bool,
    /// What the dataset holds, for buyers and search (in the manifest).
    #[arg(long, default_value = "")]
    pub description: String,
    /// Its license, as the vendor states it (in the manifest).
    #[arg(long, default_value = "")]
    pub license: String,
    /// Tag for search (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Vendor's Ethereum address, recorded in the manifest.
    #[arg(long)]
    pub vendor: Option<String>,
    /// Print a JSON record instead of the root.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: ProviderCmd, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    match cmd {
        ProviderCmd::Publish(a) => publish_cmd(a, dir, quiet).await,
        ProviderCmd::Serve(a) => serve_cmd(a.with_config_file()?, dir).await,
        ProviderCmd::Config => {
            let path = dirs::config_dir().unwrap_or_default().join("bdc").join("provider.toml");
            print!("{}", super::serve::example_config(&path));
            Ok(())
        }
        ProviderCmd::Ticket { root, json } => ticket_cmd(root, json, dir),
        ProviderCmd::Repin { root, vendor, max_royalty_bps, chain } => {
            repin_cmd(root, vendor, max_royalty_bps, chain, dir).await
        }
        ProviderCmd::List { json } => list_cmd(json, dir),
        ProviderCmd::Mirror(a) => {
            let root = dir.parent().context("the provider's data dir has a parent (the bdc data dir)")?;
            super::mirror::run(*a, root, quiet).await
        }
        ProviderCmd::Offer { root } => {
            let path = dir.join("offers.json");
            let text = std::fs::read(&path)
                .with_context(|| format!("no offers in {}: start `bdc provider serve --sell` first", dir.display()))?;
            let offers: std::collections::BTreeMap<String, String> = serde_json::from_slice(&text)?;
            let offer = offers.get(&root.to_string()).ok_or(ServeError::UnknownDataset(root))?;
            println!("{offer}");
            Ok(())
        }
    }
}

async fn publish_cmd(a: PublishArgs, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    if !a.path.exists() {
        return Err(bdc_provider::PublishError::NotFound(a.path.clone()).into());
    }
    let mut store = ProviderStore::open(dir).await?;
    let opts = PublishOptions {
        name: a.name,
        description: a.description,
        license: a.license,
        tags: a.tags,
        vendor: a.vendor,
        free: a.free,
        raw: a.raw,
        in_place: a.in_place,
    };
    let pb = bytes_bar(0, "publishing", quiet);
    let res = publish(&mut store, &a.path, &opts, |p| {
        pb.set_length(p.total);
        pb.set_position(p.done);
    })
    .await;
    pb.finish_and_clear();
    store.shutdown().await;
    let rec = res?;
    print_record(&rec, a.json, "published", "")
}

/// A catalog record on stdout (its root, or the whole record as JSON), said on stderr as
/// `{verb} "name": N file(s), SIZE[, free]{tail}`.
pub(super) fn print_record(rec: &DatasetRecord, json: bool, verb: &str, tail: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rec)?);
    } else {
        let free = if rec.free { ", free" } else { "" };
        eprintln!("{verb} {:?}: {} file(s), {}{free}{tail}", rec.name, rec.files, human(rec.size));
        println!("{}", rec.root);
    }
    Ok(())
}

async fn serve_cmd(a: ServeArgs, dir: &Path) -> anyhow::Result<()> {
    let store = ProviderStore::open(dir).await?;
    let max_rate = a.net.max_rate.map(|s| s.0);
    let paid = if a.sell.sell {
        let cfg = a.sell.paid_config(max_rate)?;
        let (chain, signer) = a.chain.connect()?;
        if let Some(job_price) = a.jobs.job_price
            && job_price < cfg.price_per_byte
        {
            anyhow::bail!(
                "--job-price {job_price} buys less than one byte of data at {} per byte: a job's result on a sold \
                 dataset holds at most what the job price buys",
                cfg.price_per_byte
            );
        }
        Some((bdc_provider::PaidSetup { cfg, chain, address: signer.address() }, signer))
    } else {
        anyhow::ensure!(a.jobs.job_price.is_none(), "--job-price needs --sell and --jobs");
        None
    };
    let (paid, signer) = paid.map(|(p, s)| (Some(p), Some(s))).unwrap_or((None, None));
    let selling = paid.is_some();
    let jobs = if a.jobs.enabled {
        let signer = match &signer {
            Some(s) => s.clone(),
            None => a.chain.signer().context("--jobs signs results with the keystore's key")?,
        };
        let exe = std::env::current_exe().context("cannot find the bdc binary to run as the job worker")?;
        Some(a.jobs.jobs_config(exe, signer))
    } else {
        anyhow::ensure!(a.jobs.ballista_scheduler.is_none(), "--ballista-scheduler needs --jobs");
        anyhow::ensure!(a.jobs.job_price.is_none(), "--job-price needs --jobs: it is the price of a job");
        anyhow::ensure!(!a.jobs.container_jobs_on_sold, "--container-jobs-on-sold needs --jobs");
        None
    };
    anyhow::ensure!(a.listing.market.is_none() || selling, "--market announces sold datasets: it needs --sell");
    let cfg = ServeConfig {
        net: NetConfig { bind: a.bind(), relays: a.net.relays },
        max_rate,
        paid,
        jobs,
        metrics_addr: a.net.metrics_addr,
    };
    let provider = Provider::spawn(store, cfg).await?;
    eprintln!("serving as {} on {:?}", provider.addr().id, provider.bound_sockets());
    let free: Vec<DatasetRecord> = provider.store().catalog().iter().filter(|r| r.free).cloned().collect();
    if free.is_empty() && !a.sell.sell {
        eprintln!("no free datasets published (bdc provider publish <path> --free)");
    }
    for rec in free {
        println!("{}\t{}", rec.name, provider.ticket(rec.root)?);
    }
    if selling {
        let recs: Vec<DatasetRecord> = provider.store().catalog().iter().cloned().collect();
        let mut offers = std::collections::BTreeMap::new();
        for rec in recs {
            let offer = provider.offer(rec.root)?;
            println!("{}\t{}", rec.name, offer);
            offers.insert(rec.root.to_string(), offer.to_string());
        }
        let path = dir.join("offers.json");
        bdc_core::keys::write_private(&path, &serde_json::to_vec_pretty(&offers)?)?;
    }
    let provider = std::sync::Arc::new(provider);
    let announcer = match (a.listing.market, signer) {
        (Some(market), Some(signer)) => {
            let ann = bdc_provider::Announce {
                market,
                signer,
                region: a.listing.region.unwrap_or_else(|| "local".to_string()),
                capacity_mibps: a.listing.capacity_mibps.unwrap_or(100),
                ttl: std::time::Duration::from_secs(3600),
            };
            // the first announcement must work: a wrong URL or a refused listing is an error now
            let n = bdc_provider::announce_once(&provider, &ann).await?;
            eprintln!("announced {n} listing(s) to {}", ann.market);
            let p = provider.clone();
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ann.ttl / 2).await;
                    match bdc_provider::announce_once(&p, &ann).await {
                        Ok(n) => tracing::info!(n, "listings refreshed"),
                        Err(e) => tracing::warn!("cannot refresh listings: {e}"),
                    }
                }
            }))
        }
        _ => None,
    };
    super::wait_for_signal().await?;
    if let Some(t) = announcer {
        t.abort();
        let _ = t.await;
    }
    let provider = std::sync::Arc::try_unwrap(provider).map_err(|_| anyhow::anyhow!("provider still in use"))?;
    eprintln!("shutting down");
    provider.shutdown().await;
    let _ = std::fs::remove_file(dir.join("offers.json"));
    Ok(())
}

fn ticket_cmd(root: Hash, json: bool, dir: &Path) -> anyhow::Result<()> {
    let catalog = Catalog::load(dir)?;
    let rec = catalog.get(&root).ok_or(ServeError::UnknownDataset(root))?;
    let info = ServeInfo::read(dir)
        .with_context(|| format!("no running `bdc provider serve` found for {} (start it first)", dir.display()))?;
    let ticket = BlobTicket::new(info.addr, root, rec.format);
    if json {
        println!(
            "{}",
            serde_json::json!({ "root": root, "name": rec.name, "free": rec.free, "ticket": ticket.to_string() })
        );
    } else {
        if !rec.free {
            eprintln!("note: {root} is not free; the free protocol will refuse it");
        }
        println!("{ticket}");
    }
    Ok(())
}

fn list_cmd(json: bool, dir: &Path) -> anyhow::Result<()> {
    let catalog = Catalog::load(dir)?;
    let recs: Vec<&DatasetRecord> = catalog.iter().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&recs)?);
        return Ok(());
    }
    for r in recs {
        println!(
            "{}\t{}\t{}\t{} file(s)\t{}",
            r.root,
            r.name,
            human(r.size),
            r.files,
            if r.free { "free" } else { "paid" }
        );
    }
    Ok(())
}

/// `bdc provider repin`: replaces a sold dataset's pinned vendor with the vendor the registry
/// names now, when the registry's history shows that vendor was reached by transfers from the
/// pinned one (a squatter registered first is never reached that way).
async fn repin_cmd(
    root: Hash,
    vendor: alloy::primitives::Address,
    max_royalty_bps: Option<u16>,
    chain: super::chain::ChainArgs,
    dir: &Path,
) -> anyhow::Result<()> {
    use alloy::primitives::{Address, B256};
    use bdc_contracts::bindings::DatasetRegistry::DatasetRegistryEvents;
    let c = chain.connect_readonly()?;
    let key = B256::from(*root.as_bytes());
    let (registered, royalty) =
        c.registered(key).await?.with_context(|| format!("dataset {root} is not registered"))?;
    anyhow::ensure!(
        registered == vendor,
        "the registry names vendor {registered} for {root}, not {vendor}: nothing re-pinned"
    );
    let path = dir.join(bdc_provider::paid::ledger::LEDGER_FILE);
    anyhow::ensure!(path.exists(), "no receipt ledger at {}: this provider never sold", path.display());
    let ledger = bdc_provider::paid::ledger::Ledger::open(&path)
        .with_context(|| format!("cannot open {} (stop `bdc provider serve` first)", path.display()))?;
    let (pinned, pinned_max) = ledger.pinned_sale(root.as_bytes())?.with_context(|| {
        format!("nothing is pinned for {root} yet: `serve` pins its vendor on first sight; repin is for a transfer after that")
    })?;
    let pinned = Address::from(pinned);
    // the vendors the registry gave the root, in order: registration, then each transfer
    let head = c.head().await?;
    let mut history = Vec::new();
    for (_, ev) in c.registry_events(c.deployment().deploy_block, head).await? {
        match ev {
            DatasetRegistryEvents::DatasetRegistered(e) if e.root == key => history.push(e.vendor),
            DatasetRegistryEvents::VendorTransferred(e) if e.root == key => history.push(e.to),
            _ => {}
        }
    }
    let from = history.iter().position(|v| *v == pinned);
    let to = history.iter().rposition(|v| *v == vendor);
    anyhow::ensure!(
        matches!((from, to), (Some(f), Some(t)) if f < t),
        "the registry never transferred {root} from the pinned vendor {pinned} to {vendor}: nothing re-pinned"
    );
    // the ceiling never rises on its own: a new vendor that raised the royalty first gets the
    // old ceiling unless the operator names a higher one
    let ceiling = max_royalty_bps.unwrap_or(pinned_max.min(royalty));
    anyhow::ensure!(ceiling <= 10_000, "--max-royalty-bps {ceiling} is above 10,000 (100%)");
    ledger.repin_sale(root.as_bytes(), (vendor.into_array(), ceiling))?;
    println!(
        "re-pinned {root}: vendor {pinned} at up to {pinned_max} bps -> vendor {vendor} at up to {ceiling} bps (registered {royalty})"
    );
    if ceiling < royalty {
        eprintln!(
            "warning: the registered royalty {royalty} bps is above the ceiling {ceiling}: deals are refused until it is lowered (or repin with --max-royalty-bps)"
        );
    }
    Ok(())
}
