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
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// A market's indexer position and lag behind the chain.
    Status {
        /// The market's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8480")]
        url: String,
    },
}

pub async fn run(cmd: MarketCmd, dir: &Path) -> anyhow::Result<()> {
    match cmd {
        MarketCmd::Serve { database_url, bind, poll_ms, chain } => {
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
            };
            let market = bdc_market::Market::spawn(cfg, chain).await?;
            println!("market serving on http://{} ({})", market.addr, market.db.backend);
            tokio::signal::ctrl_c().await.ok();
            market.shutdown();
            Ok(())
        }
        MarketCmd::Status { url } => {
            let url = format!("{}/status", url.trim_end_matches('/'));
            let body = status(&url).await.with_context(|| format!("cannot reach the market at {url}"))?;
            println!(
                "indexed block {} of {} (lag {} blocks, {})",
                body["indexed"],
                body["head"],
                body["lag_blocks"],
                body["backend"].as_str().unwrap_or("?")
            );
            Ok(())
        }
    }
}

/// GET `url` as JSON.
async fn status(url: &str) -> anyhow::Result<serde_json::Value> {
    let res = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?.get(url).send().await?;
    anyhow::ensure!(res.status().is_success(), "market answered {}", res.status());
    Ok(res.json().await?)
}
