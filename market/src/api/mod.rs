//! The HTTP API: JSON endpoints, an OpenAPI document generated from the request and answer
//! types of [`bdc_market_api`], Prometheus metrics and the web pages, in one axum router behind
//! one tower stack (trace → body limit → timeout → concurrency limit).
//!
//! Each concern has its file: [`search`] (the search planner), `listings` (signed listing
//! intake), `records` (providers, deals, reports), `matching` (CEL ranking), [`metrics`];
//! `error` turns every failure into one JSON shape.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use alloy::primitives::{Address, B256};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    middleware,
    routing::{get, post},
};
use bdc_market_api::{ErrorBody, Status};
use utoipa::OpenApi;

use crate::{
    book::{BookEntry, Candidate, OfferBook},
    db::Db,
};

mod error;
mod listings;
mod matching;
pub mod metrics;
mod records;
mod search;

pub use error::{ApiError, ApiResult};
pub use matching::{MATCH_DEADLINE, MAX_MATCH_SCAN, StopScoring};
pub use metrics::MarketMetrics;
pub use records::{deal, provider};
pub use search::{MAX_WALKS, dataset, search};

/// Largest request body, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest page of results.
pub const MAX_PAGE: i64 = 100;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub chain_id: u64,
    pub registry: Address,
    pub metrics: Arc<MarketMetrics>,
    /// Newest chain head the indexer saw, and its cursor (for /status and /metrics).
    pub index: Arc<Mutex<(u64, u64)>>,
    /// Offers and standings in memory, for matching.
    pub book: Arc<OfferBook>,
    /// Per-signer listing rates.
    pub intake: Arc<crate::intake::Gate>,
}

pub use bdc_core::time::unix_now as now;

fn parse_b256(what: &str, s: &str) -> ApiResult<B256> {
    s.parse::<B256>().map_err(|_| ApiError::BadRequest(format!("{what} must be 32 bytes of 0x-hex, got {s:?}")))
}

fn parse_addr(what: &str, s: &str) -> ApiResult<Address> {
    s.parse::<Address>().map_err(|_| ApiError::BadRequest(format!("{what} must be a 0x address, got {s:?}")))
}

/// Token base units per byte → BDC per GiB (18 decimals).
pub fn price_gib(price_per_byte: u128) -> f64 {
    price_per_byte as f64 * (1u64 << 30) as f64 / 1e18
}

/// Indexer position and lag.
#[utoipa::path(get, path = "/status", tag = "market", responses((status = 200, body = Status)))]
async fn get_status(State(st): State<AppState>) -> Json<Status> {
    let (head, indexed) = *st.index.lock().expect("index lock");
    Json(Status { backend: st.db.backend.to_string(), head, indexed, lag_blocks: head.saturating_sub(indexed) })
}

/// The API's OpenAPI document, generated from the handlers and the types of `bdc-market-api`.
#[derive(OpenApi)]
#[openapi(
    info(title = "bdc market", description = "Datasets, offers, providers, deals and matching of a bdc market."),
    paths(
        search::get_datasets,
        search::get_dataset,
        records::get_provider,
        records::get_deal,
        listings::post_listing,
        records::post_report,
        records::post_fault,
        matching::post_match,
        get_status,
        metrics::get_metrics,
        get_openapi,
    ),
    components(schemas(ErrorBody)),
    tags((name = "market", description = "The market's JSON API"))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "market", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn get_openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc)
}

/// Limits of the tower stack, and of listing intake.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes: usize,
    pub timeout: Duration,
    pub concurrency: usize,
    pub intake: crate::intake::IntakeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: MAX_BODY_BYTES,
            timeout: Duration::from_secs(10),
            concurrency: 256,
            intake: Default::default(),
        }
    }
}

pub fn router(st: AppState, limits: Limits) -> Router {
    Router::new()
        .route("/", get(crate::web::index))
        .route("/ui/datasets/{root}", get(crate::web::dataset_page))
        .route("/ui/providers/{id}", get(crate::web::provider_page))
        .route("/ui/deals/{id}", get(crate::web::deal_page))
        .route("/datasets", get(search::get_datasets))
        .route("/datasets/{root}", get(search::get_dataset))
        .route("/providers/{id}", get(records::get_provider))
        .route("/deals/{id}", get(records::get_deal))
        .route("/listings", post(listings::post_listing))
        .route("/reports", post(records::post_report))
        .route("/faults", post(records::post_fault))
        .route("/match", post(matching::post_match))
        .route("/status", get(get_status))
        .route("/metrics", get(metrics::get_metrics))
        .route("/openapi.json", get(get_openapi))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(st.clone(), metrics::track))
        .layer(
            tower::ServiceBuilder::new()
                .layer(
                    tower_http::trace::TraceLayer::new_for_http()
                        .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO))
                        .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG)),
                )
                // the body limit wraps the response body, which the timeout needs as it is
                .layer(tower_http::limit::RequestBodyLimitLayer::new(limits.body_bytes))
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    limits.timeout,
                ))
                .layer(tower::limit::ConcurrencyLimitLayer::new(limits.concurrency))
                .layer(DefaultBodyLimit::max(limits.body_bytes)),
        )
        .with_state(st)
}

/// A socket address list as stored (comma separated).
fn split_list(s: &str) -> Vec<String> {
    s.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// Addresses as stored (comma separated, lowercase 0x-hex); a malformed one is skipped.
fn split_addrs(s: &str) -> Vec<Address> {
    s.split(',').filter_map(|a| a.parse().ok()).collect()
}

/// A lowercase 0x-hex value the database holds, parsed; the database only holds what the
/// market wrote, so a failure is an internal error.
fn stored<T: std::str::FromStr>(what: &'static str, s: &str) -> ApiResult<T> {
    s.parse().map_err(|_| ApiError::Internal(format!("stored {what} {s:?} does not parse").into()))
}

/// A stored value that parsed, or None with a warning (the row it is in is left out).
fn readable<T>(v: ApiResult<T>) -> Option<T> {
    v.map_err(|e| tracing::warn!(error = %e, "skipping an unreadable stored row")).ok()
}

/// A decimal amount the database holds.
fn stored_amount(s: &str) -> bdc_market_api::Amount {
    // amounts above 2^128 (a registry's price hint can be any uint256) show as the maximum
    s.parse().unwrap_or(bdc_market_api::Amount(if s.is_empty() { 0 } else { u128::MAX }))
}

#[cfg(test)]
mod tests;
