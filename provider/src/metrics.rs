//! The provider's metrics as an iroh-metrics group (the stack's own: each field's doc comment is
//! its help text). `serve --metrics-addr` exposes them in the OpenMetrics text format on
//! `GET /metrics` with iroh-metrics' own server. (The iroh endpoint's groups need iroh's
//! `metrics` feature, which this build leaves off.)

use std::sync::{Arc, RwLock};

use iroh_metrics::{Counter, EncodeLabelSet, EncodeLabelValue, Family, Gauge, MetricsGroup, Registry};

/// How a job ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelValue)]
pub enum JobOutcome {
    Done,
    Failed,
    Refused,
}

/// A job outcome label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: JobOutcome,
}

/// A `bdc/paid/1` close code label (its name, e.g. `payment timeout`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CloseLabel {
    pub reason: &'static str,
}

/// What a provider serves, sells and runs.
#[derive(Debug, Default, MetricsGroup)]
#[metrics(name = "provider")]
pub struct ProviderMetrics {
    /// Payload bytes sent on the free protocol.
    pub free_bytes_sent: Counter,
    /// Payload bytes sent under paid deals (each 16 KiB group counted when the gate lets it out).
    pub paid_bytes_sent: Counter,
    /// Payload bytes covered by receipts stored in the ledger.
    pub paid_bytes_receipted: Counter,
    /// Payload bytes whose receipts were redeemed on chain (transfer deals).
    pub paid_bytes_redeemed: Counter,
    /// Redeem transactions that went through.
    pub redeem_transactions: Counter,
    /// Redeems that did not go through (retried next sweep, or lost for good).
    pub redeem_failures: Counter,
    /// Times a paid stream waited for a receipt because its window was full.
    pub gate_stalls: Counter,
    /// Paid connections admitted.
    pub paid_connections: Counter,
    /// Paid connections open now.
    pub paid_connections_open: Gauge,
    /// Paid connections closed, by reason.
    pub paid_closes: Family<CloseLabel, Counter>,
    /// Jobs by how they ended.
    pub jobs: Family<OutcomeLabel, Counter>,
    /// Jobs queued or running now.
    pub jobs_active: Gauge,
}

/// A registry with the provider's metrics (`bdc_provider_*`), shared with the metrics server.
pub fn registry(provider: Arc<ProviderMetrics>) -> Arc<RwLock<Registry>> {
    let mut r = Registry::default();
    r.sub_registry_with_prefix("bdc").register(provider);
    Arc::new(RwLock::new(r))
}
