//! bdc-core: the shared vocabulary of bdc.
//!
//! Start here:
//! - [`protocol`]: ALPNs and wire constants shared by provider and fetcher.
//! - [`manifest`]: the `bdc.json` dataset manifest that every published collection carries.
//! - [`ticket`]: dataset tickets (iroh-blobs `BlobTicket`s, so `sendme` can use them too).
//! - [`paths`]: the rule for file names inside a dataset (no escaping the output directory).
//! - [`jobs`]: `bdc/jobs/1` messages (SQL jobs, signed result manifests); [`evidence`]: what a dispute commits to.
//! - [`keys`]: persistent iroh node keys; [`net`]: endpoint settings (relays and discovery off by default).
//! - [`wire`]: the length-prefixed postcard framing of both protocols, and [`wire::HasErrorCode`]:
//!   errors that know the wire code they are sent as.
//!
//! No sockets are opened and no database is touched in this crate (framing reads from any
//! `AsyncRead` a caller hands it).

pub mod evidence;
pub mod jobs;
pub mod keys;
pub mod manifest;
pub mod net;
pub mod paid;
pub mod paths;
pub mod protocol;
pub mod ticket;
pub mod time;
pub mod wire;

pub use iroh_blobs::{BlobFormat, Hash, HashAndFormat};
