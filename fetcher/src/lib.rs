//! bdc-fetcher: verified downloads.
//!
//! Start here: [`Fetcher::open`] opens the fetcher's own store and endpoint; [`Fetcher::fetch`]
//! downloads a dataset from a ticket, verifying every 16 KiB chunk group against the root, into
//! the store, then exports it ([`export`]) with the collection's file names. Interrupted fetches
//! resume: only missing chunks are requested again. [`Fetcher::fetch_paid`] does the same over
//! `bdc/paid/1`, paying with cumulative receipts ([`paid`]). [`Fetcher::run_job`] runs a compute
//! job next to the data and fetches its checked, signed result ([`jobs`]).

pub mod deals;
pub mod export;
pub mod fetch;
pub mod jobs;
pub mod metrics;
pub mod paid;

pub use fetch::{
    BadRequest, Export, FetchError, FetchEvent, FetchOptions, FetchReport, Fetcher, FetcherConfig, PIECE_BYTES, Select,
    SourceReport, TransferError,
};
pub use jobs::{JobError, JobEvent, JobOutcome, JobProtocolError, Rejection, check_result};
pub use paid::{BuyerDeal, DealBook, PaidError, PaidOptions, PaidReport, Wallet};
