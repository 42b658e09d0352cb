//! `bdc compute ...` (the buyer) and `bdc worker sql ...` (what runs inside the job sandbox).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use alloy::primitives::{Address, B256};
use anyhow::Context;
use bdc_core::{
    jobs::{Engine, JobSpec, ResultFormat, codes},
    ticket::{BlobTicket, parse_ticket},
};
use bdc_fetcher::{FetchError, FetchEvent, Fetcher, JobError, JobEvent};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::human;

/// `--format`'s values, listed in the help.
fn result_formats() -> impl clap::builder::TypedValueParser<Value = ResultFormat> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["parquet", "csv"]).try_map(|s| s.parse::<ResultFormat>())
}

/// `--engine`'s values, listed in the help.
fn engines() -> impl clap::builder::TypedValueParser<Value = Engine> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["datafusion", "ballista"]).try_map(|s| s.parse::<Engine>())
}

#[derive(Debug, Args)]
pub struct ComputeArgs {
    /// The dataset's ticket (from `bdc provider serve` / `bdc provider ticket`): names the
    /// provider that runs the job and the dataset it runs on. With --replicas k, give the tickets
    /// of k providers of the same dataset. Or a dataset root (0x…) with --market: the market
    /// ranks the providers that sell it, and the job goes to the best one that runs jobs (the
    /// result must be signed by the listing's provider).
    #[arg(required = true, num_args = 1..)]
    pub tickets: Vec<String>,
    /// A market (`bdc market serve`) that picks the providers of a dataset root.
    #[arg(long, env = "BDC_MARKET")]
    pub market: Option<String>,
    #[command(flatten)]
    pub matching: super::pick::MatchArgs,
    /// Run the SQL job on this many providers at once and accept the result only when their
    /// signed result roots agree (deterministic queries only: ORDER BY over all output columns).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// A read-only SQL query; the dataset's Parquet, CSV and JSON-lines files are tables named
    /// by file stem (`trades.parquet` → `trades`).
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    pub sql: Option<String>,
    /// Run a program instead: an OCI image archive (`podman save --format oci-archive`), sent to
    /// the provider if it does not have it; the command follows `--`. The dataset is at /data
    /// (read-only); what the program writes to /out is the result, fetched into -o.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The container's command (after `--`; default: the image's own).
    #[arg(last = true)]
    pub cmd: Vec<String>,
    /// Save the result here (format from --format, else from the extension, else Parquet; a
    /// directory for a container's files). Without it a SQL result is fetched as CSV and printed.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Result format.
    #[arg(long, value_parser = result_formats())]
    pub format: Option<ResultFormat>,
    /// The SQL engine: datafusion, or ballista (Apache DataFusion Ballista, on providers built
    /// with it); the signed manifest names the engine that ran.
    #[arg(long, default_value = "datafusion", conflicts_with = "image", value_parser = engines())]
    pub engine: Engine,
    /// Accept only a result manifest signed by this Ethereum address.
    #[arg(long)]
    pub provider_address: Option<alloy::primitives::Address>,
    /// How long to wait for the provider to answer (e.g. 10s).
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub timeout: super::units::Span,
    /// Local UDP address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// Print the signed result manifest as JSON (on stderr when the result goes to stdout).
    #[arg(long)]
    pub json: bool,
    /// Pay for a job on a sold dataset: open a job deal for the provider's price per job, and
    /// sign a receipt for it once the result is fetched and verified (a failed job is not paid;
    /// refund its deal after expiry with `bdc deal refund`).
    #[arg(long)]
    pub pay: bool,
    /// Refuse a provider asking more than this per job, token base units (default 1,000 BDC).
    #[arg(long, default_value_t = bdc_fetcher::paid::DEFAULT_MAX_DEPOSIT)]
    pub max_price: u128,
    /// Address that settles disputes on the job deal (required with --pay).
    #[arg(long)]
    pub arbiter: Option<alloy::primitives::Address>,
    /// The job deal expires after this long (e.g. 1h).
    #[arg(long, default_value = "1h", value_name = "DURATION", alias = "deal-secs")]
    pub deal_duration: super::units::Span,
    #[command(flatten)]
    pub chain: super::chain::ChainArgs,
}

impl ComputeArgs {
    /// The job payment settings, with --pay.
    fn pay(&self) -> anyhow::Result<Option<bdc_fetcher::jobs::JobPay>> {
        if !self.pay {
            return Ok(None);
        }
        if self.replicas > 1 {
            anyhow::bail!("--pay runs one job: it cannot be combined with --replicas");
        }
        let arbiter =
            self.arbiter.context("--arbiter is required with --pay (who settles disputes on the job deal)")?;
        let (chain, signer) = self.chain.connect()?;
        Ok(Some(bdc_fetcher::jobs::JobPay {
            wallet: bdc_fetcher::Wallet { chain, signer },
            arbiters: vec![arbiter],
            deal_duration: self.deal_duration.0,
            max_price: Some(self.max_price),
        }))
    }
}

/// A provider to run the job on, and the address its result must be signed by.
#[derive(Debug, Clone)]
struct Target {
    ticket: BlobTicket,
    signer: Option<Address>,
    /// From a market: the line saying why it was picked.
    picked: Option<String>,
}

/// The providers the job may go to, in order: the tickets given, or a market's ranked offers
/// for a dataset root (one per provider).
async fn targets(a: &ComputeArgs) -> anyhow::Result<Vec<Target>> {
    let root = match a.tickets.as_slice() {
        [one] => one.trim().parse::<B256>().ok(),
        _ => None,
    };
    let Some(root) = root else {
        return a
            .tickets
            .iter()
            .map(|t| Ok(Target { ticket: parse_ticket(t)?, signer: a.provider_address, picked: None }))
            .collect();
    };
    let market = a.market.as_deref().context("a dataset root needs --market URL (or BDC_MARKET) to find a provider")?;
    anyhow::ensure!(
        a.provider_address.is_none(),
        "--provider-address is for tickets: with a market the result must be signed by the listing's provider"
    );
    let chain = a.chain.connect_readonly()?;
    let offers = super::pick::offers(market, root, &a.matching, a.replicas.max(1) + 4, chain.deployment()).await?;
    let n = offers.len();
    let mut seen = std::collections::HashSet::new();
    Ok(offers
        .into_iter()
        .filter(|o| seen.insert(o.provider))
        .map(|o| Target { picked: Some(o.picked(n)), signer: Some(o.provider), ticket: o.ticket })
        .collect())
}

/// Whether a job that ended so may go to the next provider: it could not reach this one, or
/// this one does not run such jobs on this dataset. Both happen before any deal is opened.
fn next_offer(e: &JobError) -> bool {
    match e {
        JobError::Fetch(FetchError::Connect { .. } | FetchError::Timeout { .. } | FetchError::NoAddress(_)) => true,
        JobError::Failed { code, .. } => [codes::UNKNOWN_DATASET, codes::UNSUPPORTED_JOB].contains(code),
        _ => false,
    }
}

/// Runs `job` on the targets in turn while a provider cannot take it (see [`next_offer`]).
async fn first_taker<T, F, Fut>(targets: &[Target], job: F) -> Result<T, JobError>
where
    F: FnMut(Target) -> Fut,
    Fut: std::future::Future<Output = Result<T, JobError>>,
{
    super::pick::first_that_serves(
        targets,
        "offer",
        |t| (format!("provider {}", t.ticket.addr().id.fmt_short()), t.picked.clone()),
        next_offer,
        FetchError::BadRequest(bdc_fetcher::BadRequest::NoProvider).into(),
        job,
    )
    .await
}

pub async fn run(a: ComputeArgs, dir: &Path, quiet: bool) -> anyhow::Result<()> {
    let targets = targets(&a).await?;
    if let Some(image) = &a.image {
        return run_container(&a, &targets, image, dir, quiet).await;
    }
    let sql = a.sql.clone().context("--sql or --image is required")?;
    let format = match (&a.format, &a.out) {
        (Some(f), _) => *f,
        (None, Some(o)) => ResultFormat::from_path(o).unwrap_or(ResultFormat::Parquet),
        (None, None) => ResultFormat::Csv,
    };
    if a.out.is_none() && format == ResultFormat::Parquet {
        anyhow::bail!("a Parquet result is not printed: pass -o FILE, or --format csv");
    }
    let pay = a.pay()?;
    let cfg = super::fetcher_config(dir, a.bind, a.timeout);
    // the result goes to -o, or to a scratch dir from which it is printed
    let scratch = tempfile::tempdir_in(std::env::temp_dir()).context("cannot create a scratch directory")?;
    let (out_dir, name) = match &a.out {
        Some(o) => {
            let name = o.file_name().with_context(|| format!("-o {} names no file", o.display()))?;
            let parent = o.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (parent.to_path_buf(), name.to_string_lossy().into_owned())
        }
        None => (scratch.path().to_path_buf(), bdc_fetcher::jobs::result_file_name(format)),
    };
    let fetcher = Fetcher::open(cfg).await?;
    let pb = status_bar(quiet);
    let started = Instant::now();
    let spec = JobSpec::Sql { query: sql, format, engine: a.engine };
    let res = if a.replicas > 1 {
        let replicas: Vec<_> = targets.iter().map(|t| (t.ticket.clone(), t.signer)).collect();
        let on = |ev| show(&pb, &started, ev);
        fetcher.run_replicated(&replicas, a.replicas, spec, &out_dir, &name, on).await
    } else {
        first_taker(&targets, |t| {
            let (fetcher, spec, pay, out_dir, name, pb) = (&fetcher, spec.clone(), &pay, &out_dir, &name, &pb);
            async move {
                let on = |ev| show(pb, &started, ev);
                match pay {
                    Some(pay) => fetcher.run_paid_job(&t.ticket, spec, t.signer, pay, out_dir, name, on).await,
                    None => fetcher.run_job(&t.ticket, spec, t.signer, out_dir, name, on).await,
                }
            }
        })
        .await
    };
    pb.finish_and_clear();
    fetcher.shutdown().await;
    let outcome = res?;
    paid_line(&outcome);
    let r = &outcome.signed.result;
    eprintln!(
        "job {} done: {} rows, {} {}, signed by {} ({}), {:.1}s",
        hex::encode(&r.job_id[..8]),
        r.rows,
        human(r.bytes),
        r.format,
        outcome.signer,
        r.engine,
        started.elapsed().as_secs_f64()
    );
    let manifest = serde_json::to_string_pretty(&outcome.signed)?;
    match &a.out {
        Some(_) => {
            if a.json {
                println!("{manifest}");
            } else {
                println!("{}", outcome.file.display());
            }
        }
        None => {
            if a.json {
                eprintln!("{manifest}");
            }
            let mut f = std::fs::File::open(&outcome.file)
                .with_context(|| format!("cannot read the result {}", outcome.file.display()))?;
            std::io::copy(&mut f, &mut std::io::stdout().lock()).context("cannot print the result")?;
        }
    }
    Ok(())
}

async fn run_container(
    a: &ComputeArgs,
    targets: &[Target],
    image: &Path,
    dir: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    let out = a.out.clone().context("a container job needs -o DIR for the files it writes to /out")?;
    let pay = a.pay()?;
    let cfg = super::fetcher_config(dir, a.bind, a.timeout);
    let fetcher = Fetcher::open(cfg).await?;
    let pb = status_bar(quiet);
    let started = Instant::now();
    let res = first_taker(targets, |t| {
        let (fetcher, pay, out, pb) = (&fetcher, &pay, &out, &pb);
        async move {
            let on = |ev| show(pb, &started, ev);
            fetcher.run_container(&t.ticket, image, a.cmd.clone(), t.signer, pay.as_ref(), out, on).await
        }
    })
    .await;
    pb.finish_and_clear();
    fetcher.shutdown().await;
    let outcome = res?;
    paid_line(&outcome);
    let r = &outcome.signed.result;
    eprintln!(
        "job {} done: {} file(s), {}, signed by {} ({}), {:.1}s",
        hex::encode(&r.job_id[..8]),
        r.rows,
        human(r.bytes),
        outcome.signer,
        r.engine,
        started.elapsed().as_secs_f64()
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome.signed)?);
    } else {
        for f in &outcome.fetch.files {
            println!("{}", f.path.display());
        }
    }
    Ok(())
}

/// Says what a paid job cost.
fn paid_line(o: &bdc_fetcher::jobs::JobOutcome) {
    if let Some(deal) = o.deal {
        eprintln!("paid {} under job deal {deal}", super::chain::format_bdc(alloy::primitives::U256::from(o.paid)));
    }
}

fn status_bar(quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        None,
        if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    pb.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
    pb.enable_steady_tick(Duration::from_millis(200));
    pb.set_message("submitting");
    pb
}

fn show(pb: &ProgressBar, started: &Instant, ev: JobEvent) {
    let t = started.elapsed().as_secs_f64();
    match ev {
        JobEvent::Queued { ahead } => pb.set_message(format!("queued ({ahead} ahead) {t:.1}s")),
        JobEvent::UploadingImage => pb.set_message(format!("uploading the image {t:.1}s")),
        JobEvent::Paying { price } => pb.set_message(format!(
            "opening a job deal for {} {t:.1}s",
            super::chain::format_bdc(alloy::primitives::U256::from(price))
        )),
        JobEvent::Running => pb.set_message(format!("running (since {t:.1}s)")),
        JobEvent::Done { rows, bytes } => {
            pb.set_message(format!("done: {rows} rows, {}; fetching the result", human(bytes)))
        }
        JobEvent::Fetch(FetchEvent::Progress { done, total }) => {
            pb.set_message(format!("fetching the result {}/{}", human(done), human(total)))
        }
        JobEvent::Fetch(_) => {}
    }
}

#[derive(Debug, Subcommand)]
pub enum WorkerCmd {
    /// Runs one SQL query over a directory of files (used by the provider inside the sandbox).
    Sql {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        query_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "parquet")]
        format: ResultFormat,
        /// DataFusion memory pool, bytes.
        #[arg(long, default_value_t = 256 << 20)]
        memory_pool: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// datafusion, or ballista (needs the `ballista` build feature).
        #[arg(long, default_value = "datafusion")]
        engine: Engine,
        /// A remote Ballista scheduler, df://host:port (default: a standalone in-process one).
        #[arg(long)]
        scheduler: Option<String>,
    },
}

/// Runs the worker and exits the process: 0 with a JSON report on stdout, or
/// `FAILURE_EXIT` with a JSON failure as the last stderr line.
pub async fn worker(cmd: WorkerCmd) -> ! {
    use bdc_provider::jobs::worker::{FAILURE_EXIT, WorkerArgs, WorkerFailure, run_sql};
    let WorkerCmd::Sql { data, query_file, out, format, memory_pool, threads, engine, scheduler } = cmd;
    let res = match std::fs::read_to_string(&query_file) {
        Err(e) => Err(WorkerFailure {
            code: bdc_core::jobs::codes::INTERNAL,
            reason: format!("cannot read {}: {e}", query_file.display()),
        }),
        Ok(query) => {
            let args = WorkerArgs {
                data: &data,
                query: &query,
                out: &out,
                format,
                memory_pool,
                threads,
                engine,
                scheduler: scheduler.as_deref(),
            };
            run_sql(&args).await
        }
    };
    match res {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("report serializes"));
            std::process::exit(0)
        }
        Err(f) => {
            eprintln!("{}", serde_json::to_string(&f).expect("failure serializes"));
            std::process::exit(FAILURE_EXIT)
        }
    }
}
