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
pub mod image;
pub mod images;
mod literal_cmp;
mod rootfs;
pub mod sandbox;
pub mod worker;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
        MAX_REQUEST_BYTES, MAX_SQL_BYTES, codes, decode, frame, table_kind,
    },
    paid::SignedReceipt,
};
use iroh::{
    EndpointId,
    endpoint::{Connection, RecvStream, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_blobs::{format::collection::Collection, store::fs::FsStore};
use tokio::sync::{Mutex, Semaphore};

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
) -> Result<Vec<(String, Hash)>, String> {
    if format == BlobFormat::Raw {
        return Ok(vec![(name.to_string(), root)]);
    }
    let c = Collection::load(root, store.as_ref()).await.map_err(|e| e.to_string())?;
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
            }),
        })
    }
}

impl ProtocolHandler for JobsProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id();
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => break,
            };
            let shared = self.shared.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_job(shared, peer, conn, send, recv).await {
                    tracing::warn!(%peer, "job stream: {e}");
                }
            });
        }
        Ok(())
    }
}

/// A failure on the way: code and reason.
type Fail = (u32, String);

async fn send_update(send: &mut SendStream, u: &JobUpdate) -> Result<(), String> {
    send.write_all(&frame(u)).await.map_err(|e| format!("buyer went away: {e}"))
}

async fn read_request(recv: &mut RecvStream) -> Result<JobRequest, Fail> {
    let malformed = |r: String| (codes::MALFORMED_REQUEST, r);
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| malformed(format!("cannot read the request: {e}")))?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_REQUEST_BYTES {
        return Err(malformed(format!("request of {n} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")));
    }
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body).await.map_err(|e| malformed(format!("cannot read the request: {e}")))?;
    decode(&body, MAX_REQUEST_BYTES).map_err(|e| malformed(e.to_string()))
}

async fn serve_job(
    shared: Arc<Shared>,
    peer: EndpointId,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), String> {
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
        Err((code, reason)) => (JobUpdate::Failed { code, reason }, None),
    };
    send_update(&mut send, &update).await?;
    if let (JobUpdate::Done(_), Some((deal, price))) = (&update, paid) {
        let last = match take_receipt(&shared, &deal, price, &mut recv).await {
            Ok(amount) => JobUpdate::Receipted { amount },
            Err((code, reason)) => {
                tracing::warn!(deal = %deal.id, %peer, code, "no payment for a finished job: {reason}");
                JobUpdate::Failed { code, reason }
            }
        };
        send_update(&mut send, &last).await?;
    }
    send.finish().map_err(|e| e.to_string())?;
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
        return Err((
            codes::UNSUPPORTED_VERSION,
            format!("protocol version {} is not supported (this provider speaks {JOBS_PROTOCOL_VERSION})", req.version),
        ));
    }
    match &req.spec {
        JobSpec::Sql { query, .. } if query.len() > MAX_SQL_BYTES => {
            return Err((codes::MALFORMED_REQUEST, format!("query of {} bytes exceeds {MAX_SQL_BYTES}", query.len())));
        }
        JobSpec::Container { cmd, .. } if cmd.iter().map(|a| a.len() + 1).sum::<usize>() > MAX_COMMAND_BYTES => {
            return Err((codes::MALFORMED_REQUEST, format!("command line exceeds {MAX_COMMAND_BYTES} bytes")));
        }
        _ => {}
    }
    if let JobSpec::Sql { engine: Engine::Ballista, .. } = &req.spec
        && !cfg!(feature = "ballista")
    {
        return Err((
            codes::UNSUPPORTED_JOB,
            "this provider runs SQL on DataFusion only: it was built without Ballista (cargo feature `ballista`)"
                .into(),
        ));
    }
    let ds = shared
        .datasets
        .get(&req.dataset)
        .ok_or_else(|| (codes::UNKNOWN_DATASET, format!("dataset {} is not served here", req.dataset)))?;
    // a full queue refuses before anything is paid for or uploaded
    let ahead = shared.waiting.fetch_add(1, Ordering::SeqCst);
    let _slot = Slot(&shared.waiting);
    if ahead >= shared.cfg.max_queue {
        return Err((codes::BUSY, format!("{ahead} jobs are queued or running; try again later")));
    }
    let mut paid = None;
    let mut cap = ResultCap { bytes: shared.cfg.max_result_bytes, priced: None };
    if ds.free {
        req.payment = None;
    } else {
        let (Some(price), Some(pay)) = (shared.cfg.job_price, &shared.pay) else {
            return Err((
                codes::UNKNOWN_DATASET,
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
        return Err((codes::QUERY_REFUSED, format!("dataset {} has no Parquet, CSV or JSON-lines files", req.dataset)));
    }
    // a container's image: cached, or uploaded by the buyer now (before the job takes a slot)
    let image = match &req.spec {
        JobSpec::Container { image_sha256, image_size, .. } => {
            Some(receive_image(shared, peer, send, recv, image_sha256, *image_size).await?)
        }
        JobSpec::Sql { .. } => None,
    };
    let job_id: [u8; 32] = rand::random();
    let running = ahead.saturating_sub(shared.cfg.concurrency.max(1) - 1) as u32;
    send_update(send, &JobUpdate::Queued { job_id, ahead: running }).await.map_err(|e| (codes::INTERNAL, e))?;
    let _permit = shared.permits.acquire().await.map_err(|_| (codes::INTERNAL, "runner closed".to_string()))?;
    send_update(send, &JobUpdate::Running).await.map_err(|e| (codes::INTERNAL, e))?;
    let started = Instant::now();
    let res = match &image {
        Some(img) => run_container_job(shared, &req, ds, job_id, peer, &img.image, cap).await,
        None => run_job(shared, &req, ds, job_id, peer, cap).await,
    };
    let ms = started.elapsed().as_millis() as u64;
    match &res {
        Ok(r) => tracing::info!(job = %hex::encode(job_id), dataset = %req.dataset, rows = r.rows, ms, "job done"),
        Err((code, reason)) => {
            tracing::info!(job = %hex::encode(job_id), dataset = %req.dataset, code, reason, ms, "job failed")
        }
    }
    // a failed job on a sold dataset is not paid: what it says must not carry the data
    let result = res.map_err(|f| if paid.is_some() { unpaid_failure(f) } else { f })?;
    let signed = bdc_contracts::jobs::sign_job_result(&shared.cfg.signer, result).map_err(|e| (codes::INTERNAL, e))?;
    Ok((JobUpdate::Done(Box::new(signed)), paid))
}

/// What the buyer of a failed job on a sold dataset is told. A failed job is not paid, and a
/// query's run-time error quotes values (`Cannot cast string 'BTC-USD' …`), a program's stderr
/// anything it read: one job at a time, for nothing, they would hand out the dataset. Reasons
/// the provider writes itself, or that come from planning (no data is read then), stay.
fn unpaid_failure((code, reason): Fail) -> Fail {
    match code {
        codes::QUERY_REFUSED
        | codes::MEMORY_LIMIT
        | codes::TIME_LIMIT
        | codes::RESULT_TOO_LARGE
        | codes::SANDBOX
        | codes::MALFORMED_REQUEST => (code, reason),
        _ => (
            code,
            format!(
                "{}; the details are not returned for jobs on a sold dataset (they could carry its data, and a failed job is not paid)",
                codes::name(code)
            ),
        ),
    }
}

/// Checks a job deal (the same checks as a transfer deal's Hello, see
/// `crate::paid::admission`) and claims it: one job per deal, recorded in the ledger.
async fn admit_job_deal(
    pay: &JobPayments,
    price: u128,
    peer: EndpointId,
    dataset: Hash,
    p: &JobPayment,
    needs: Duration,
) -> Result<Deal, Fail> {
    let admitted = pay.admit(p, peer, price, dataset).await.map_err(|e| match e {
        crate::paid::admission::AdmitError::Chain(_) | crate::paid::admission::AdmitError::Ledger(_) => {
            (codes::INTERNAL, e.to_string())
        }
        _ => (codes::BAD_DEAL, e.to_string()),
    })?;
    let deal = admitted.deal;
    let (id, t) = (deal.id, &deal.terms);
    // the receipt comes after the queue, the run and the buyer's fetch: it must still be
    // redeemable then (the redeemer also needs the expiry margin admission checked)
    if admitted.now + needs.as_secs() >= t.expiry {
        return Err((
            codes::BAD_DEAL,
            format!(
                "deal {id} expires too soon: in {} s, and the queue, run and receipt may take {} s",
                t.expiry.saturating_sub(admitted.now),
                needs.as_secs()
            ),
        ));
    }
    let mut fresh = false;
    pay.ledger
        .update(&id, |e| {
            if e.terms_abi.is_empty() {
                fresh = true;
                e.terms_abi = deal.terms.abi_encode();
                e.expiry = t.expiry;
                e.reserved = 1;
            }
        })
        .map_err(|e| (codes::INTERNAL, e.to_string()))?;
    if !fresh {
        return Err((codes::BAD_DEAL, format!("deal {id} was already used for a job")));
    }
    Ok(deal)
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

/// A job deal must stay open at least this long after the job is admitted.
const JOB_DEAL_MARGIN_SECS: u64 = 60;

/// How long a job admitted now may take until its receipt is stored: the jobs ahead of it and
/// its own run (each up to the wall-time limit), the receipt wait, and a minute to spare.
fn job_needs(shared: &Shared) -> Duration {
    let slots = shared.cfg.concurrency.max(1);
    // `waiting` counts this job already (its queue slot is taken before admission)
    let runs = (shared.waiting.load(Ordering::SeqCst).saturating_sub(1) / slots + 1) as u32;
    shared.cfg.limits.wall_time * runs + shared.cfg.receipt_timeout + Duration::from_secs(JOB_DEAL_MARGIN_SECS)
}

/// Reads the buyer's receipt for a finished paid job, checks it, stores it and hands the deal
/// to the redeemer; the amount receipted.
async fn take_receipt(shared: &Shared, deal: &Deal, price: u128, recv: &mut RecvStream) -> Result<u128, Fail> {
    let pay = shared.pay.as_ref().ok_or((codes::INTERNAL, "no payments configured".to_string()))?;
    let bad = |r: String| (codes::BAD_DEAL, r);
    let read = async {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| format!("no receipt: {e}"))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_REQUEST_BYTES {
            return Err(format!("receipt of {n} bytes exceeds the limit"));
        }
        let mut body = vec![0u8; n];
        recv.read_exact(&mut body).await.map_err(|e| format!("no receipt: {e}"))?;
        decode::<SignedReceipt>(&body, MAX_REQUEST_BYTES).map_err(|e| e.to_string())
    };
    let r = tokio::time::timeout(shared.cfg.receipt_timeout, read)
        .await
        .map_err(|_| bad(format!("no receipt within {:?}", shared.cfg.receipt_timeout)))?
        .map_err(bad)?;
    if r.deal_id != deal.id.0 {
        return Err(bad(format!("receipt names deal {}, not {}", B256::from(r.deal_id), deal.id)));
    }
    if r.cumulative < price || r.cumulative > deal.terms.maxAmount.to::<u128>() {
        return Err(bad(format!("receipt for {}: the job costs {price}", r.cumulative)));
    }
    let receipt = Receipt { dealId: deal.id, cumulativeAmount: U256::from(r.cumulative) };
    // stored in the one form the escrow accepts
    let sig = match receipt_signer_canonical(&pay.chain.domain(), &receipt, &r.sig) {
        Ok((a, canonical)) if a == deal.terms.buyer => canonical.to_vec(),
        _ => return Err(bad("receipt not signed by the deal's buyer".into())),
    };
    pay.ledger
        .update(&deal.id, |e| {
            if r.cumulative > e.amount {
                e.amount = r.cumulative;
                e.sig = sig.clone();
            }
        })
        .map_err(|e| (codes::INTERNAL, e.to_string()))?;
    let _ = pay.redeem_tx.send(deal.id);
    tracing::info!(deal = %deal.id, amount = r.cumulative, "job receipt stored");
    Ok(r.cumulative)
}

/// Counts a job as waiting or running while alive.
struct Slot<'a>(&'a AtomicUsize);
impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The unsigned result manifest of a finished job (finished now); a paid job names its deal.
fn manifest(
    req: &JobRequest,
    job_id: [u8; 32],
    engine: String,
    result_root: Hash,
    rows: u64,
    bytes: u64,
    started_ms: u64,
) -> JobResult {
    JobResult {
        job_id,
        deal_id: req.payment.as_ref().map_or([0; 32], |p| p.deal_id),
        dataset: req.dataset,
        kind: req.spec.kind().into(),
        query: req.spec.describe(),
        engine,
        result_root,
        format: req.spec.result_format().into(),
        rows,
        bytes,
        started_ms,
        finished_ms: now_ms(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs one job in a fresh bundle; the unsigned result.
async fn run_job(
    shared: &Shared,
    req: &JobRequest,
    ds: &JobDataset,
    job_id: [u8; 32],
    owner: EndpointId,
    cap: ResultCap,
) -> Result<JobResult, Fail> {
    let internal = |e: String| (codes::INTERNAL, e);
    let started_ms = now_ms();
    let data = materialize(shared, req.dataset, ds).await.map_err(internal)?;
    let JobSpec::Sql { query, format, engine } = &req.spec else {
        return Err(internal("not a SQL job".into()));
    };
    let id = hex::encode(&job_id[..8]);
    let job_dir = shared.dir.join("run").join(&id);
    let _cleanup = RemoveOnDrop(job_dir.clone());
    let JobDirs { input, out, bundle, out_mount } = job_dirs(&job_dir, cap.bytes)?;
    std::fs::write(input.join("query.sql"), query)
        .map_err(|e| internal(format!("cannot write {}: {e}", input.display())))?;
    let limits = &shared.cfg.limits;
    let result_name = format!("result.{}", format.extension());
    // DataFusion's pool is the soft limit that fails a query cleanly; the cgroup is the hard one
    let pool = (limits.memory_bytes / 8 * 5).saturating_sub(16 << 20).max(16 << 20);
    // a remote Ballista scheduler's executors read the dataset where the provider keeps it
    // (a shared file system), so the worker sees it at the same path, and needs the network
    let remote = shared.cfg.ballista_scheduler.as_deref().filter(|_| *engine == Engine::Ballista);
    let data_at = match remote {
        Some(_) => data.to_string_lossy().into_owned(),
        None => "/data".to_string(),
    };
    let mut args: Vec<String> = [
        "/bdc",
        "worker",
        "sql",
        "--engine",
        engine.as_str(),
        "--data",
        &data_at,
        "--query-file",
        "/job/query.sql",
        "--out",
        &format!("/out/{result_name}"),
        "--format",
        format.as_str(),
        "--memory-pool",
        &pool.to_string(),
        "--threads",
        &shared.cfg.threads.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = remote {
        args.extend(["--scheduler".to_string(), url.to_string()]);
    }
    let env = ["PATH=/usr/bin:/bin", "HOME=/tmp", "TMPDIR=/tmp", "RUST_BACKTRACE=0"].map(String::from);
    let mut binds = vec![
        sandbox::Bind { host: shared.cfg.worker_exe.clone(), container: "/bdc".into(), writable: false, exec: true },
        sandbox::Bind { host: data, container: data_at, writable: false, exec: false },
        sandbox::Bind { host: input.clone(), container: "/job".into(), writable: false, exec: false },
        sandbox::Bind { host: out.clone(), container: "/out".into(), writable: true, exec: false },
    ];
    let mut limits = limits.clone();
    if *engine == Engine::Ballista {
        // Ballista's scheduler and executor talk gRPC over `localhost`: name it (the root has no /etc)
        let etc = input.join("etc");
        let io = |e: std::io::Error| internal(format!("cannot write {}: {e}", etc.display()));
        std::fs::create_dir_all(&etc).map_err(io)?;
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").map_err(io)?;
        std::fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n").map_err(io)?;
        binds.push(sandbox::Bind { host: etc, container: "/etc".into(), writable: false, exec: false });
        limits.host_network = remote.is_some();
    }
    limits.file_bytes = Some(cap.bytes);
    sandbox::write_bundle(&bundle, None, &args, &env, "/", &binds, &limits)
        .map_err(|e| (codes::SANDBOX, e.to_string()))?;
    let outcome = sandbox::run(&shared.cfg.runc, &bundle, &format!("bdc-job-{id}"), &limits)
        .await
        .map_err(|e| (codes::SANDBOX, e.to_string()))?;
    if out_mount.is_full() {
        return Err(out_full(cap));
    }
    let path = out.join(&result_name);
    let report = match worker_outcome(outcome, &limits, cap) {
        Ok(r) => r,
        // a write error of the worker's CSV writer arrives as text; a result file that reached
        // the file-size limit says what happened
        Err((code, reason))
            if code == codes::RESULT_TOO_LARGE
                || (code == codes::QUERY_FAILED && std::fs::metadata(&path).is_ok_and(|m| m.len() >= cap.bytes)) =>
        {
            return Err((codes::RESULT_TOO_LARGE, format!("the result reached the limit of {cap} ({reason})")));
        }
        Err(e) => return Err(e),
    };
    let bytes =
        std::fs::metadata(&path).map_err(|e| (codes::QUERY_FAILED, format!("the job wrote no result: {e}")))?.len();
    if bytes > cap.bytes {
        return Err((codes::RESULT_TOO_LARGE, format!("result of {bytes} bytes exceeds {cap}")));
    }
    let tag = result_tag(job_id, owner);
    let content = shared
        .store
        .blobs()
        .add_path(&path)
        .with_named_tag(tag.as_bytes())
        .await
        .map_err(|e| internal(format!("cannot store the result: {e}")))?;
    shared.free.write().expect("free set lock").add_owned_blob(content.hash, owner);
    Ok(manifest(req, job_id, report.engine, content.hash, report.rows, bytes, started_ms))
}

/// What a sandboxed worker's end means.
fn worker_outcome(outcome: sandbox::Outcome, limits: &Limits, cap: ResultCap) -> Result<worker::WorkerReport, Fail> {
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.trim().lines().last().unwrap_or("").chars().take(2000).collect::<String>()
    };
    match outcome {
        sandbox::Outcome::Exited { code: 0, stdout, .. } => serde_json::from_slice(&stdout)
            .map_err(|e| (codes::INTERNAL, format!("worker report is not readable: {e}: {}", tail(&stdout)))),
        sandbox::Outcome::Exited { code: worker::FAILURE_EXIT, stderr, .. } => {
            match serde_json::from_str::<worker::WorkerFailure>(&tail(&stderr)) {
                Ok(f) => Err((f.code, f.reason)),
                Err(_) => Err((codes::QUERY_FAILED, tail(&stderr))),
            }
        }
        sandbox::Outcome::Exited { code: 153, .. } => {
            Err((codes::RESULT_TOO_LARGE, format!("the result file grew past the limit of {cap}")))
        }
        sandbox::Outcome::Exited { code, stderr, .. } => {
            Err((codes::QUERY_FAILED, format!("worker exited with status {code}: {}", tail(&stderr))))
        }
        sandbox::Outcome::OutOfMemory { .. } => Err((
            codes::MEMORY_LIMIT,
            format!("killed at the sandbox memory limit of {} MiB", limits.memory_bytes >> 20),
        )),
        sandbox::Outcome::WallTime => {
            Err((codes::TIME_LIMIT, format!("ran past the wall-time limit of {} s", limits.wall_time.as_secs_f64())))
        }
        sandbox::Outcome::CpuTime => {
            Err((codes::TIME_LIMIT, format!("used more than the CPU-time limit of {} s", limits.cpu_seconds)))
        }
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The dataset's files as plain files under `jobs/datasets/<root>/`, exported (and verified) from
/// the store once and reused by later jobs.
async fn materialize(shared: &Shared, root: Hash, ds: &JobDataset) -> Result<PathBuf, String> {
    let dir = shared.dir.join("datasets").join(&*root.to_hex());
    let _guard = shared.materialize.lock().await;
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = shared.dir.join("datasets").join(format!(".{}.tmp", root.to_hex()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    for (name, hash) in &ds.files {
        // names were checked at publish time; check again, they become paths
        bdc_core::paths::check_name(name).map_err(|e| e.to_string())?;
        let target = tmp.join(name);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        }
        shared
            .store
            .blobs()
            .export(*hash, &target)
            .finish()
            .await
            .map_err(|e| format!("cannot export {name} of dataset {root}: {e}"))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| format!("cannot move {} into place: {e}", tmp.display()))?;
    Ok(dir)
}

/// A job's directories: `in/`, `out/` and `bundle/`.
struct JobDirs {
    input: PathBuf,
    out: PathBuf,
    bundle: PathBuf,
    /// The bounded tmpfs on `out/` (owned by the job user); unmounted before the directory
    /// is removed, as it is dropped first.
    out_mount: sandbox::BoundedDir,
}

/// Prepares a job's directories; `out/` holds at most `out_bytes`.
fn job_dirs(job_dir: &Path, out_bytes: u64) -> Result<JobDirs, Fail> {
    let (input, out, bundle) = (job_dir.join("in"), job_dir.join("out"), job_dir.join("bundle"));
    let io = |e: std::io::Error| (codes::INTERNAL, format!("cannot prepare job directory {}: {e}", job_dir.display()));
    std::fs::create_dir_all(&input).map_err(io)?;
    std::fs::create_dir_all(&out).map_err(io)?;
    // tmpfs counts whole pages per file: room for the cap in pages plus a few more, so a result
    // just under the cap does not look like a job that filled /out; the cap itself is checked
    // on the bytes written (and per file by RLIMIT_FSIZE)
    let room = out_bytes.div_ceil(PAGE).saturating_add(OUT_SPARE_PAGES).saturating_mul(PAGE);
    let out_mount =
        sandbox::BoundedDir::mount(&out, room, sandbox::JOB_UID).map_err(|e| (codes::SANDBOX, e.to_string()))?;
    Ok(JobDirs { input, out, bundle, out_mount })
}

const PAGE: u64 = 4096;
/// Pages of `/out` beyond the result cap (file metadata and the last page of each small file).
const OUT_SPARE_PAGES: u64 = 16;

/// The failure of a job that filled its `/out`, whatever it did next.
fn out_full(cap: ResultCap) -> Fail {
    (codes::RESULT_TOO_LARGE, format!("the job filled /out: it holds at most {cap} (or {} files)", sandbox::OUT_INODES))
}

/// The most a job's result may hold. On a sold dataset that is also what the job's price buys
/// of the data at the provider's price per byte: the buyer reads the result before it pays, and
/// `SELECT *` or `cp -r /data /out` must not buy more of the data than a transfer at that price
/// would (a buyer that never pays takes at most one job's price, like a transfer's window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResultCap {
    bytes: u64,
    /// (job price, price per byte) when the price set the cap.
    priced: Option<(u128, u128)>,
}

impl ResultCap {
    fn sold(limit: u64, job_price: u128, price_per_byte: u128) -> Self {
        // at least one byte: a tmpfs of size 0 would have no limit at all
        let buys = job_price.checked_div(price_per_byte).map_or(u64::MAX, |b| b.min(u64::MAX as u128) as u64).max(1);
        if buys < limit {
            Self { bytes: buys, priced: Some((job_price, price_per_byte)) }
        } else {
            Self { bytes: limit, priced: None }
        }
    }
}

impl std::fmt::Display for ResultCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.priced {
            None => write!(f, "{} bytes", self.bytes),
            Some((price, ppb)) => write!(
                f,
                "{} bytes, what the job price of {price} buys of this sold dataset at {ppb} per byte",
                self.bytes
            ),
        }
    }
}

/// The image of a container job: unpacked already, or read from the buyer now (within the
/// upload limits, the time limit and the image disk budget), leased to the job.
async fn receive_image(
    shared: &Arc<Shared>,
    peer: EndpointId,
    send: &mut SendStream,
    recv: &mut RecvStream,
    sha: &[u8; 32],
    size: u64,
) -> Result<images::Lease, Fail> {
    if let Some(img) = shared.images.get(sha) {
        return Ok(img);
    }
    if size > shared.cfg.max_image_bytes {
        return Err((
            codes::MALFORMED_REQUEST,
            format!("image archive of {size} bytes exceeds this provider's {}-byte limit", shared.cfg.max_image_bytes),
        ));
    }
    let intake = |e: images::IntakeError| match e {
        images::IntakeError::UploadsBusy(_) | images::IntakeError::PeerBusy | images::IntakeError::NoRoom { .. } => {
            (codes::BUSY, e.to_string())
        }
        images::IntakeError::Image(_) => (codes::SANDBOX, e.to_string()),
        images::IntakeError::Task(_) => (codes::INTERNAL, e.to_string()),
    };
    let reservation = shared.images.reserve(size, *peer.as_bytes()).map_err(intake)?;
    send_update(send, &JobUpdate::SendImage).await.map_err(|e| (codes::INTERNAL, e))?;
    let dir = shared.images.dir().to_path_buf();
    let upload = dir.join(format!(".upload-{}", hex::encode(rand::random::<[u8; 8]>())));
    let _cleanup = RemoveOnDrop(upload.clone());
    let receive = async {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::File::create(&upload).await.map_err(|e| (codes::INTERNAL, e.to_string()))?;
        let mut left = size;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            recv.read_exact(&mut buf[..n])
                .await
                .map_err(|e| (codes::MALFORMED_REQUEST, format!("image upload broke off: {e}")))?;
            f.write_all(&buf[..n]).await.map_err(|e| (codes::INTERNAL, e.to_string()))?;
            left -= n as u64;
        }
        f.flush().await.map_err(|e| (codes::INTERNAL, e.to_string()))
    };
    // a floor of 1 MiB/s (plus 30 s): a slow sender cannot hold an upload slot for the whole
    // timeout with a trickle
    let limit = shared.cfg.image_upload_timeout.min(Duration::from_secs(30 + (size >> 20)));
    tokio::time::timeout(limit, receive).await.map_err(|_| {
        (codes::MALFORMED_REQUEST, format!("image upload of {size} bytes took longer than {} s", limit.as_secs()))
    })??;
    let upload2 = upload.clone();
    let got = tokio::task::spawn_blocking(move || image::file_sha256(&upload2))
        .await
        .map_err(|e| (codes::INTERNAL, e.to_string()))?
        .map_err(|e| (codes::INTERNAL, e.to_string()))?;
    if got != *sha {
        return Err((
            codes::MALFORMED_REQUEST,
            format!("uploaded image has sha256 {}, the request named {}", hex::encode(got), hex::encode(sha)),
        ));
    }
    shared.images.unpack(*sha, upload.clone(), reservation).await.map_err(intake)
}

/// Runs a container job; its result is the collection of the files it wrote to `/out`.
async fn run_container_job(
    shared: &Shared,
    req: &JobRequest,
    ds: &JobDataset,
    job_id: [u8; 32],
    owner: EndpointId,
    img: &image::Image,
    cap: ResultCap,
) -> Result<JobResult, Fail> {
    let internal = |e: String| (codes::INTERNAL, e);
    let JobSpec::Container { cmd, .. } = &req.spec else {
        return Err(internal("not a container job".into()));
    };
    let started_ms = now_ms();
    let data = materialize(shared, req.dataset, ds).await.map_err(internal)?;
    let id = hex::encode(&job_id[..8]);
    let job_dir = shared.dir.join("run").join(&id);
    let _cleanup = RemoveOnDrop(job_dir.clone());
    let JobDirs { out, bundle, out_mount, .. } = job_dirs(&job_dir, cap.bytes)?;
    let mut args = img.info.entrypoint.clone();
    args.extend(if cmd.is_empty() { img.info.cmd.clone() } else { cmd.clone() });
    if args.is_empty() {
        return Err((codes::MALFORMED_REQUEST, "no command given and the image has none".into()));
    }
    let mut env = img.info.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    }
    let cwd = if img.info.workdir.is_empty() { "/".to_string() } else { img.info.workdir.clone() };
    let binds = [
        sandbox::Bind { host: data, container: "/data".into(), writable: false, exec: false },
        sandbox::Bind { host: out.clone(), container: "/out".into(), writable: true, exec: false },
    ];
    let mut limits = shared.cfg.limits.clone();
    limits.file_bytes = Some(cap.bytes);
    sandbox::write_bundle(&bundle, Some(&img.rootfs), &args, &env, &cwd, &binds, &limits)
        .map_err(|e| (codes::SANDBOX, e.to_string()))?;
    let outcome = sandbox::run(&shared.cfg.runc, &bundle, &format!("bdc-job-{id}"), &limits)
        .await
        .map_err(|e| (codes::SANDBOX, e.to_string()))?;
    if out_mount.is_full() {
        return Err(out_full(cap));
    }
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let lines: Vec<&str> = s.trim().lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ").chars().take(2000).collect::<String>()
    };
    match outcome {
        sandbox::Outcome::Exited { code: 0, .. } => {}
        sandbox::Outcome::Exited { code: 153, .. } => {
            return Err((codes::RESULT_TOO_LARGE, format!("a file in /out grew past the limit of {cap}")));
        }
        sandbox::Outcome::Exited { code, stderr, .. } => {
            return Err((codes::PROGRAM_FAILED, format!("exited with status {code}: {}", tail(&stderr))));
        }
        other => {
            return Err(worker_outcome(other, &limits, cap)
                .err()
                .unwrap_or((codes::INTERNAL, "unexpected outcome".into())));
        }
    }
    let files = output_files(&out).map_err(|e| (codes::PROGRAM_FAILED, e))?;
    // names count too: the result collection carries them (empty files with data in their
    // names would otherwise pass any cap), as does its hash sequence
    let bytes: u64 = files.iter().map(|(rel, _, n)| n + rel.len() as u64 + 32).sum();
    if bytes > cap.bytes {
        return Err((codes::RESULT_TOO_LARGE, format!("/out holds {bytes} bytes, over {cap}")));
    }
    let blobs = shared.store.blobs();
    let mut tags = Vec::with_capacity(files.len());
    for (name, path, _) in &files {
        let t = blobs.add_path(path).temp_tag().await.map_err(|e| internal(format!("cannot store {name}: {e}")))?;
        tags.push((name.clone(), t));
    }
    let collection: Collection = tags.iter().map(|(n, t)| (n.clone(), t.hash())).collect();
    let ctag = collection.store(&shared.store).await.map_err(|e| internal(format!("cannot store the result: {e}")))?;
    let root = ctag.hash();
    let tag = result_tag(job_id, owner);
    shared
        .store
        .tags()
        .set(tag, bdc_core::HashAndFormat { hash: root, format: BlobFormat::HashSeq })
        .await
        .map_err(|e| internal(format!("cannot tag the result: {e}")))?;
    let contents = collection_hashes(&shared.store, root).await.map_err(internal)?;
    shared.free.write().expect("free set lock").add_owned_collection(root, contents, owner);
    let engine = format!("{} image {}", shared.runc_version, img.info.manifest_digest);
    Ok(manifest(req, job_id, engine, root, files.len() as u64, bytes, started_ms))
}

/// A collection's root and every blob of its hash sequence (names blob and files).
async fn collection_hashes(store: &FsStore, root: Hash) -> Result<Vec<Hash>, String> {
    let bytes = store.blobs().get_bytes(root).await.map_err(|e| e.to_string())?;
    let seq = iroh_blobs::hashseq::HashSeq::try_from(bytes).map_err(|e| e.to_string())?;
    Ok(std::iter::once(root).chain(seq.iter()).collect())
}

/// Every regular file under `out`: (relative name, path, size). A symlink, device or FIFO is
/// refused: the provider must never read through a link the job planted.
fn output_files(out: &Path) -> Result<Vec<(String, PathBuf, u64)>, String> {
    let mut files = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for e in rd {
            let e = e.map_err(|e| e.to_string())?;
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
            let rel = p.strip_prefix(out).map_err(|e| e.to_string())?.to_string_lossy().into_owned();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                bdc_core::paths::check_name(&rel).map_err(|e| format!("output name refused: {e}"))?;
                files.push((rel, p, m.len()));
            } else {
                return Err(format!("/out/{rel} is not a regular file (links, devices and pipes are not results)"));
            }
        }
    }
    files.sort();
    Ok(files)
}
