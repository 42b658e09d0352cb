//! What can go wrong with a job, and the check of a signed result against its request.

use alloy::primitives::{Address, B256};
use bdc_contracts::jobs::ResultSigError;
use bdc_core::{
    Hash,
    jobs::{JobRequest, JobSpec, JobUpdate, SignedJobResult, codes},
};
use iroh::EndpointId;

use crate::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The provider ran the job and reports it failed; `reason` is the provider's text.
    #[error("job failed on provider {provider}: {name}: {reason} (code {code})")]
    Failed { provider: EndpointId, code: u32, name: &'static str, reason: String },
    #[error("provider {provider} broke the jobs protocol: {source}")]
    Protocol {
        provider: EndpointId,
        #[source]
        source: JobProtocolError,
    },
    #[error("rejected the result of provider {provider}: {source}")]
    Rejected {
        provider: EndpointId,
        #[source]
        source: Rejection,
    },
    #[error(
        "the {k} replicas disagree on the result ({}): the query is not deterministic, or a provider is wrong",
        roots.iter().map(|(p, r)| format!("{}: {r}", p.fmt_short())).collect::<Vec<_>>().join(", ")
    )]
    Disagree { k: usize, roots: Vec<(EndpointId, Hash)> },
}

impl JobError {
    /// The process exit code a command failing with this error ends with: 1 when the result
    /// failed verification (a rejected or disagreeing signed result, bytes that do not verify)
    /// or the dataset does not exist, 2 for any other error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Rejected { .. } | Self::Disagree { .. } => 1,
            Self::Failed { code, .. } if *code == codes::UNKNOWN_DATASET => 1,
            Self::Fetch(e) => e.exit_code(),
            _ => 2,
        }
    }
}

/// How a provider broke `bdc/jobs/1` (or the stream to it broke).
#[derive(Debug, thiserror::Error)]
pub enum JobProtocolError {
    #[error("cannot open a stream: {0}")]
    Open(#[source] iroh::endpoint::ConnectionError),
    #[error("cannot send {what}: {source}")]
    Send {
        what: &'static str,
        #[source]
        source: iroh::endpoint::WriteError,
    },
    #[error("cannot finish the stream: {0}")]
    Finish(#[source] iroh::endpoint::ClosedStream),
    #[error("image upload failed: {0}")]
    Upload(#[source] std::io::Error),
    #[error("cannot read an update: {0}")]
    Read(#[source] bdc_core::wire::FrameError),
    #[error("the stream ended without a result")]
    NoResult,
    #[error("asked for an image the job does not use")]
    UnaskedImage,
    #[error("asked for payment again after the job deal was sent")]
    PaymentAgain,
    #[error("acknowledged a receipt that was not sent")]
    UnsentReceipt,
    #[error("expected the receipt's acknowledgement, got {0}")]
    NoAcknowledgement(&'static str),
}

/// Why a signed result was refused (see [`check_result`]): the provider's fault, never paid.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Signature(#[from] ResultSigError),
    #[error("result signed by {signer}, expected the provider's address {expected}")]
    NotTheProvider { signer: Address, expected: Address },
    #[error("manifest is for dataset {manifest}, the job was for {asked}")]
    Dataset { manifest: Hash, asked: Hash },
    #[error("manifest names another query than the one sent")]
    Query,
    #[error("manifest says engine {manifest:?}, the job asked for {asked}")]
    Engine { manifest: String, asked: &'static str },
    #[error("manifest says format {manifest:?}, the job asked for {asked:?}")]
    Format { manifest: String, asked: &'static str },
    #[error("manifest names deal {manifest}, the job was paid by {paid}")]
    Deal { manifest: B256, paid: B256 },
    #[error("result is {got} bytes, the manifest says {manifest}")]
    Size { got: u64, manifest: u64 },
}

/// The name of an update, for errors about the wrong one.
pub(super) fn update_name(u: &Option<JobUpdate>) -> &'static str {
    match u {
        None => "the end of the stream",
        Some(JobUpdate::Queued { .. }) => "Queued",
        Some(JobUpdate::Running) => "Running",
        Some(JobUpdate::Done(_)) => "Done",
        Some(JobUpdate::Failed { .. }) => "Failed",
        Some(JobUpdate::SendImage) => "SendImage",
        Some(JobUpdate::PaymentRequired { .. }) => "PaymentRequired",
        Some(JobUpdate::Receipted { .. }) => "Receipted",
    }
}

/// Checks a signed result against the request: the signature recovers to the address the
/// manifest claims (and to `expect`, when the buyer knows the provider's address), and the
/// manifest is about this dataset, this query, in this format.
pub fn check_result(req: &JobRequest, signed: &SignedJobResult, expect: Option<Address>) -> Result<Address, Rejection> {
    let signer = bdc_contracts::jobs::job_result_signer(signed)?;
    if let Some(expected) = expect
        && expected != signer
    {
        return Err(Rejection::NotTheProvider { signer, expected });
    }
    let r = &signed.result;
    if r.dataset != req.dataset {
        return Err(Rejection::Dataset { manifest: r.dataset, asked: req.dataset });
    }
    if r.query != req.spec.describe() || r.kind != req.spec.kind() {
        return Err(Rejection::Query);
    }
    if let JobSpec::Sql { engine, .. } = &req.spec
        && r.engine.split(' ').next() != Some(engine.as_str())
    {
        return Err(Rejection::Engine { manifest: r.engine.clone(), asked: engine.as_str() });
    }
    if r.format != req.spec.result_format() {
        return Err(Rejection::Format { manifest: r.format.clone(), asked: req.spec.result_format() });
    }
    let deal = req.payment.as_ref().map_or([0; 32], |p| p.deal_id);
    if r.deal_id != deal {
        return Err(Rejection::Deal { manifest: B256::from(r.deal_id), paid: B256::from(deal) });
    }
    Ok(signer)
}
