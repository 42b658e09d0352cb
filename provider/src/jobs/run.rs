//! Running a job: the SQL worker or a container in its sandbox, the result cap, and the result
//! stored, tagged for its buyer and signed.

use super::*;

/// The unsigned result manifest of a finished job (finished now); a paid job names its deal.
pub(super) fn manifest(
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

pub(super) use bdc_core::time::unix_now_ms as now_ms;

/// Runs one job in a fresh bundle; the unsigned result.
pub(super) async fn run_job(
    shared: &Shared,
    req: &JobRequest,
    ds: &JobDataset,
    job_id: [u8; 32],
    owner: EndpointId,
    cap: ResultCap,
) -> Result<JobResult, Fail> {
    let started_ms = now_ms();
    let data = materialize(shared, req.dataset, ds).await?;
    let JobSpec::Sql { query, format, engine } = &req.spec else {
        return Err(JobFailure::new(FailureKind::Internal, "not a SQL job"));
    };
    let id = hex::encode(&job_id[..8]);
    let job_dir = shared.dir.join("run").join(&id);
    let _cleanup = RemoveOnDrop(job_dir.clone());
    let JobDirs { input, out, bundle, out_mount } = job_dirs(&job_dir, cap.bytes)?;
    std::fs::write(input.join("query.sql"), query)
        .map_err(|e| JobFailure::internal(format_args!("cannot write {}", input.display()), e))?;
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
        let io = |e: std::io::Error| JobFailure::internal(format_args!("cannot write {}", etc.display()), e);
        std::fs::create_dir_all(&etc).map_err(io)?;
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").map_err(io)?;
        std::fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n").map_err(io)?;
        binds.push(sandbox::Bind { host: etc, container: "/etc".into(), writable: false, exec: false });
        limits.host_network = remote.is_some();
    }
    limits.file_bytes = Some(cap.bytes);
    sandbox::write_bundle(&bundle, None, &args, &env, "/", &binds, &limits)
        .map_err(|e| JobFailure::from_error(FailureKind::Sandbox, e))?;
    let outcome = sandbox::run(&shared.cfg.runc, &bundle, &format!("bdc-job-{id}"), &limits)
        .await
        .map_err(|e| JobFailure::from_error(FailureKind::Sandbox, e))?;
    if out_mount.is_full() {
        return Err(out_full(cap));
    }
    let path = out.join(&result_name);
    let report = match worker_outcome(outcome, &limits, cap) {
        Ok(r) => r,
        // a write error of the worker's CSV writer arrives as text; a result file that reached
        // the file-size limit says what happened
        Err(f)
            if f.kind == FailureKind::ResultTooLarge
                || (f.kind == FailureKind::QueryFailed
                    && std::fs::metadata(&path).is_ok_and(|m| m.len() >= cap.bytes)) =>
        {
            return Err(JobFailure::new(
                FailureKind::ResultTooLarge,
                format!("the result reached the limit of {cap} ({})", f.reason),
            ));
        }
        Err(e) => return Err(e),
    };
    let bytes = std::fs::metadata(&path)
        .map_err(|e| JobFailure::new(FailureKind::QueryFailed, format!("the job wrote no result: {e}")))?
        .len();
    if bytes > cap.bytes {
        // no sizes in the reason: a failed job is refunded, and a size the query chose would
        // carry a number out of the data for free
        let _ = std::fs::remove_file(&path);
        return Err(JobFailure::new(FailureKind::ResultTooLarge, format!("the result file is over {cap}")));
    }
    // on a sold dataset the cap is on the data, not on what a compressed format makes of it
    if cap.priced.is_some() && report.data_bytes > cap.bytes {
        let _ = std::fs::remove_file(&path);
        return Err(JobFailure::new(
            FailureKind::ResultTooLarge,
            format!("the bytes of data in the result are over {cap}"),
        ));
    }
    let tag = result_tag(job_id, owner);
    let content = shared
        .store
        .blobs()
        .add_path(&path)
        .with_named_tag(tag.as_bytes())
        .await
        .map_err(|e| JobFailure::internal("cannot store the result", e))?;
    shared.free.write().expect("free set lock").add_owned_blob(content.hash, owner);
    Ok(manifest(req, job_id, report.engine, content.hash, report.rows, bytes, started_ms))
}

/// What a sandboxed worker's end means.
pub(super) fn worker_outcome(
    outcome: sandbox::Outcome,
    limits: &Limits,
    cap: ResultCap,
) -> Result<worker::WorkerReport, Fail> {
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.trim().lines().last().unwrap_or("").chars().take(2000).collect::<String>()
    };
    match outcome {
        sandbox::Outcome::Exited { code: 0, stdout, .. } => serde_json::from_slice(&stdout).map_err(|e| {
            JobFailure::new(FailureKind::Internal, format!("worker report is not readable: {e}: {}", tail(&stdout)))
        }),
        sandbox::Outcome::Exited { code: worker::FAILURE_EXIT, stderr, .. } => {
            match serde_json::from_str::<worker::WorkerFailure>(&tail(&stderr)) {
                Ok(f) => Err(JobFailure::new(FailureKind::from_code(f.code), f.reason)),
                Err(_) => Err(JobFailure::new(FailureKind::QueryFailed, tail(&stderr))),
            }
        }
        sandbox::Outcome::Exited { code: 153, .. } => {
            Err(JobFailure::new(FailureKind::ResultTooLarge, format!("the result file grew past the limit of {cap}")))
        }
        sandbox::Outcome::Exited { code, stderr, .. } => Err(JobFailure::new(
            FailureKind::QueryFailed,
            format!("worker exited with status {code}: {}", tail(&stderr)),
        )),
        sandbox::Outcome::OutOfMemory { .. } => Err(JobFailure::new(
            FailureKind::MemoryLimit,
            format!("killed at the sandbox memory limit of {} MiB", limits.memory_bytes >> 20),
        )),
        sandbox::Outcome::WallTime => Err(JobFailure::new(
            FailureKind::TimeLimit,
            format!("ran past the wall-time limit of {} s", limits.wall_time.as_secs_f64()),
        )),
        sandbox::Outcome::CpuTime => Err(JobFailure::new(
            FailureKind::TimeLimit,
            format!("used more than the CPU-time limit of {} s", limits.cpu_seconds),
        )),
    }
}

pub(super) struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The dataset's files as plain files under `jobs/datasets/<root>/`, exported (and verified) from
/// the store once and reused by later jobs.
pub(super) async fn materialize(shared: &Shared, root: Hash, ds: &JobDataset) -> Result<PathBuf, JobFailure> {
    let dir = shared.dir.join("datasets").join(&*root.to_hex());
    let _guard = shared.materialize.lock().await;
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = shared.dir.join("datasets").join(format!(".{}.tmp", root.to_hex()));
    let _ = std::fs::remove_dir_all(&tmp);
    let create = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| JobFailure::internal(format_args!("cannot create {}", p.display()), e))
    };
    create(&tmp)?;
    for (name, hash) in &ds.files {
        // names were checked at publish time; check again, they become paths
        bdc_core::paths::check_name(name).map_err(|e| JobFailure::internal("a dataset file name is refused", e))?;
        let target = tmp.join(name);
        if let Some(p) = target.parent() {
            create(p)?;
        }
        shared
            .store
            .blobs()
            .export(*hash, &target)
            .finish()
            .await
            .map_err(|e| JobFailure::internal(format_args!("cannot export {name} of dataset {root}"), e))?;
    }
    std::fs::rename(&tmp, &dir)
        .map_err(|e| JobFailure::internal(format_args!("cannot move {} into place", tmp.display()), e))?;
    Ok(dir)
}

/// A job's directories: `in/`, `out/` and `bundle/`.
pub(super) struct JobDirs {
    input: PathBuf,
    out: PathBuf,
    bundle: PathBuf,
    /// The bounded tmpfs on `out/` (owned by the job user); unmounted before the directory
    /// is removed, as it is dropped first.
    out_mount: sandbox::BoundedDir,
}

/// Prepares a job's directories; `out/` holds at most `out_bytes`.
pub(super) fn job_dirs(job_dir: &Path, out_bytes: u64) -> Result<JobDirs, Fail> {
    let (input, out, bundle) = (job_dir.join("in"), job_dir.join("out"), job_dir.join("bundle"));
    let io = |e: std::io::Error| {
        JobFailure::new(FailureKind::Internal, format!("cannot prepare job directory {}: {e}", job_dir.display()))
    };
    std::fs::create_dir_all(&input).map_err(io)?;
    std::fs::create_dir_all(&out).map_err(io)?;
    // tmpfs counts whole pages per file: room for the cap in pages plus a few more, so a result
    // just under the cap does not look like a job that filled /out; the cap itself is checked
    // on the bytes written (and per file by RLIMIT_FSIZE)
    let room = out_bytes.div_ceil(PAGE).saturating_add(OUT_SPARE_PAGES).saturating_mul(PAGE);
    let out_mount = sandbox::BoundedDir::mount(&out, room, sandbox::JOB_UID)
        .map_err(|e| JobFailure::from_error(FailureKind::Sandbox, e))?;
    Ok(JobDirs { input, out, bundle, out_mount })
}

pub(super) const PAGE: u64 = 4096;
/// Pages of `/out` beyond the result cap (file metadata and the last page of each small file).
pub(super) const OUT_SPARE_PAGES: u64 = 16;

/// The failure of a job that filled its `/out`, whatever it did next.
pub(super) fn out_full(cap: ResultCap) -> Fail {
    JobFailure::new(
        FailureKind::ResultTooLarge,
        format!("the job filled /out: it holds at most {cap} (or {} files)", sandbox::OUT_INODES),
    )
}

/// The most a job's result may hold. On a sold dataset that is also what the job's price buys
/// of the data at the provider's price per byte: the buyer reads the result before it pays, and
/// `SELECT *` or `cp -r /data /out` must not buy more of the data than a transfer at that price
/// would (a buyer that never pays takes at most one job's price, like a transfer's window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ResultCap {
    pub(super) bytes: u64,
    /// (job price, price per byte) when the price set the cap.
    pub(super) priced: Option<(u128, u128)>,
}

impl ResultCap {
    pub(super) fn sold(limit: u64, job_price: u128, price_per_byte: u128) -> Self {
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
pub(super) async fn receive_image(
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
        return Err(JobFailure::new(
            FailureKind::Malformed,
            format!("image archive of {size} bytes exceeds this provider's {}-byte limit", shared.cfg.max_image_bytes),
        ));
    }
    let intake = |e: images::IntakeError| match e {
        images::IntakeError::UploadsBusy(_) | images::IntakeError::PeerBusy | images::IntakeError::NoRoom { .. } => {
            JobFailure::from_error(FailureKind::Busy, e)
        }
        images::IntakeError::Image(_) => JobFailure::from_error(FailureKind::Sandbox, e),
        images::IntakeError::Task(_) => JobFailure::from_error(FailureKind::Internal, e),
    };
    let reservation = shared.images.reserve(size, *peer.as_bytes()).map_err(intake)?;
    send_update(send, &JobUpdate::SendImage).await.map_err(|e| JobFailure::internal("cannot answer", e))?;
    let dir = shared.images.dir().to_path_buf();
    let upload = dir.join(format!(".upload-{}", hex::encode(rand::random::<[u8; 8]>())));
    let _cleanup = RemoveOnDrop(upload.clone());
    let receive = async {
        use tokio::io::AsyncWriteExt;
        let mut f =
            tokio::fs::File::create(&upload).await.map_err(|e| JobFailure::from_error(FailureKind::Internal, e))?;
        let mut left = size;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            recv.read_exact(&mut buf[..n])
                .await
                .map_err(|e| JobFailure::new(FailureKind::Malformed, format!("image upload broke off: {e}")))?;
            f.write_all(&buf[..n]).await.map_err(|e| JobFailure::from_error(FailureKind::Internal, e))?;
            left -= n as u64;
        }
        f.flush().await.map_err(|e| JobFailure::from_error(FailureKind::Internal, e))
    };
    // a floor of 1 MiB/s (plus 30 s): a slow sender cannot hold an upload slot for the whole
    // timeout with a trickle
    let limit = shared.cfg.image_upload_timeout.min(Duration::from_secs(30 + (size >> 20)));
    tokio::time::timeout(limit, receive).await.map_err(|_| {
        JobFailure::new(
            FailureKind::Malformed,
            format!("image upload of {size} bytes took longer than {} s", limit.as_secs()),
        )
    })??;
    let upload2 = upload.clone();
    let got = tokio::task::spawn_blocking(move || image::file_sha256(&upload2))
        .await
        .map_err(|e| JobFailure::from_error(FailureKind::Internal, e))?
        .map_err(|e| JobFailure::from_error(FailureKind::Internal, e))?;
    if got != *sha {
        return Err(JobFailure::new(
            FailureKind::Malformed,
            format!("uploaded image has sha256 {}, the request named {}", hex::encode(got), hex::encode(sha)),
        ));
    }
    shared.images.unpack(*sha, upload.clone(), reservation).await.map_err(intake)
}

/// Runs a container job; its result is the collection of the files it wrote to `/out`.
pub(super) async fn run_container_job(
    shared: &Shared,
    req: &JobRequest,
    ds: &JobDataset,
    job_id: [u8; 32],
    owner: EndpointId,
    img: &image::Image,
    cap: ResultCap,
) -> Result<JobResult, Fail> {
    let JobSpec::Container { cmd, .. } = &req.spec else {
        return Err(JobFailure::new(FailureKind::Internal, "not a container job"));
    };
    let started_ms = now_ms();
    let data = materialize(shared, req.dataset, ds).await?;
    let id = hex::encode(&job_id[..8]);
    let job_dir = shared.dir.join("run").join(&id);
    let _cleanup = RemoveOnDrop(job_dir.clone());
    let JobDirs { out, bundle, out_mount, .. } = job_dirs(&job_dir, cap.bytes)?;
    let mut args = img.info.entrypoint.clone();
    args.extend(if cmd.is_empty() { img.info.cmd.clone() } else { cmd.clone() });
    if args.is_empty() {
        return Err(JobFailure::new(FailureKind::Malformed, "no command given and the image has none"));
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
        .map_err(|e| JobFailure::from_error(FailureKind::Sandbox, e))?;
    let outcome = sandbox::run(&shared.cfg.runc, &bundle, &format!("bdc-job-{id}"), &limits)
        .await
        .map_err(|e| JobFailure::from_error(FailureKind::Sandbox, e))?;
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
            return Err(JobFailure::new(
                FailureKind::ResultTooLarge,
                format!("a file in /out grew past the limit of {cap}"),
            ));
        }
        sandbox::Outcome::Exited { code, stderr, .. } => {
            return Err(JobFailure::new(
                FailureKind::ProgramFailed,
                format!("exited with status {code}: {}", tail(&stderr)),
            ));
        }
        other => {
            return Err(worker_outcome(other, &limits, cap)
                .err()
                .unwrap_or(JobFailure::new(FailureKind::Internal, "unexpected outcome")));
        }
    }
    let files = output_files(&out)?;
    // names count too: the result collection carries them (empty files with data in their
    // names would otherwise pass any cap), as does its hash sequence
    let bytes: u64 = files.iter().map(|(rel, _, n)| n + rel.len() as u64 + 32).sum();
    if bytes > cap.bytes {
        return Err(JobFailure::new(FailureKind::ResultTooLarge, format!("/out holds {bytes} bytes, over {cap}")));
    }
    let blobs = shared.store.blobs();
    let mut tags = Vec::with_capacity(files.len());
    for (name, path, _) in &files {
        let t = blobs
            .add_path(path)
            .temp_tag()
            .await
            .map_err(|e| JobFailure::internal(format_args!("cannot store {name}"), e))?;
        tags.push((name.clone(), t));
    }
    let collection: Collection = tags.iter().map(|(n, t)| (n.clone(), t.hash())).collect();
    let ctag = collection.store(&shared.store).await.map_err(|e| JobFailure::internal("cannot store the result", e))?;
    let root = ctag.hash();
    let tag = result_tag(job_id, owner);
    shared
        .store
        .tags()
        .set(tag, bdc_core::HashAndFormat { hash: root, format: BlobFormat::HashSeq })
        .await
        .map_err(|e| JobFailure::internal("cannot tag the result", e))?;
    let contents = collection_hashes(&shared.store, root).await?;
    shared.free.write().expect("free set lock").add_owned_collection(root, contents, owner);
    let engine = format!("{} image {}", shared.runc_version, img.info.manifest_digest);
    Ok(manifest(req, job_id, engine, root, files.len() as u64, bytes, started_ms))
}

/// A collection's root and every blob of its hash sequence (names blob and files).
pub(super) async fn collection_hashes(store: &FsStore, root: Hash) -> Result<Vec<Hash>, JobFailure> {
    let bytes = store.blobs().get_bytes(root).await.map_err(|e| JobFailure::internal("cannot read the result", e))?;
    let seq = iroh_blobs::hashseq::HashSeq::try_from(bytes)
        .map_err(|e| JobFailure::internal("the result is not a collection", e))?;
    Ok(std::iter::once(root).chain(seq.iter()).collect())
}

/// Every regular file under `out`: (relative name, path, size). A symlink, device or FIFO is
/// refused: the provider must never read through a link the job planted.
pub(super) fn output_files(out: &Path) -> Result<Vec<(String, PathBuf, u64)>, JobFailure> {
    let failed =
        |what: std::fmt::Arguments<'_>, e: std::io::Error| JobFailure::caused(FailureKind::ProgramFailed, what, e);
    let mut files = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| failed(format_args!("cannot read {}", d.display()), e))?;
        for e in rd {
            let e = e.map_err(|e| failed(format_args!("cannot read {}", d.display()), e))?;
            let p = e.path();
            let m =
                std::fs::symlink_metadata(&p).map_err(|e| failed(format_args!("cannot read {}", p.display()), e))?;
            let rel = p.strip_prefix(out).unwrap_or(&p).to_string_lossy().into_owned();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                bdc_core::paths::check_name(&rel)
                    .map_err(|e| JobFailure::caused(FailureKind::ProgramFailed, "output name refused", e))?;
                files.push((rel, p, m.len()));
            } else {
                return Err(JobFailure::new(
                    FailureKind::ProgramFailed,
                    format!("/out/{rel} is not a regular file (links, devices and pipes are not results)"),
                ));
            }
        }
    }
    files.sort();
    Ok(files)
}
