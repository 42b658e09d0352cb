//! `bdc market ...`: run the market service, or ask one for its indexer's position.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use clap::Subcommand;

use super::chain::ChainArgs;

#[derive(Debug, Subcommand)]
pub enum MarketCmd {
    /// Index the chain, take signed listings, serve search, matchmaking, the API and web pages.
    Serve {
        /// Database: `postgres://…`, or `sqlite://path` (default: <data-dir>/market/market.db).
        #[arg(long, env = "BDC_DATABASE_URL")]
        database_url: Option<String>,
        /// Address of the HTTP server.
        #[arg(long, default_value = "127.0.0.1:8480")]
        bind: SocketAddr,
        /// How often the indexer polls the chain, milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// Token base units a buyer must have paid a provider to count as one whole completed
        /// buyer in its reputation (less counts in proportion; default 1 BDC).
        #[arg(long, default_value_t = 10u128.pow(18))]
        reputation_unit: u128,
        /// An arbiter whose rulings count against a provider's reputation (repeatable); a
        /// dispute ruled by any other arbiter does not move the score.
        #[arg(long = "trusted-arbiter", value_name = "ADDRESS")]
        trusted_arbiters: Vec<alloy::primitives::Address>,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// A market's indexer position and lag behind the chain.
    Status {
        /// The market's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8480")]
        url: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: MarketCmd, dir: &Path) -> anyhow::Result<()> {
    match cmd {
        MarketCmd::Serve { database_url, bind, poll_ms, reputation_unit, trusted_arbiters, chain } => {
            let url = match database_url {
                Some(u) => u,
                None => {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    format!("sqlite://{}?mode=rwc", dir.join("market.db").display())
                }
            };
            let chain = chain.connect_readonly()?;
            let cfg = bdc_market::MarketConfig {
                database_url: url,
                bind,
                poll: Duration::from_millis(poll_ms.max(10)),
                limits: bdc_market::Limits::default(),
                reputation: bdc_market::reputation::Weights::new(reputation_unit, trusted_arbiters),
            };
            let market = bdc_market::Market::spawn(cfg, chain).await?;
            println!("market serving on http://{} ({})", market.addr, market.db.backend);
            super::wait_for_signal().await?;
            eprintln!("shutting down");
            market.shutdown_gracefully(Duration::from_secs(10)).await;
            Ok(())
        }
        MarketCmd::Status { url, json } => {
            let st = bdc_market_api::MarketClient::new(&url)?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("indexed block {} of {} (lag {} blocks, {})", st.indexed, st.head, st.lag_blocks, st.backend);
            }
            Ok(())
        }
    }
}
