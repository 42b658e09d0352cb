//! The market under test: spawned on a database, with an HTTP client for its API.

use std::time::Duration;

use bdc_contracts::Devnet;
use bdc_market::{Limits, Market, MarketConfig};
use serde_json::Value;

use super::REPUTATION_UNIT;

pub(crate) struct Env {
    pub(crate) devnet: Devnet,
    pub(crate) market: Market,
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Env {
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the market's indexer has reached the chain's head.
    pub(crate) async fn synced(&self) {
        let head = self.devnet.contracts(0).head().await.unwrap();
        for _ in 0..100 {
            let (_, s) = self.get("/status").await;
            if s["indexed"].as_u64() >= Some(head) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("indexer did not reach block {head}");
    }
}

pub(crate) async fn start(db_url: String, devnet: Devnet) -> Env {
    start_with(db_url, devnet, Limits::default()).await
}

pub(crate) async fn start_with(db_url: String, devnet: Devnet, limits: Limits) -> Env {
    let cfg = MarketConfig {
        database_url: db_url,
        bind: "127.0.0.1:0".parse().unwrap(),
        poll: Duration::from_millis(100),
        limits,
        // the deals below pay millions of base units; the devnet's arbiter is trusted
        reputation: bdc_market::reputation::Weights::new(REPUTATION_UNIT, [devnet.address(0)]),
    };
    let market = Market::spawn(cfg, devnet.contracts(0)).await.unwrap();
    let base = format!("http://{}", market.addr);
    // no connection reuse: the server answers an oversized body with 413 and closes the
    // connection without reading it, and a pooled connection would race that close
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    Env { devnet, market, http, base }
}
