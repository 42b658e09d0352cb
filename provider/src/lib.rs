//! bdc-provider: a node that holds datasets and serves them.
//!
//! Start here:
//! - [`store::ProviderStore`]: the iroh-blobs `FsStore` plus the dataset catalog, under a data dir.
//! - [`publish::publish`]: a file or folder becomes a dataset (a collection with `bdc.json`, or a raw blob).
//! - [`serve::Provider`]: the iroh endpoint and router serving free datasets on `/iroh-bytes/4`
//!   and selling datasets on `bdc/paid/1` ([`paid`]: receipt gate, ledger, redeemer).
//! - [`jobs`]: compute next to the data on `bdc/jobs/1` (SQL on DataFusion in a runc sandbox).
//! - [`metrics`]: bytes served, receipted and redeemed, gate stalls, jobs by outcome
//!   (iroh-metrics groups, on `GET /metrics` with `ServeConfig::metrics_addr`).

pub mod access;
pub mod announce;
pub mod catalog;
pub mod jobs;
pub mod metrics;
pub mod paid;
pub mod publish;
pub mod schema;
pub mod serve;
pub mod store;

pub use announce::{Announce, AnnounceError, announce_once};
pub use catalog::{Catalog, DatasetRecord};
pub use jobs::JobsConfig;
pub use metrics::ProviderMetrics;
pub use paid::PaidConfig;
pub use publish::{PublishError, PublishOptions, publish};
pub use serve::{PaidSetup, Provider, ServeConfig, ServeError};
pub use store::{ProviderStore, StoreError};
