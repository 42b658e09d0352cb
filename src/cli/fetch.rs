//! `bdc fetch ...`

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bdc_core::{net::NetConfig, ticket::parse_ticket};
use bdc_fetcher::{FetchEvent, FetchOptions, Fetcher, FetcherConfig};
use clap::Args;

use crate::progress::{bytes_bar, human};

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Ticket printed by `bdc provider serve` / `bdc provider ticket` (any iroh-blobs ticket works).
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
}

pub async fn run(a: FetchArgs, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    let ticket = parse_ticket(&a.ticket)?;
    let cfg = FetcherConfig {
        data_dir: dir.to_path_buf(),
        net: NetConfig { bind: a.bind, relays: false },
        connect_timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let fetcher = Fetcher::open(cfg).await?;
    let pb = bytes_bar(0, "fetching", quiet);
    let opts = FetchOptions { raw_name: a.name };
    let res = fetcher
        .fetch(&ticket, &a.out, &opts, |ev| match ev {
            FetchEvent::Plan { total, local } => {
                pb.set_length(total);
                pb.set_position(local);
                pb.reset_eta();
            }
            FetchEvent::Progress { done, .. } => pb.set_position(done),
            FetchEvent::Connected { .. } | FetchEvent::Exported(_) => {}
        })
        .await;
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
