//! Protocol identifiers and constants shared by every bdc node.
//!
//! | ALPN            | carries                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | `/iroh-bytes/4` | the standard iroh-blobs protocol, for datasets marked free     |
//! | `bdc/paid/1`    | iroh-blobs GETs gated by cumulative receipts (see PROTOCOL.md) |
//! | `bdc/jobs/1`    | compute jobs next to the data                                  |

/// The standard iroh-blobs ALPN: free datasets are served on it, so any iroh-blobs client
/// (for example `sendme receive`) can fetch them.
pub const FREE_ALPN: &[u8] = iroh_blobs::ALPN;

/// Paid transfers: iroh-blobs GET streams plus a uni stream of receipts.
pub const PAID_ALPN: &[u8] = b"bdc/paid/1";

/// Compute jobs.
pub const JOBS_ALPN: &[u8] = b"bdc/jobs/1";

/// Name of the manifest file inside every dataset collection published by bdc.
pub const MANIFEST_NAME: &str = "bdc.json";

/// iroh-blobs verifies data in chunk groups of this many bytes (16 chunks of 1 KiB).
pub const CHUNK_GROUP_BYTES: u64 = 16 * 1024;

/// Largest manifest a fetcher accepts, so a hostile provider cannot make it load gigabytes.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
