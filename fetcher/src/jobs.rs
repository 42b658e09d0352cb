//! Compute jobs from the buyer's side (`bdc/jobs/1`).
//!
//! [`Fetcher::run_job`] sends the job, follows its status, checks the provider's signed result
//! manifest ([`check_result`]: signature, signer, dataset, query, format), then fetches the result
//! root, which iroh-blobs verifies chunk group by chunk group, and exports it under `name`.

use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use bdc_core::{
    BlobFormat,
    jobs::{
        JOBS_PROTOCOL_VERSION, JobRequest, JobSpec, JobUpdate, MAX_UPDATE_BYTES, ResultFormat, SignedJobResult, codes,
        decode, frame,
    },
    protocol::JOBS_ALPN,
    ticket::BlobTicket,
};
use iroh::{EndpointId, endpoint::RecvStream};

use crate::{FetchError, FetchEvent, FetchOptions, FetchReport, Fetcher};

/// Progress of a job.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Accepted; `ahead` jobs run first.
    Queued {
        ahead: u32,
    },
    /// The provider asked for the container image; it is being uploaded.
    UploadingImage,
    Running,
    /// Finished and its manifest checked; the result is being fetched.
    Done {
        rows: u64,
        bytes: u64,
    },
    Fetch(FetchEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("job failed on provider {provider}: {name}: {reason} (code {code})")]
    Failed { provider: EndpointId, code: u32, name: &'static str, reason: String },
    #[error("provider {provider} broke the jobs protocol: {reason}")]
    Protocol { provider: EndpointId, reason: String },
    #[error("rejected the result of provider {provider}: {reason}")]
    Rejected { provider: EndpointId, reason: String },
    #[error(
        "the {k} replicas disagree on the result ({roots}): the query is not deterministic, or a provider is wrong"
    )]
    Disagree { k: usize, roots: String },
}

/// A finished, checked and fetched job.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub signed: SignedJobResult,
    /// The address that signed the manifest.
    pub signer: Address,
    /// Where the result was written.
    pub file: PathBuf,
    pub fetch: FetchReport,
}

/// Checks a signed result against the request: the signature recovers to the address the
/// manifest claims (and to `expect`, when the buyer knows the provider's address), and the
/// manifest is about this dataset, this query, in this format.
pub fn check_result(req: &JobRequest, signed: &SignedJobResult, expect: Option<Address>) -> Result<Address, String> {
    let signer = bdc_contracts::jobs::job_result_signer(signed)?;
    if let Some(e) = expect
        && e != signer
    {
        return Err(format!("result signed by {signer}, expected the provider's address {e}"));
    }
    let r = &signed.result;
    if r.dataset != req.dataset {
        return Err(format!("manifest is for dataset {}, the job was for {}", r.dataset, req.dataset));
    }
    if r.query != req.spec.describe() || r.kind != req.spec.kind() {
        return Err("manifest names another query than the one sent".into());
    }
    if r.format != req.spec.result_format() {
        return Err(format!("manifest says format {:?}, the job asked for {:?}", r.format, req.spec.result_format()));
    }
    Ok(signer)
}

async fn read_update(recv: &mut RecvStream) -> Result<Option<JobUpdate>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(format!("stream broke: {e}")),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_UPDATE_BYTES {
        return Err(format!("update of {n} bytes exceeds the {MAX_UPDATE_BYTES}-byte limit"));
    }
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body).await.map_err(|e| format!("stream broke: {e}"))?;
    decode(&body, MAX_UPDATE_BYTES).map(Some).map_err(|e| e.to_string())
}

impl Fetcher {
    /// Runs `spec` on the dataset of `ticket` at its provider, checks the signed result and
    /// fetches it into `out/name`.
    pub async fn run_job(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        expect_signer: Option<Address>,
        out: &Path,
        name: &str,
        on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        self.submit(ticket, spec, None, expect_signer, out, name, on).await
    }

    /// Runs `cmd` in the OCI image of `archive` (uploaded if the provider does not have it) with
    /// the dataset of `ticket` at `/data`; fetches what it wrote to `/out` into `out`.
    pub async fn run_container(
        &self,
        ticket: &BlobTicket,
        archive: &Path,
        cmd: Vec<String>,
        expect_signer: Option<Address>,
        out: &Path,
        on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let local =
            |e: std::io::Error| FetchError::Local(format!("cannot read image archive {}: {e}", archive.display()));
        let image_size = std::fs::metadata(archive).map_err(local)?.len();
        let a = archive.to_path_buf();
        let image_sha256 = tokio::task::spawn_blocking(move || bdc_core::jobs::file_sha256(&a))
            .await
            .map_err(|e| FetchError::Local(e.to_string()))?
            .map_err(local)?;
        let spec = JobSpec::Container { image_sha256, image_size, cmd };
        self.submit(ticket, spec, Some(archive), expect_signer, out, "", on).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        image: Option<&Path>,
        expect_signer: Option<Address>,
        out: &Path,
        name: &str,
        mut on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let (signed, signer) = self.execute(ticket, spec, image, expect_signer, &mut on).await?;
        self.fetch_result(ticket, signed, signer, out, name, on).await
    }

    /// Submits a job and follows it to a checked, signed result (not yet fetched).
    async fn execute(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        image: Option<&Path>,
        expect_signer: Option<Address>,
        mut on: impl FnMut(JobEvent),
    ) -> Result<(SignedJobResult, Address), JobError> {
        let provider = ticket.addr().id;
        let protocol = |reason: String| JobError::Protocol { provider, reason };
        let req = JobRequest { version: JOBS_PROTOCOL_VERSION, dataset: ticket.hash(), spec };
        let conn = self.connect(ticket, JOBS_ALPN).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| protocol(format!("cannot open a stream: {e}")))?;
        send.write_all(&frame(&req)).await.map_err(|e| protocol(format!("cannot send the job: {e}")))?;
        // a container job keeps the stream open in case the provider asks for the image
        let mut open = image.is_some();
        if !open {
            send.finish().map_err(|e| protocol(e.to_string()))?;
        }
        let signed = loop {
            let update = read_update(&mut recv).await.map_err(protocol)?;
            if open && !matches!(update, Some(JobUpdate::SendImage)) {
                send.finish().map_err(|e| protocol(e.to_string()))?;
                open = false;
            }
            match update {
                Some(JobUpdate::SendImage) => {
                    let (Some(path), true) = (image, open) else {
                        return Err(protocol("asked for an image the job does not use".into()));
                    };
                    on(JobEvent::UploadingImage);
                    let mut f = tokio::fs::File::open(path)
                        .await
                        .map_err(|e| FetchError::Local(format!("cannot read {}: {e}", path.display())))?;
                    tokio::io::copy(&mut f, &mut send)
                        .await
                        .map_err(|e| protocol(format!("image upload failed: {e}")))?;
                    send.finish().map_err(|e| protocol(e.to_string()))?;
                    open = false;
                }
                None => return Err(protocol("the stream ended without a result".into())),
                Some(JobUpdate::Queued { ahead, .. }) => on(JobEvent::Queued { ahead }),
                Some(JobUpdate::Running) => on(JobEvent::Running),
                Some(JobUpdate::Failed { code, reason }) => {
                    conn.close(0u32.into(), b"done");
                    return Err(JobError::Failed { provider, code, name: codes::name(code), reason });
                }
                Some(JobUpdate::Done(s)) => break *s,
            }
        };
        conn.close(0u32.into(), b"done");
        let signer =
            check_result(&req, &signed, expect_signer).map_err(|reason| JobError::Rejected { provider, reason })?;
        on(JobEvent::Done { rows: signed.result.rows, bytes: signed.result.bytes });
        Ok((signed, signer))
    }

    /// Fetches a checked result from the provider of `ticket`, verified against its signed root.
    async fn fetch_result(
        &self,
        ticket: &BlobTicket,
        signed: SignedJobResult,
        signer: Address,
        out: &Path,
        name: &str,
        mut on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let provider = ticket.addr().id;
        let collection = signed.result.format == "collection";
        let format = if collection { BlobFormat::HashSeq } else { BlobFormat::Raw };
        let result_ticket = BlobTicket::new(ticket.addr().clone(), signed.result.result_root, format);
        let opts = FetchOptions { raw_name: Some(name.to_string()) };
        let fetch = self.fetch(&result_ticket, out, &opts, |e| on(JobEvent::Fetch(e))).await?;
        if !collection && fetch.total_bytes != signed.result.bytes {
            return Err(JobError::Rejected {
                provider,
                reason: format!("result is {} bytes, the manifest says {}", fetch.total_bytes, signed.result.bytes),
            });
        }
        let file = fetch.files.first().map(|f| f.path.clone()).unwrap_or_else(|| out.join(name));
        Ok(JobOutcome { signed, signer, file, fetch })
    }
}

/// The default result file name for a job's format.
pub fn result_file_name(format: ResultFormat) -> String {
    format!("result.{}", format.extension())
}

impl Fetcher {
    /// Runs the same SQL job on the first `k` of `tickets` (providers of one dataset) at once and
    /// accepts the result only when all `k` signed result roots agree; then fetches it from the
    /// first. Only deterministic queries agree: see docs/PROTOCOL.md (ORDER BY over all output
    /// columns, no `random()` or `now()`, same engine version).
    pub async fn run_replicated(
        &self,
        tickets: &[BlobTicket],
        k: usize,
        spec: JobSpec,
        out: &Path,
        name: &str,
        mut on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let first = tickets.first().ok_or_else(|| FetchError::Local("no provider given".into()))?;
        if k == 0 || k > tickets.len() {
            return Err(
                FetchError::Local(format!("--replicas {k} needs {k} providers, {} given", tickets.len())).into()
            );
        }
        if let Some(t) = tickets[..k].iter().find(|t| t.hash() != first.hash()) {
            return Err(FetchError::Local(format!(
                "tickets name different datasets: {} and {}",
                first.hash(),
                t.hash()
            ))
            .into());
        }
        let runs = tickets[..k].iter().map(|t| self.execute(t, spec.clone(), None, None, |_| {}));
        let results = n0_future::join_all(runs).await;
        let mut done = Vec::with_capacity(k);
        for r in results {
            done.push(r?);
        }
        let root = done[0].0.result.result_root;
        if done.iter().any(|(s, _)| s.result.result_root != root) {
            let roots = tickets[..k]
                .iter()
                .zip(&done)
                .map(|(t, (s, _))| format!("{}: {}", t.addr().id.fmt_short(), s.result.result_root))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(JobError::Disagree { k, roots });
        }
        let (signed, signer) = done.swap_remove(0);
        on(JobEvent::Done { rows: signed.result.rows, bytes: signed.result.bytes });
        self.fetch_result(first, signed, signer, out, name, on).await
    }
}
