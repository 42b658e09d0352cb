//! Compute next to the data: `bdc/jobs/1`.
//!
//! A buyer sends a [`JobRequest`] on a bi stream; the provider queues it (bounded), runs it in the
//! sandbox ([`sandbox`]: a runc bundle per job) as a separate worker process (`bdc worker sql`,
//! [`worker`]), adds the result file to the store as a raw blob, signs a result manifest with its
//! Ethereum key (EIP-712, `bdc_contracts::jobs`), opens the result root on the free protocol, and
//! answers with the signed manifest. Every failure ends as [`JobUpdate::Failed`] with a stable code
//! and a reason; the runner itself never goes down with a job.
//!
//! A job on a sold dataset is paid by a job deal (`JobsConfig::job_price`): the provider quotes
//! (`PaymentRequired`), checks the deal the buyer opened against the chain and claims it in the
//! paid path's ledger (one job per deal), runs the job, and after `Done` waits for the buyer's
//! receipt, which it stores in that ledger for the redeemer. A job that fails gets no receipt;
//! the buyer refunds the deal after expiry.

mod conjunction;
mod failure;
pub mod image;
pub mod images;
mod literal_cmp;
mod payment;
mod rootfs;
mod run;
pub mod sandbox;
pub mod worker;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    primitives::{B256, U256},
    signers::local::PrivateKeySigner,
    sol_types::SolValue,
};
use bdc_contracts::{
    Deal,
    receipt::{Receipt, receipt_signer_canonical},
};
use bdc_core::{
    BlobFormat, Hash,
    jobs::{
        Engine, JOBS_PROTOCOL_VERSION, JobPayment, JobRequest, JobResult, JobSpec, JobUpdate, MAX_COMMAND_BYTES,
        MAX_REQUEST_BYTES, MAX_SQL_BYTES, frame, table_kind,
    },
    paid::SignedReceipt,
    wire::HasErrorCode,
};
use iroh::{
    EndpointId,
    endpoint::{Connection, RecvStream, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_blobs::{format::collection::Collection, store::fs::FsStore};
use tokio::sync::{Mutex, Semaphore};
use tracing::Instrument;

use crate::metrics::{JobOutcome, OutcomeLabel};

pub use failure::{FailureKind, JobFailure};
use payment::{admit_job_deal, job_needs, take_receipt};
use run::{ResultCap, collection_hashes, receive_image, run_container_job, run_job};
pub use sandbox::Limits;

use crate::paid::JobPayments;

/// Tag prefix of job results in the store (so they survive restarts and stay served).
pub const RESULT_TAG_PREFIX: &str = "bdc-job/";

/// How the provider runs jobs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The `bdc` binary, run inside the sandbox as `bdc worker sql`.
    pub worker_exe: PathBuf,
    /// The runc binary.
    pub runc: String,
    pub limits: Limits,
    /// Jobs running at once.
    pub concurrency: usize,
    /// Jobs waiting or running before new ones are refused as busy.
    pub max_queue: usize,
    /// Largest result, bytes: a SQL result file, or all a container writes to `/out` (a tmpfs
    /// of this size, charged to the job's memory, bounds it while the job runs).
    pub max_result_bytes: u64,
    /// DataFusion threads in the worker.
    pub threads: usize,
    /// Largest container image archive accepted from a buyer, bytes.
    pub max_image_bytes: u64,
    /// Disk budget, concurrent uploads and unpack limits of buyers' images.
    pub images: images::ImagesConfig,
    /// Longest one image upload may take; an upload slower than 1 MiB/s (plus 30 s) is cut
    /// off sooner.
    pub image_upload_timeout: Duration,
    /// Signs result manifests.
    pub signer: PrivateKeySigner,
    /// Price of one job on a sold dataset, token base units (needs `ServeConfig::paid`, whose
    /// chain, ledger and redeemer it shares). None: jobs run on free datasets only.
    pub job_price: Option<u128>,
    /// How long a paid job's result waits for the buyer's receipt after `Done`.
    pub receipt_timeout: Duration,
    /// Ballista jobs go to this scheduler (`df://host:port`), whose executors must see the
    /// provider's `jobs/datasets/` at the same path; the worker then shares the host's network.
    /// None: each Ballista job starts a standalone cluster inside its own sandbox.
    pub ballista_scheduler: Option<String>,
    /// Run container jobs on sold datasets too. Off by default: a program can compress the data
    /// it copies to /out, so the result cap (what the job price buys of the data) does not bound
    /// how much data leaves; only a vendor that accepts that should turn this on.
    pub containers_on_sold: bool,
}

impl JobsConfig {
    pub fn new(worker_exe: PathBuf, signer: PrivateKeySigner) -> Self {
        Self {
            worker_exe,
            runc: "runc".into(),
            limits: Limits::default(),
            concurrency: 1,
            max_queue: 16,
            max_result_bytes: 1 << 30,
            threads: 2,
            max_image_bytes: 512 << 20,
            images: images::ImagesConfig::default(),
            image_upload_timeout: Duration::from_secs(600),
            signer,
            job_price: None,
            receipt_timeout: Duration::from_secs(600),
            ballista_scheduler: None,
            containers_on_sold: false,
        }
    }
}

/// A dataset the runner can query: its files by name.
#[derive(Debug, Clone)]
pub(crate) struct JobDataset {
    pub free: bool,
    pub files: Vec<(String, Hash)>,
}

/// Reads a dataset's (name, hash) list from the store.
pub(crate) async fn dataset_files(
    store: &FsStore,
    root: Hash,
    format: BlobFormat,
    name: &str,
) -> Result<Vec<(String, Hash)>, Box<dyn std::error::Error + Send + Sync>> {
    if format == BlobFormat::Raw {
        return Ok(vec![(name.to_string(), root)]);
    }
    let c = Collection::load(root, store.as_ref()).await.map_err(Box::new)?;
    Ok(c.iter().map(|(n, h)| (n.clone(), *h)).collect())
}

#[derive(Debug)]
struct Shared {
    cfg: JobsConfig,
    store: FsStore,
    dir: PathBuf,
    datasets: HashMap<Hash, JobDataset>,
    free: Arc<RwLock<crate::access::FreeSet>>,
    permits: Semaphore,
    waiting: AtomicUsize,
    /// Held while a dataset is exported.
    materialize: Mutex<()>,
    /// Unpacked images under their disk budget.
    images: Arc<images::Images>,
    /// `runc --version`'s first line, named in container results.
    runc_version: String,
    /// Chain, ledger and redeemer for job deals, when the provider sells.
    pay: Option<JobPayments>,
    metrics: Arc<crate::metrics::ProviderMetrics>,
}

/// The `bdc/jobs/1` handler.
#[derive(Debug, Clone)]
pub(crate) struct JobsProtocol {
    shared: Arc<Shared>,
}

impl JobsProtocol {
    pub(crate) async fn new(
        cfg: JobsConfig,
        store: FsStore,
        data_dir: &Path,
        datasets: HashMap<Hash, JobDataset>,
        free: Arc<RwLock<crate::access::FreeSet>>,
        pay: Option<JobPayments>,
        metrics: Arc<crate::metrics::ProviderMetrics>,
    ) -> std::io::Result<Self> {
        let dir = data_dir.join("jobs");
        std::fs::create_dir_all(dir.join("run"))?;
        // leftovers of jobs that were running when the provider stopped
        for e in std::fs::read_dir(dir.join("run"))?.flatten() {
            // a job's bounded /out is still mounted if the provider stopped mid-job
            let _ = sandbox::unmount(&e.path().join("out"));
            let _ = std::fs::remove_dir_all(e.path());
        }
        // earlier results stay fetchable by their buyers (the tag names the owner; a result
        // tagged without one is served to nobody)
        if let Ok(mut tags) = store.tags().list_prefix(RESULT_TAG_PREFIX).await {
            use futures_lite::StreamExt;
            let mut results = Vec::new();
            while let Some(Ok(t)) = tags.next().await {
                results.push(t);
            }
            for t in results {
                let Some(owner) = result_owner(t.name.as_ref()) else { continue };
                match t.format {
                    BlobFormat::HashSeq => {
                        let hashes = collection_hashes(&store, t.hash).await.unwrap_or_default();
                        free.write().expect("free set lock").add_owned_collection(t.hash, hashes, owner);
                    }
                    BlobFormat::Raw => free.write().expect("free set lock").add_owned_blob(t.hash, owner),
                }
            }
        }
        let runc_version = match tokio::process::Command::new(&cfg.runc).arg("--version").output().await {
            Ok(o) => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("runc").to_string(),
            Err(_) => "runc (not found)".to_string(),
        };
        let permits = Semaphore::new(cfg.concurrency.max(1));
        let images = images::Images::open(dir.join("images"), cfg.images.clone())?;
        tracing::info!(bytes = images.used(), budget = cfg.images.disk_budget, "unpacked images on disk");
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                store,
                dir,
                datasets,
                free,
                permits,
                waiting: AtomicUsize::new(0),
                materialize: Mutex::new(()),
                images,
                runc_version,
                pay,
                metrics,
            }),
        })
    }
}

impl ProtocolHandler for JobsProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id();
        let span = tracing::info_span!("jobs_conn", peer = %peer.fmt_short(), id = conn.stable_id());
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => break,
            };
            let shared = self.shared.clone();
            let conn = conn.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = serve_job(shared, peer, conn, send, recv).await {
                        tracing::warn!("job stream: {e}");
                    }
                }
                .instrument(tracing::info_span!(parent: &span, "job", id = tracing::field::Empty)),
            );
        }
        Ok(())
    }
}

/// A failure on the way: code and reason.
pub(crate) type Fail = JobFailure;

/// The buyer's stream broke while the provider answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("buyer went away: {0}")]
    Write(#[from] iroh::endpoint::WriteError),
    #[error("cannot finish the stream: {0}")]
    Finish(#[from] iroh::endpoint::ClosedStream),
}

async fn send_update(send: &mut SendStream, u: &JobUpdate) -> Result<(), StreamError> {
    Ok(send.write_all(&frame(u)).await?)
}

async fn read_request(recv: &mut RecvStream) -> Result<JobRequest, Fail> {
    match bdc_core::jobs::read(recv, MAX_REQUEST_BYTES).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(JobFailure::new(FailureKind::Malformed, "the stream ended before the request")),
        Err(e) => Err(JobFailure::caused(FailureKind::Malformed, "cannot read the request", e)),
    }
}

async fn serve_job(
    shared: Arc<Shared>,
    peer: EndpointId,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), StreamError> {
    // a buyer that goes away cancels its job, queued or running: dropping the job stops its
    // container (`sandbox::run`) and frees its queue slot and run permit
    let accepted = tokio::select! {
        r = accept_job(&shared, peer, &mut send, &mut recv) => r,
        e = conn.closed() => {
            tracing::info!(%peer, "buyer went away ({e}): job cancelled");
            return Ok(());
        }
    };
    let (update, paid) = match accepted {
        Ok(u) => u,
        Err(f) => {
            let outcome = if f.kind.refused() { JobOutcome::Refused } else { JobOutcome::Failed };
            shared.metrics.jobs.get_or_create(&OutcomeLabel { outcome }).inc();
            (JobUpdate::Failed { code: f.code(), reason: f.reason }, None)
        }
    };
    if matches!(update, JobUpdate::Done(_)) {
        shared.metrics.jobs.get_or_create(&OutcomeLabel { outcome: JobOutcome::Done }).inc();
    }
    send_update(&mut send, &update).await?;
    if let (JobUpdate::Done(_), Some((deal, price))) = (&update, paid) {
        let last = match take_receipt(&shared, &deal, price, &mut recv).await {
            Ok(amount) => JobUpdate::Receipted { amount },
            Err(f) => {
                tracing::warn!(deal = %deal.id, %peer, code = f.code(), "no payment for a finished job: {f}");
                JobUpdate::Failed { code: f.code(), reason: f.reason }
            }
        };
        send_update(&mut send, &last).await?;
    }
    send.finish()?;
    // wait until the buyer has read everything (or gone)
    let _ = send.stopped().await;
    Ok(())
}

/// A paid job's deal and price, between `Done` and the receipt.
type PaidJob = Option<(Deal, u128)>;

/// Checks, queues and runs one job; the final update, and the deal paying for it.
async fn accept_job(
    shared: &Arc<Shared>,
    peer: EndpointId,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(JobUpdate, PaidJob), Fail> {
    let mut req = read_request(recv).await?;
    if req.version != JOBS_PROTOCOL_VERSION {
        return Err(JobFailure::new(
            FailureKind::UnsupportedVersion,
            format!("protocol version {} is not supported (this provider speaks {JOBS_PROTOCOL_VERSION})", req.version),
        ));
    }
    match &req.spec {
        JobSpec::Sql { query, .. } if query.len() > MAX_SQL_BYTES => {
            return Err(JobFailure::new(
                FailureKind::Malformed,
                format!("query of {} bytes exceeds {MAX_SQL_BYTES}", query.len()),
            ));
        }
        JobSpec::Container { cmd, .. } if cmd.iter().map(|a| a.len() + 1).sum::<usize>() > MAX_COMMAND_BYTES => {
            return Err(JobFailure::new(
                FailureKind::Malformed,
                format!("command line exceeds {MAX_COMMAND_BYTES} bytes"),
            ));
        }
        _ => {}
    }
    if let JobSpec::Sql { engine: Engine::Ballista, .. } = &req.spec
        && !cfg!(feature = "ballista")
    {
        return Err(JobFailure::new(
            FailureKind::UnsupportedJob,
            "this provider runs SQL on DataFusion only: it was built without Ballista (cargo feature `ballista`)",
        ));
    }
    let ds = shared.datasets.get(&req.dataset).ok_or_else(|| {
        JobFailure::new(FailureKind::UnknownDataset, format!("dataset {} is not served here", req.dataset))
    })?;
    // a full queue refuses before anything is paid for or uploaded
    let ahead = shared.waiting.fetch_add(1, Ordering::SeqCst);
    let _slot = Slot(&shared.waiting);
    shared.metrics.jobs_active.inc();
    let _active = Active(&shared.metrics);
    if ahead >= shared.cfg.max_queue {
        return Err(JobFailure::new(FailureKind::Busy, format!("{ahead} jobs are queued or running; try again later")));
    }
    let mut paid = None;
    let mut cap = ResultCap { bytes: shared.cfg.max_result_bytes, priced: None };
    if ds.free {
        req.payment = None;
    } else {
        if matches!(req.spec, JobSpec::Container { .. }) && !shared.cfg.containers_on_sold {
            return Err(JobFailure::new(
                FailureKind::UnsupportedJob,
                format!(
                    "dataset {} is sold here, and this provider runs no container jobs on sold datasets: a program \
                     can compress what it copies out past the result cap (SQL jobs are capped by their data)",
                    req.dataset
                ),
            ));
        }
        let (Some(price), Some(pay)) = (shared.cfg.job_price, &shared.pay) else {
            return Err(JobFailure::new(
                FailureKind::UnknownDataset,
                format!("dataset {} is sold here; this provider runs jobs on free datasets only", req.dataset),
            ));
        };
        let Some(p) = &req.payment else {
            let d = pay.chain.deployment();
            let quote = JobUpdate::PaymentRequired {
                price,
                provider: pay.me().into_array(),
                chain_id: d.chain_id,
                escrow: d.escrow.into_array(),
                arbiters: pay.arbiters.iter().map(|a| a.into_array()).collect(),
            };
            return Ok((quote, None));
        };
        let deal = admit_job_deal(pay, price, peer, req.dataset, p, job_needs(shared)).await?;
        tracing::info!(deal = %deal.id, %peer, price, "job deal admitted");
        paid = Some((deal, price));
        cap = ResultCap::sold(shared.cfg.max_result_bytes, price, pay.price_per_byte);
    }
    if matches!(req.spec, JobSpec::Sql { .. }) && !ds.files.iter().any(|(n, _)| table_kind(n).is_some()) {
        return Err(JobFailure::new(
            FailureKind::QueryRefused,
            format!("dataset {} has no Parquet, CSV or JSON-lines files", req.dataset),
        ));
    }
    // a container's image: cached, or uploaded by the buyer now (before the job takes a slot)
    let image = match &req.spec {
        JobSpec::Container { image_sha256, image_size, .. } => {
            Some(receive_image(shared, peer, send, recv, image_sha256, *image_size).await?)
        }
        JobSpec::Sql { .. } => None,
    };
    let job_id: [u8; 32] = rand::random();
    tracing::Span::current().record("id", hex::encode(&job_id[..8]));
    let running = ahead.saturating_sub(shared.cfg.concurrency.max(1) - 1) as u32;
    send_update(send, &JobUpdate::Queued { job_id, ahead: running })
        .await
        .map_err(|e| JobFailure::internal("cannot answer", e))?;
    let _permit =
        shared.permits.acquire().await.map_err(|_| JobFailure::new(FailureKind::Internal, "runner closed"))?;
    send_update(send, &JobUpdate::Running).await.map_err(|e| JobFailure::internal("cannot answer", e))?;
    let started = Instant::now();
    let res = match &image {
        Some(img) => run_container_job(shared, &req, ds, job_id, peer, &img.image, cap).await,
        None => run_job(shared, &req, ds, job_id, peer, cap).await,
    };
    let ms = started.elapsed().as_millis() as u64;
    match &res {
        Ok(r) => tracing::info!(job = %hex::encode(job_id), dataset = %req.dataset, rows = r.rows, ms, "job done"),
        Err(f) => {
            let (code, reason) = (f.code(), &f.reason);
            tracing::info!(job = %hex::encode(job_id), dataset = %req.dataset, code, reason, ms, "job failed")
        }
    }
    // a failed job on a sold dataset is not paid: what it says must not carry the data
    let result = res.map_err(|f| if paid.is_some() { f.unpaid() } else { f })?;
    let signed = bdc_contracts::jobs::sign_job_result(&shared.cfg.signer, result)
        .map_err(|e| JobFailure::internal("cannot answer", e))?;
    Ok((JobUpdate::Done(Box::new(signed)), paid))
}

/// The store tag of a job's result: `bdc-job/<job id>/<buyer's EndpointId>`, hex. The result is
/// served to that buyer only, also after a restart.
fn result_tag(job_id: [u8; 32], owner: EndpointId) -> String {
    format!("{RESULT_TAG_PREFIX}{}/{}", hex::encode(job_id), hex::encode(owner.as_bytes()))
}

/// The buyer a result tag names.
fn result_owner(tag: &[u8]) -> Option<EndpointId> {
    let owner = std::str::from_utf8(tag).ok()?.strip_prefix(RESULT_TAG_PREFIX)?.split('/').nth(1)?;
    let bytes: [u8; 32] = hex::decode(owner).ok()?.try_into().ok()?;
    EndpointId::from_bytes(&bytes).ok()
}

/// Counts a job in the provider's metrics as active while alive.
struct Active<'a>(&'a crate::metrics::ProviderMetrics);
impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.jobs_active.dec();
    }
}

/// Counts a job as waiting or running while alive.
struct Slot<'a>(&'a AtomicUsize);
impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
