//! bdc market: a chain indexer, signed listings, search, matchmaking, reputation, an HTTP API
//! and web pages, in one process (DESIGN §7).
//!
//! [`Market::spawn`] connects the database (SQLite file by default, Postgres by URL), runs the
//! indexer loop, and serves the router of [`api`].

pub mod api;
pub mod book;
pub mod db;
pub mod indexer;
pub mod intake;
pub mod rank;
pub mod reputation;
pub mod web;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use alloy::providers::DynProvider;
use bdc_contracts::Contracts;
use tokio::{net::TcpListener, task::JoinHandle};

pub use bdc_market_api::{ListingBody, SignedListing};

pub use crate::{
    api::Limits,
    db::{Db, DbError},
    indexer::{IndexError, Indexer},
};

/// How to run a market.
#[derive(Debug, Clone)]
pub struct MarketConfig {
    pub database_url: String,
    pub bind: SocketAddr,
    /// How often the indexer polls the chain.
    pub poll: Duration,
    pub limits: Limits,
    /// How reputation weighs outcomes (value per buyer, trusted arbiters).
    pub reputation: reputation::Weights,
}

#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running market.
pub struct Market {
    pub addr: SocketAddr,
    pub db: Db,
    server: JoinHandle<()>,
    indexer: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Market {
    /// Connects and migrates the database, catches the index up with the chain, then serves.
    pub async fn spawn(cfg: MarketConfig, chain: Contracts<DynProvider>) -> Result<Self, MarketError> {
        let db = Db::connect(&cfg.database_url).await?;
        let indexer = Indexer::new(db.clone(), chain.clone());
        let first = indexer.catch_up().await?;
        let filled = indexer.backfill_arbiters().await?;
        if filled > 0 {
            tracing::info!(deals = filled, "read the arbiters of deals indexed before they were kept");
        }
        let index = Arc::new(Mutex::new((first.head, first.cursor)));
        let d = chain.deployment();
        let st = api::AppState {
            db: db.clone(),
            chain_id: d.chain_id,
            registry: d.registry,
            metrics: Arc::new(api::MarketMetrics::default()),
            index: index.clone(),
            book: book::OfferBook::with_weights(cfg.reputation.clone()),
            intake: Arc::new(intake::Gate::new(cfg.limits.intake)),
        };
        let book = st.book.clone();
        let listener =
            TcpListener::bind(cfg.bind).await.map_err(|source| MarketError::Bind { addr: cfg.bind, source })?;
        let addr = listener.local_addr().map_err(|source| MarketError::Bind { addr: cfg.bind, source })?;
        let app = api::router(st, cfg.limits);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            // on shutdown: stop accepting, let requests in flight finish
            let graceful = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
                tracing::error!("market server stopped: {e}");
            }
        });
        let poll = cfg.poll;
        let indexer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                match indexer.step().await {
                    Ok(s) => {
                        if s.applied > 0 || s.rolled_back > 0 {
                            book.standings_changed();
                        }
                        *index.lock().expect("index lock") = (s.head, s.cursor);
                    }
                    Err(e) => tracing::warn!("indexer: {e}"),
                }
            }
        });
        tracing::info!(%addr, backend = db.backend, "market serving");
        Ok(Self { addr, db, server, indexer, stop })
    }

    /// Stops at once: the server and the indexer are aborted (what a test wants).
    pub fn shutdown(self) {
        self.server.abort();
        self.indexer.abort();
    }

    /// Stops gracefully: no new connections, requests in flight answered (for at most
    /// `deadline`), the indexer stopped between steps (each step commits its events and cursor
    /// together, so stopping loses nothing), the database closed.
    pub async fn shutdown_gracefully(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let mut server = self.server;
        if tokio::time::timeout(deadline, &mut server).await.is_err() {
            tracing::warn!("requests still in flight after {deadline:?}: stopping anyway");
            server.abort();
        }
        self.indexer.abort();
        let _ = self.indexer.await;
        self.db.pool.close().await;
    }
}
