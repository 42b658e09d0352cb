//! Why a paid fetch failed before or around the transfer (the transfer's own failures are
//! [`crate::FetchError`]s).

use std::path::PathBuf;

use alloy::primitives::Address;
use bdc_contracts::ChainError;

#[derive(Debug, thiserror::Error)]
pub enum PaidError {
    #[error("the offer's ticket: {0}")]
    Offer(#[source] bdc_core::ticket::TicketError),
    #[error("the offer's price {offered} per byte is above your maximum {max}")]
    PriceTooHigh { offered: u128, max: u128 },
    #[error(
        "a deal for the offer's full price would escrow {needed} base units, more than your maximum deposit {max} (raise the maximum, or give the deposit)"
    )]
    DepositTooHigh { needed: u128, max: u128 },
    #[error(
        "with this provider, {deals} deals of the dataset's full price each would escrow {needed} base units together, more than your maximum deposit {max}: it is left out"
    )]
    DepositsTooHigh { deals: usize, needed: u128, max: u128 },
    #[error(
        "the offer is for chain {offer_chain} escrow {offer_escrow}, but this wallet is on chain {chain} escrow {escrow}"
    )]
    WrongChain { offer_chain: u64, offer_escrow: Address, chain: u64, escrow: Address },
    #[error(
        "receipt interval {every} bytes does not fit the provider's window of {window} bytes (needs interval + 16 KiB ≤ window)"
    )]
    WindowTooSmall { every: u64, window: u64 },
    #[error(
        "the provider accepts the arbiters [{}], none of those you trust ([{}])",
        fmt_addrs(accepted),
        fmt_addrs(trusted)
    )]
    ArbiterNotAccepted { trusted: Vec<Address>, accepted: Vec<Address> },
    #[error("a deal of {duration} s would start inside the provider's {margin} s expiry margin: no byte would be sent")]
    DealTooShort { duration: u64, margin: u64 },
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("deal book {path}: {source}")]
    Book {
        path: PathBuf,
        #[source]
        source: BookError,
    },
    #[error("signing failed: {0}")]
    Sign(#[source] bdc_contracts::ReceiptError),
    #[error("cannot open the receipt stream: {0}")]
    Open(#[source] iroh::endpoint::ConnectionError),
    #[error("cannot send to the provider: {0}")]
    Send(#[source] iroh::endpoint::WriteError),
    #[error("cannot finish the receipt stream: {0}")]
    Finish(#[source] iroh::endpoint::ClosedStream),
    #[error("the receipt task stopped: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("the local store cannot commit what it verified")]
    Store(#[source] iroh_blobs::api::RequestError),
    /// The dataset's own manifest (covered by its root) names another vendor than the registry
    /// entry the deal pays: a squatter registered the root. Only the manifest was paid for.
    #[error(
        "the dataset's manifest names vendor {manifest}, but the deal pays the registered vendor {registered} (a squatted root): stopped after the manifest"
    )]
    VendorMismatch { manifest: String, registered: Address },
}

/// Why the deal book could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a deal book: {0}")]
    Json(#[from] serde_json::Error),
}

fn fmt_addrs(a: &[Address]) -> String {
    a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}
