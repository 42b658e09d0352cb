//! Argument parsing and dispatch.

mod arbiter;
mod chain;
mod compute;
mod deals;
mod devnet;
mod fetch;
mod market;
mod mirror;
mod pick;
mod provider;
mod serve;
mod units;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// bdc: a verifiable data-set marketplace and content-delivery layer.
///
/// Vendors publish datasets as BLAKE3-verified collections; providers serve them over iroh
/// (QUIC); buyers fetch them, verifying every 16 KiB chunk group as it arrives.
#[derive(Debug, Parser)]
#[command(name = "bdc", version, about, long_about = None)]
pub struct Cli {
    /// Root of this node's state: provider state lives in <data-dir>/provider, fetcher state in
    /// <data-dir>/fetcher. Defaults to the user's data dir (e.g. ~/.local/share/bdc).
    #[arg(long, global = true, env = "BDC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// More log on stderr: -v lifecycle events (info), -vv each request (debug), -vvv each
    /// chunk group (trace). BDC_LOG=<filter> overrides (tracing's EnvFilter syntax).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars, and only errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish and serve datasets (the vendor / host side).
    #[command(subcommand)]
    Provider(provider::ProviderCmd),
    /// Download a dataset from a ticket, verifying every chunk group, and export its files.
    Fetch(fetch::FetchArgs),
    /// The buyer's deals: escrowed, signed, redeemed, refundable.
    Deals {
        #[command(flatten)]
        chain: chain::ChainArgs,
        /// Print the deals as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a SQL query next to the data at the dataset's provider; fetch the verified, signed
    /// result.
    Compute(compute::ComputeArgs),
    /// What runs inside a job's sandbox (started by the provider, not by hand).
    #[command(subcommand, hide = true)]
    Worker(compute::WorkerCmd),
    /// Refund, dispute or withdraw a deal.
    #[command(subcommand)]
    Deal(deals::DealCmd),
    /// Review a disputed deal's evidence on a verified copy of the data, and rule on it.
    #[command(subcommand)]
    Arbiter(arbiter::ArbiterCmd),
    /// Register datasets on chain (the vendor side).
    #[command(subcommand)]
    Dataset(chain::DatasetCmd),
    /// Ethereum keystores.
    #[command(subcommand)]
    Key(chain::KeyCmd),
    /// BDC balances of addresses.
    Balance {
        /// Addresses (0x…) whose BDC balance to print.
        addresses: Vec<alloy::primitives::Address>,
        #[command(flatten)]
        chain: chain::ChainArgs,
        /// Print the balances as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a local chain (anvil) with bdc's contracts deployed and accounts funded, until Ctrl-C.
    Devnet(devnet::DevnetArgs),
    /// The market: chain index, listings, search, matchmaking, HTTP API and web pages.
    #[command(subcommand)]
    Market(market::MarketCmd),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let root = match cli.data_dir.clone() {
        Some(d) => d,
        None => dirs::data_dir()
            .map(|d| d.join("bdc"))
            .ok_or_else(|| anyhow::anyhow!("no user data dir on this system: pass --data-dir"))?,
    };
    match cli.command {
        Command::Provider(cmd) => provider::run(cmd, &root.join("provider"), cli.quiet).await,
        Command::Fetch(args) => fetch::run(args, &root.join("fetcher"), cli.quiet).await,
        Command::Compute(args) => compute::run(args, &root.join("fetcher"), cli.quiet).await,
        Command::Worker(cmd) => compute::worker(cmd).await,
        Command::Devnet(args) => devnet::run(args, &root).await,
        Command::Deals { chain, json } => deals::deals(&root.join("fetcher"), chain, json).await,
        Command::Deal(cmd) => deals::deal(cmd, &root.join("fetcher")).await,
        Command::Arbiter(cmd) => arbiter::run(cmd, &root, cli.quiet).await,
        Command::Dataset(cmd) => chain::dataset(cmd, &root.join("provider")).await,
        Command::Key(cmd) => chain::key(cmd),
        Command::Balance { addresses, chain, json } => chain::balance(addresses, chain, json).await,
        Command::Market(cmd) => market::run(cmd, &root.join("market")).await,
    }
}

/// The log filter for `-v` counts and `--quiet` (BDC_LOG, when set, wins).
pub fn log_filter(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "info,bdc=debug,bdc_provider=debug,bdc_fetcher=debug,bdc_market=debug",
        (false, _) => "debug,bdc=trace,bdc_provider=trace,bdc_fetcher=trace,bdc_market=trace",
    }
}

/// 1 when data failed verification or was not found, 2 for every other error.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    // the outermost error that knows its exit code decides
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<bdc_fetcher::JobError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<bdc_fetcher::FetchError>() {
            return e.exit_code();
        }
        if let Some(bdc_provider::PublishError::NotFound(_)) = cause.downcast_ref() {
            return 1;
        }
        if let Some(bdc_provider::ServeError::UnknownDataset(_)) = cause.downcast_ref() {
            return 1;
        }
    }
    2
}

/// The fetcher settings every buyer command uses: its data dir, a local bind address, and how
/// long to wait for a provider.
pub(crate) fn fetcher_config(
    dir: &std::path::Path,
    bind: std::net::SocketAddr,
    timeout: units::Span,
) -> bdc_fetcher::FetcherConfig {
    bdc_fetcher::FetcherConfig {
        data_dir: dir.to_path_buf(),
        net: bdc_core::net::NetConfig { bind, relays: false },
        connect_timeout: timeout.0.max(std::time::Duration::from_secs(1)),
        stall_timeout: timeout.0.max(std::time::Duration::from_secs(1)),
    }
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's help renders, and every argument says what it is for.
    #[test]
    fn every_subcommand_has_help_and_every_argument_a_description() {
        fn walk(cmd: &mut clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            let name = format!("{path} {}", cmd.get_name());
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("Usage:"), "{name}: {help}");
            *seen += 1;
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{name} --{id}"));
                }
            }
            let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
            for s in subs {
                let sub = cmd.find_subcommand_mut(&s).expect("listed");
                if !sub.is_hide_set() {
                    walk(sub, &name, missing, seen);
                }
            }
        }
        let mut cmd = super::Cli::command();
        cmd.build();
        let (mut missing, mut seen) = (Vec::new(), 0);
        walk(&mut cmd, "", &mut missing, &mut seen);
        assert!(seen > 30, "walked {seen} commands");
        assert!(missing.is_empty(), "arguments without help:\n{}", missing.join("\n"));
    }
}
