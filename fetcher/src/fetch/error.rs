//! Why a fetch failed, and whose fault it was.

use std::path::PathBuf;

use bdc_core::{Hash, net::NetError, paths::UnsafeName};
use iroh::EndpointId;
use iroh_blobs::{
    get::{GetError, fsm::DecodeError},
    protocol::{ERR_INTERNAL, ERR_LIMIT, ERR_PERMISSION},
};

use crate::export::ExportError;

/// Why a fetch failed. Errors caused by the provider name it, so callers can score providers.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot open the fetcher store in {path}: {source} (is another `bdc fetch` using this data dir?)")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error("the ticket carries no address for provider {0}")]
    NoAddress(EndpointId),
    #[error("provider {provider} did not answer within {secs}s (unreachable, or not serving)")]
    Timeout { provider: EndpointId, secs: u64 },
    #[error("cannot connect to provider {provider}: {source}")]
    Connect {
        provider: EndpointId,
        #[source]
        source: iroh::endpoint::ConnectError,
    },
    #[error("provider {provider} refused the request for {root}: permission denied (not a free dataset there)")]
    Refused { provider: EndpointId, root: Hash },
    #[error("provider {provider} is rate limiting; try again later")]
    RateLimited { provider: EndpointId },
    #[error("provider {provider} does not have {root}")]
    NotFound { provider: EndpointId, root: Hash },
    #[error(
        "verification failed: provider {provider} sent data for {root} that does not match its hash ({source}); nothing unverified was written"
    )]
    Verification {
        provider: EndpointId,
        root: Hash,
        #[source]
        source: Box<DecodeError>,
    },
    /// The provider reset the stream with iroh-blobs' internal-error code: it could not read
    /// its copy of the range, or the copy did not verify against its outboard (an honest
    /// provider never sends such bytes). Its fault, but not a lie: nothing it sent failed.
    #[error(
        "provider {provider} aborted the transfer of {root} after {verified} verified bytes with an internal error (it could not read its copy of that range, or the copy does not verify); nothing unverified was written: rerun to resume, or use another provider"
    )]
    ProviderAborted { provider: EndpointId, root: Hash, verified: u64 },
    #[error("transfer from provider {provider} broke off: {source} (rerun to resume)")]
    Transfer {
        provider: EndpointId,
        #[source]
        source: TransferError,
    },
    #[error("provider {provider} sent an unsafe file name; refusing the whole dataset: {source}")]
    UnsafeName { provider: EndpointId, source: UnsafeName },
    #[error("provider {provider} sent a collection that lists {name:?} twice")]
    DuplicateName { provider: EndpointId, name: String },
    #[error("dataset {root} is not a valid collection: {source}")]
    BadCollection {
        root: Hash,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The local store failed to read or write (not the provider's fault).
    #[error("local store failure: {0}")]
    LocalStore(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sign {what}: {source}")]
    Sign {
        what: &'static str,
        #[source]
        source: bdc_contracts::ReceiptError,
    },
    #[error("provider {provider} asks {price} base units per job, above the {max} allowed")]
    JobPriceTooHigh { provider: EndpointId, price: u128, max: u128 },
    /// The request itself is wrong (its arguments), before any provider is asked.
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error(transparent)]
    Paid(#[from] crate::paid::PaidError),
    #[error("provider {provider} closed the paid connection: {reason} (code {code})")]
    ProviderClosed { provider: EndpointId, code: u64, reason: &'static str },
}

/// How a transfer broke off (not a lie: what arrived verified).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the connection closed: {0}")]
    Connection(#[source] iroh::endpoint::ConnectionError),
    #[error(transparent)]
    Get(Box<GetError>),
    #[error("the provider's data does not decode: {0}")]
    Decode(#[source] Box<DecodeError>),
    #[error("the provider ended the transfer early")]
    EndedEarly,
    #[error("no byte verified for {secs}s: the provider stalled")]
    Stalled { secs: u64 },
}

/// A request that is wrong before any provider is asked.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("no provider given")]
    NoProvider,
    #[error("--replicas {k} needs {k} providers, {given} given")]
    TooFewReplicas { k: usize, given: usize },
    #[error("tickets name different datasets: {0} and {1}")]
    DifferentDatasets(Hash, Hash),
    #[error("the tickets for {0} disagree on its format (raw blob or collection)")]
    DifferentFormats(Hash),
    #[error("--include {pattern:?} is not a valid pattern: {reason}")]
    BadPattern { pattern: String, reason: &'static str },
    #[error("--include picks files of a collection; this dataset is a single blob (use --range START..END)")]
    IncludeNeedsCollection,
    #[error("--range picks bytes of a single blob; this dataset is a collection (use --include GLOB)")]
    RangeNeedsBlob,
    #[error("--range {start}..{end} is empty")]
    EmptyRange { start: u64, end: u64 },
    #[error("--range {start}..{end} runs past the end of the blob ({size} bytes)")]
    RangePastEnd { start: u64, end: u64, size: u64 },
    #[error("--include {patterns} matches none of the dataset's {files} files")]
    NothingMatches { patterns: String, files: usize },
    #[error(
        "moving files out of the store needs a staging store (Fetcher::staged): the fetcher's own store keeps its copy"
    )]
    MoveNeedsStaging,
}

impl FetchError {
    /// A failure of the local store.
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::LocalStore(Box::new(e))
    }

    /// The process exit code a command failing with this error ends with: 1 when what was
    /// asked for failed verification or does not exist, 2 for any other error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Verification { .. } | Self::NotFound { .. } => 1,
            _ => 2,
        }
    }

    /// True when bytes the provider sent failed verification here.
    pub fn is_verification(&self) -> bool {
        matches!(self, Self::Verification { .. })
    }

    /// True when the provider sent bytes whose hash does not match (a lie), not a stream that
    /// merely ended before a chunk or parent arrived.
    pub fn is_lie(&self) -> bool {
        matches!(self, Self::Verification { source, .. }
            if matches!(**source, DecodeError::LeafHashMismatch { .. } | DecodeError::ParentHashMismatch { .. }))
    }

    /// Whether another provider of the same dataset may succeed where this one failed: this one
    /// could not be reached, refused, stalled, broke off, lied, or its offer does not fit the
    /// buyer's limits. Not for failures of the buyer's own side (store, wallet, chain, deal
    /// book, output dir) or of the dataset itself (a squatted root), which follow it anywhere.
    pub fn another_provider_may_serve(&self) -> bool {
        use crate::paid::PaidError as P;
        match self {
            Self::Paid(p) => matches!(
                p,
                P::Offer(_)
                    | P::PriceTooHigh { .. }
                    | P::DepositTooHigh { .. }
                    | P::DepositsTooHigh { .. }
                    | P::WindowTooSmall { .. }
                    | P::ArbiterNotAccepted { .. }
                    | P::DealTooShort { .. }
                    | P::Open(_)
                    | P::Send(_)
                    | P::Finish(_)
            ),
            // names and collections verify against the root: every provider serves the same ones
            Self::UnsafeName { .. } | Self::DuplicateName { .. } => false,
            other => other.provider().is_some(),
        }
    }

    /// The provider this error blames, if any: a caller with other sources moves off it.
    pub fn provider(&self) -> Option<EndpointId> {
        match self {
            Self::Timeout { provider, .. }
            | Self::Connect { provider, .. }
            | Self::Refused { provider, .. }
            | Self::RateLimited { provider }
            | Self::NotFound { provider, .. }
            | Self::Verification { provider, .. }
            | Self::ProviderAborted { provider, .. }
            | Self::Transfer { provider, .. }
            | Self::UnsafeName { provider, .. }
            | Self::DuplicateName { provider, .. }
            | Self::ProviderClosed { provider, .. }
            | Self::JobPriceTooHigh { provider, .. } => Some(*provider),
            Self::NoAddress(provider) => Some(*provider),
            _ => None,
        }
    }
}

/// Maps a get error to whose fault it was.
///
/// `verified` is how many payload bytes had verified when the error happened.
pub(super) fn classify(e: GetError, provider: EndpointId, root: Hash, verified: u64) -> FetchError {
    if let Some(code) = e.iroh_error_code() {
        if code == ERR_INTERNAL {
            // A bdc/iroh-blobs provider validates what it reads from disk against the outboard
            // and resets the stream instead of sending bytes that do not verify; a read error
            // of its store ends the same way. Either way the buyer verified all it received.
            return FetchError::ProviderAborted { provider, root, verified };
        }
        if code == ERR_PERMISSION {
            return FetchError::Refused { provider, root };
        }
        if code == ERR_LIMIT {
            return FetchError::RateLimited { provider };
        }
    }
    match e {
        GetError::Decode { source, .. } => match source {
            // a hash mismatch is a lie; a missing chunk or parent means the provider stopped
            // sending valid data: either way what it sent did not verify
            DecodeError::LeafHashMismatch { .. }
            | DecodeError::ParentHashMismatch { .. }
            | DecodeError::ChunkNotFound { .. }
            | DecodeError::LeafNotFound { .. }
            | DecodeError::ParentNotFound { .. } => {
                FetchError::Verification { provider, root, source: Box::new(source) }
            }
            other => FetchError::Transfer { provider, source: TransferError::Decode(Box::new(other)) },
        },
        GetError::AtBlobHeaderNext { source: iroh_blobs::get::fsm::AtBlobHeaderNextError::NotFound { .. }, .. } => {
            FetchError::NotFound { provider, root }
        }
        // the buyer's own side: its store's import channel, a request it built (a malformed
        // hash sequence, one too big to send): not the provider's fault, and no other provider
        // would do better
        e @ (GetError::LocalFailure { .. }
        | GetError::IrpcSend { .. }
        | GetError::BadRequest { .. }
        | GetError::ConnectedNext {
            source:
                iroh_blobs::get::fsm::ConnectedNextError::RequestTooBig { .. }
                | iroh_blobs::get::fsm::ConnectedNextError::PostcardSer { .. },
            ..
        }) => FetchError::store(e),
        e => FetchError::Transfer { provider, source: TransferError::Get(Box::new(e)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paid::PaidError;

    #[test]
    fn failover_moves_off_a_provider_only_for_what_another_could_change() {
        let provider = iroh::SecretKey::from_bytes(&[7; 32]).public();
        let root = Hash::new(b"root");
        let elsewhere = [
            FetchError::Timeout { provider, secs: 2 },
            FetchError::NoAddress(provider),
            FetchError::RateLimited { provider },
            FetchError::NotFound { provider, root },
            FetchError::ProviderAborted { provider, root, verified: 5 },
            FetchError::ProviderClosed { provider, code: 20, reason: "terms" },
            PaidError::PriceTooHigh { offered: 2, max: 1 }.into(),
            PaidError::DepositTooHigh { needed: 2, max: 1 }.into(),
        ];
        for e in &elsewhere {
            assert!(e.another_provider_may_serve(), "{e}");
        }
        let here = [
            FetchError::DuplicateName { provider, name: "a".into() },
            FetchError::BadRequest(BadRequest::NoProvider),
            FetchError::store(std::io::Error::other("disk full")),
            PaidError::VendorMismatch { manifest: "0x1".into(), registered: alloy::primitives::Address::ZERO }.into(),
            PaidError::Book {
                path: "deals.json".into(),
                source: crate::paid::BookError::Io(std::io::Error::other("x")),
            }
            .into(),
        ];
        for e in &here {
            assert!(!e.another_provider_may_serve(), "{e}");
        }
    }
}
