//! The fetcher's metrics as an iroh-metrics group (each field's doc comment is its help text):
//! what a buyer verified, refused and paid for, readable with [`crate::Fetcher::metrics`].

use iroh_metrics::{Counter, MetricsGroup};

#[derive(Debug, Default, MetricsGroup)]
#[metrics(name = "fetcher")]
pub struct FetcherMetrics {
    /// Payload bytes received and verified.
    pub verified_bytes: Counter,
    /// Fetches that ended with every file exported.
    pub fetches_completed: Counter,
    /// Fetches that failed.
    pub fetches_failed: Counter,
    /// Providers caught sending bytes that did not verify.
    pub verification_failures: Counter,
    /// Bytes written to output files.
    pub exported_bytes: Counter,
    /// Payload bytes signed for in receipts (paid fetches).
    pub paid_bytes: Counter,
}
