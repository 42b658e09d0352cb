//! The HTTP API: JSON endpoints, an OpenAPI document, Prometheus metrics and the web pages, in
//! one axum router behind one tower stack of request limits (body size, timeout, concurrency).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use alloy::primitives::{Address, B256};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bdc_contracts::listing::{ListingBody, SignedListing, SignedReport, listing_signer, market_domain};
use bdc_core::manifest::DatasetManifest;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use crate::{
    book::{BookEntry, Candidate, OfferBook},
    db::{Db, terms},
    rank::{Matcher, Scored},
    reputation::reputation,
};

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
    pub metrics: Arc<Metrics>,
    /// Newest chain head the indexer saw, and its cursor (for /status and /metrics).
    pub index: Arc<Mutex<(u64, u64)>>,
    /// Offers and standings in memory, for matching.
    pub book: Arc<OfferBook>,
    /// Per-signer listing rates.
    pub intake: Arc<crate::intake::Gate>,
}

/// An error answered to the client. 5xx carry no internal detail (it is logged).
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    /// A rate or capacity bound; retry later.
    TooMany(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            Self::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            Self::Internal(m) => {
                tracing::error!("internal error: {m}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_string())
            }
        };
        (code, Json(json!({ "error": msg }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

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

mod listings;
mod matching;
mod records;
mod search;

use listings::post_listing;
use matching::post_match;
pub use matching::{MATCH_DEADLINE, MAX_MATCH_SCAN, MatchRequest, StopScoring};
pub use records::{deal, provider};
use records::{get_deal, get_provider, post_report};
pub use search::{MAX_WALKS, SearchQuery, dataset, search};
use search::{get_dataset, get_datasets};

// ---- status, metrics, openapi ----

async fn get_status(State(st): State<AppState>) -> Json<Value> {
    let (head, cursor) = *st.index.lock().expect("index lock");
    Json(
        json!({ "backend": st.db.backend, "head": head, "indexed": cursor, "lag_blocks": head.saturating_sub(cursor) }),
    )
}

/// Request counters and latency sums per (route, status), rendered for Prometheus.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), (u64, f64)>>,
}

impl Metrics {
    fn record(&self, route: &str, status: u16, secs: f64) {
        let mut m = self.requests.lock().expect("metrics lock");
        let e = m.entry((route.to_string(), status)).or_default();
        e.0 += 1;
        e.1 += secs;
    }
}

async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let res = next.run(req).await;
    st.metrics.record(&route, res.status().as_u16(), t.elapsed().as_secs_f64());
    res
}

async fn get_metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let mut out = String::new();
    out.push_str("# HELP bdc_market_requests_total HTTP requests by route and status.\n# TYPE bdc_market_requests_total counter\n");
    let snapshot = st.metrics.requests.lock().expect("metrics lock").clone();
    for ((route, status), (n, _)) in &snapshot {
        out.push_str(&format!("bdc_market_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
    }
    out.push_str("# HELP bdc_market_request_seconds_sum Time spent answering, by route and status.\n# TYPE bdc_market_request_seconds_sum counter\n");
    for ((route, status), (_, s)) in &snapshot {
        out.push_str(&format!("bdc_market_request_seconds_sum{{route=\"{route}\",status=\"{status}\"}} {s}\n"));
    }
    let (head, cursor) = *st.index.lock().expect("index lock");
    out.push_str(&format!(
        "# TYPE bdc_market_chain_head gauge\nbdc_market_chain_head {head}\n# TYPE bdc_market_indexed_block gauge\nbdc_market_indexed_block {cursor}\n"
    ));
    let listings: i64 = sqlx::query("SELECT COUNT(*) FROM listings").fetch_one(&st.db.pool).await?.get(0);
    let deals: i64 = sqlx::query("SELECT COUNT(*) FROM deals").fetch_one(&st.db.pool).await?.get(0);
    out.push_str(&format!(
        "# TYPE bdc_market_listings gauge\nbdc_market_listings {listings}\n# TYPE bdc_market_deals gauge\nbdc_market_deals {deals}\n"
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Every route of the router, as (method, path): the OpenAPI document is built from it.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/datasets",
        "Search datasets: q (full text), vendor, tag, max_price_gib, min_size, max_size, limit, offset",
    ),
    ("get", "/datasets/{root}", "A dataset: manifest fields, files, current offers"),
    ("get", "/providers/{id}", "A provider (Ethereum address): reputation, listings, recent deals"),
    ("get", "/deals/{id}", "A deal: terms, state, redemptions over time, money at risk per side"),
    ("post", "/listings", "Post a listing signed by the provider (EIP-712, domain BDC Market v1)"),
    ("post", "/reports", "Post a throughput report signed by a deal's buyer (EIP-712 ThroughputReport)"),
    ("post", "/match", "Rank current offers with CEL: require (bool), rank (named numeric criteria)"),
    ("get", "/status", "Indexer position and lag"),
    ("get", "/metrics", "Prometheus metrics"),
    ("get", "/openapi.json", "This document"),
];

async fn get_openapi() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK"},
                "4XX": {"description": "Bad input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "bdc market", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}
    }))
}

// ---- router ----

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
        .route("/datasets", get(get_datasets))
        .route("/datasets/{root}", get(get_dataset))
        .route("/providers/{id}", get(get_provider))
        .route("/deals/{id}", get(get_deal))
        .route("/listings", post(post_listing))
        .route("/reports", post(post_report))
        .route("/match", post(post_match))
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/openapi.json", get(get_openapi))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(st.clone(), track))
        .layer(
            tower::ServiceBuilder::new()
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
