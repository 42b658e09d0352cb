//! The market's metrics as an iroh-metrics group (the stack's own: counters whose doc comments
//! are the help text), rendered on `GET /metrics` in the OpenMetrics text format.

use std::sync::Arc;

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use iroh_metrics::{Counter, EncodeLabelSet, Family, Gauge, Histogram, MetricsGroup, MetricsSource, Registry};
use sqlx::Row;

use super::{ApiError, ApiResult, AppState};

/// A route (its pattern, e.g. `/deals/{id}`) and the status answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

/// A route pattern.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// Seconds: request latency buckets.
const LATENCY_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, MetricsGroup)]
#[metrics(default, name = "market")]
pub struct MarketMetrics {
    /// HTTP requests answered, by route and status.
    pub requests: Family<RouteStatus, Counter>,
    /// Time to answer a request, seconds, by route.
    #[default(Family::with_constructor(|| Histogram::new(LATENCY_BUCKETS.to_vec())))]
    pub request_seconds: Family<RouteLabel, Histogram>,
    /// Newest chain head the indexer saw.
    pub chain_head: Gauge,
    /// Last block the indexer indexed.
    pub indexed_block: Gauge,
    /// Current listings stored.
    pub listings: Gauge,
    /// Deals indexed.
    pub deals: Gauge,
    /// Listings refused (any 4xx answer to POST /listings).
    pub listings_refused: Counter,
    /// Matches answered.
    pub matches: Counter,
}

impl MarketMetrics {
    fn record(&self, route: &str, status: u16, secs: f64) {
        self.requests.get_or_create(&RouteStatus { route: route.to_string(), status }).inc();
        self.request_seconds.get_or_create(&RouteLabel { route: route.to_string() }).observe(secs);
    }
}

/// Middleware: counts and times every request by its route pattern (not its path: ids would
/// make a series per deal).
pub(super) async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let t = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    st.metrics.record(&route, status, t.elapsed().as_secs_f64());
    if route == "/listings" && res.status().is_client_error() {
        st.metrics.listings_refused.inc();
    }
    res
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "market", responses((status = 200, description = "OpenMetrics text", content_type = "text/plain")))]
pub(super) async fn get_metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let (head, cursor) = *st.index.lock().expect("index lock");
    let m = &st.metrics;
    m.chain_head.set(head as i64);
    m.indexed_block.set(cursor as i64);
    let listings: i64 = sqlx::query("SELECT COUNT(*) FROM listings").fetch_one(&st.db.pool).await?.get(0);
    let deals: i64 = sqlx::query("SELECT COUNT(*) FROM deals").fetch_one(&st.db.pool).await?.get(0);
    m.listings.set(listings);
    m.deals.set(deals);
    let mut registry = Registry::default();
    registry.sub_registry_with_prefix("bdc").register(m.clone() as Arc<dyn MetricsGroup>);
    let text = registry.encode_openmetrics_to_string().map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}
