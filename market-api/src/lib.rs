//! bdc-market-api: the market's HTTP API as types, and one client for it.
//!
//! Start here: [`types`] holds every request and answer body of `bdc market serve` (the market
//! serializes them, its OpenAPI document is generated from them); [`MarketClient`] calls the API
//! with retries and backoff and answers typed values or a typed [`ClientError`]. Providers
//! (listings), buyers (matching, throughput reports) and the `bdc` CLI use the client, so a field
//! renamed on the server fails to compile or to decode instead of reading as zero.
//!
//! This crate sits on the ground floor with `bdc-core` and `bdc-contracts`: the market, the
//! provider and the fetcher may all depend on it.
//!
//! ```no_run
//! # async fn f() -> Result<(), bdc_market_api::ClientError> {
//! let market = bdc_market_api::MarketClient::new("http://127.0.0.1:8480")?;
//! let page = market.search(&bdc_market_api::SearchQuery { q: Some("btc".into()), ..Default::default() }).await?;
//! for d in page.items {
//!     println!("{} {} ({} offers)", d.root, d.name, d.offers);
//! }
//! # Ok(()) }
//! ```

mod amount;
mod client;
pub mod human;
mod signed;
pub mod types;

pub use amount::{Amount, AmountError};
pub use client::{ClientError, MarketClient, Retry};
pub use types::*;
