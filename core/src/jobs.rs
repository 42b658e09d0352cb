//! `bdc/jobs/1`: compute next to the data.
//!
//! The buyer opens a bi stream and writes one [`JobRequest`], then finishes its side. The provider
//! answers with [`JobUpdate`]s (queued, running, then exactly one of done or failed) and finishes
//! the stream. A job on a sold dataset is paid: the provider first answers `PaymentRequired`; the
//! buyer opens a job deal and asks again with it; after `Done` it fetches and checks the result,
//! then writes one cumulative receipt (`crate::paid::SignedReceipt`) on its side, and the provider
//! answers `Receipted` once the receipt is stored. Every message is framed as a `u32` big-endian length and postcard bytes, and each
//! has a size limit. A finished job carries a [`JobResult`] signed by the provider's Ethereum key
//! (EIP-712, see `bdc_contracts::jobs`); the buyer then fetches the result root, which iroh-blobs
//! verifies chunk group by chunk group. See docs/PROTOCOL.md.

use serde::{Deserialize, Serialize};

pub use crate::wire::FrameError;
use crate::{
    Hash,
    wire::{self, Prefix},
};

/// Version carried in every [`JobRequest`].
pub const JOBS_PROTOCOL_VERSION: u8 = 1;

/// Largest encoded request (the SQL text dominates).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest encoded update (a signed result manifest carries the query text back).
pub const MAX_UPDATE_BYTES: usize = 128 * 1024;

/// Largest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 32 * 1024;

/// Stable failure codes of a job (in [`JobUpdate::Failed`]).
pub mod codes {
    pub const MALFORMED_REQUEST: u32 = 1;
    pub const UNSUPPORTED_VERSION: u32 = 2;
    /// The dataset is not served here, or not open to this buyer.
    pub const UNKNOWN_DATASET: u32 = 3;
    /// The query was refused before it ran: DDL, DML, a statement, a parse or planning error.
    pub const QUERY_REFUSED: u32 = 4;
    /// The query ran and failed (a type error at run time, an unreadable file).
    pub const QUERY_FAILED: u32 = 5;
    /// The job used more memory than its limit.
    pub const MEMORY_LIMIT: u32 = 6;
    /// The job ran past its wall-time or CPU-time limit.
    pub const TIME_LIMIT: u32 = 7;
    /// The result is larger than the provider stores for one job.
    pub const RESULT_TOO_LARGE: u32 = 8;
    /// The sandbox could not start the job (runc missing, bad image).
    pub const SANDBOX: u32 = 9;
    /// The queue is full; try later.
    pub const BUSY: u32 = 10;
    /// The program exited with a nonzero status.
    pub const PROGRAM_FAILED: u32 = 11;
    /// This provider does not run this kind of job.
    pub const UNSUPPORTED_JOB: u32 = 12;
    /// The dataset is sold here: the job needs a job deal ([`super::JobUpdate::PaymentRequired`]).
    pub const PAYMENT_REQUIRED: u32 = 13;
    /// The job deal is not one this provider accepts (unknown, not open, another provider,
    /// dataset or buyer, below the price, already used, not a job deal).
    pub const BAD_DEAL: u32 = 14;
    pub const INTERNAL: u32 = 20;

    /// A short name for a code, for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            MALFORMED_REQUEST => "malformed request",
            UNSUPPORTED_VERSION => "unsupported protocol version",
            UNKNOWN_DATASET => "unknown dataset",
            QUERY_REFUSED => "query refused",
            QUERY_FAILED => "query failed",
            MEMORY_LIMIT => "memory limit exceeded",
            TIME_LIMIT => "time limit exceeded",
            RESULT_TOO_LARGE => "result too large",
            SANDBOX => "sandbox failure",
            BUSY => "provider busy",
            PROGRAM_FAILED => "program failed",
            UNSUPPORTED_JOB => "job kind not supported here",
            PAYMENT_REQUIRED => "payment required",
            BAD_DEAL => "job deal refused",
            INTERNAL => "provider internal error",
            _ => "unknown code",
        }
    }
}

/// How a SQL result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ResultFormat {
    #[default]
    Parquet,
    Csv,
}

impl ResultFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
        }
    }

    /// The format a result file name asks for, by extension.
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        path.extension()?.to_str()?.parse().ok()
    }

    /// File extension of a result in this format.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

/// A name that is none of a closed set's (an engine, a result format).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?} (expected {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub got: String,
    pub expected: &'static str,
}

impl std::str::FromStr for ResultFormat {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            other => Err(UnknownName { what: "result format", got: other.into(), expected: "parquet or csv" }),
        }
    }
}

/// The engine a SQL job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Engine {
    /// DataFusion in the job's worker process.
    #[default]
    DataFusion,
    /// Apache DataFusion Ballista: the provider's scheduler, or an in-process standalone
    /// cluster inside the job's sandbox (providers built with the `ballista` feature).
    Ballista,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataFusion => "datafusion",
            Self::Ballista => "ballista",
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "datafusion" => Ok(Self::DataFusion),
            "ballista" => Ok(Self::Ballista),
            other => Err(UnknownName { what: "engine", got: other.into(), expected: "datafusion or ballista" }),
        }
    }
}

/// Largest command line of a container job (all arguments together).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobSpec {
    /// A read-only SQL query over the dataset's tabular files (tables named by file stem), run
    /// on `engine` (the signed manifest's `engine` names it and its version).
    Sql { query: String, format: ResultFormat, engine: Engine },
    /// A program in an OCI image, named by the SHA-256 of its archive (uploaded when the provider
    /// does not have it), with the dataset read-only at `/data`; what it writes to `/out` is the
    /// result (a collection). An empty `cmd` runs the image's own command.
    Container { image_sha256: [u8; 32], image_size: u64, cmd: Vec<String> },
}

impl JobSpec {
    /// The text a result manifest records for this job: the SQL, or the image and command.
    pub fn describe(&self) -> String {
        match self {
            Self::Sql { query, .. } => query.clone(),
            Self::Container { image_sha256, cmd, .. } => format!(
                "oci-archive sha256:{} cmd {}",
                hex::encode(image_sha256),
                serde_json::to_string(cmd).expect("strings serialize")
            ),
        }
    }

    /// [`JobResult::kind`] of a SQL job.
    pub const SQL_KIND: &'static str = "sql";
    /// [`JobResult::kind`] of a container job.
    pub const CONTAINER_KIND: &'static str = "container";

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sql { .. } => Self::SQL_KIND,
            Self::Container { .. } => Self::CONTAINER_KIND,
        }
    }

    /// The result format a manifest must state: parquet / csv, or `collection` for a container.
    pub fn result_format(&self) -> &'static str {
        match self {
            Self::Sql { format, .. } => format.as_str(),
            Self::Container { .. } => "collection",
        }
    }
}

/// The buyer's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub version: u8,
    pub dataset: Hash,
    pub spec: JobSpec,
    /// For a sold dataset: the job deal that pays for this job.
    pub payment: Option<JobPayment>,
}

/// A job deal: an escrow deal opened for one job, with `pricePerByte = 0`, `window = 0` and
/// `maxAmount` ≥ the provider's price per job. The buyer proves it owns the deal with the same
/// EIP-712 `Hello{dealId, buyerNodeId}` signature as on `bdc/paid/1` (escrow domain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPayment {
    pub deal_id: [u8; 32],
    /// `abi.encode(Terms)` of the job deal (checked against `deal_id` before the chain is asked).
    pub terms: Vec<u8>,
    pub hello_sig: Vec<u8>,
}

/// What a finished job produced. Signed by the provider (EIP-712 `JobResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Chosen by the provider, unique per job.
    pub job_id: [u8; 32],
    /// The escrow deal paying for the job; all zero for a free job.
    pub deal_id: [u8; 32],
    pub dataset: Hash,
    /// "sql" or "container".
    pub kind: String,
    /// The SQL text as run, or the image and command ([`JobSpec::describe`]).
    pub query: String,
    /// Engine and version, e.g. "datafusion 55.2.0", or "runc 1.1.5 image sha256:…".
    pub engine: String,
    /// BLAKE3 root of the result: a raw blob (SQL) or a collection of the files in `/out`.
    pub result_root: Hash,
    /// "parquet", "csv" or "collection".
    pub format: String,
    /// Rows of a SQL result; files of a container's result.
    pub rows: u64,
    pub bytes: u64,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// A result with the provider's signature (65 bytes, `r || s || v`) and claimed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedJobResult {
    pub result: JobResult,
    pub signer: [u8; 20],
    pub sig: Vec<u8>,
}

/// The provider's messages on a job stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobUpdate {
    /// Accepted; `ahead` jobs run before this one.
    Queued {
        job_id: [u8; 32],
        ahead: u32,
    },
    /// The provider does not have the container image: the buyer sends the archive's bytes
    /// (exactly `image_size`) on its side of the stream, then finishes it.
    SendImage,
    /// Started in the sandbox.
    Running,
    Done(Box<SignedJobResult>),
    Failed {
        code: u32,
        reason: String,
    },
    /// The dataset is sold here (final update): open a job deal for at least `price` token base
    /// units with `provider` and ask again with [`JobRequest::payment`].
    PaymentRequired {
        price: u128,
        provider: [u8; 20],
        chain_id: u64,
        escrow: [u8; 20],
        /// The arbiters the provider accepts on the job deal.
        arbiters: Vec<[u8; 20]>,
    },
    /// The buyer's receipt for a paid job is stored (final update).
    Receipted {
        amount: u128,
    },
}

/// SHA-256 of a file: the name of a container image archive.
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// `u32` big-endian length, then the postcard bytes ([`crate::wire`]).
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    wire::encode(msg, Prefix::U32)
}

/// Decodes a frame body (without its length prefix), refusing bodies above `limit`.
pub fn decode<T: for<'a> Deserialize<'a>>(body: &[u8], limit: usize) -> Result<T, FrameError> {
    wire::decode(body, limit)
}

/// Reads the next message of a `bdc/jobs/1` stream, at most `limit` bytes; `Ok(None)` at the
/// stream's clean end.
pub async fn read<T: for<'a> Deserialize<'a>, R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    wire::read(r, Prefix::U32, limit).await
}

/// Table names for a dataset's files: the lowercased file stem (`trades.parquet` → `trades`)
/// when it is unique and a plain identifier, else the whole relative path without its
/// extension with every other character turned into `_` (`2024/01/trades.parquet` →
/// `2024_01_trades`). Only files with a tabular extension are listed (see [`table_kind`]); the
/// `bdc.json` manifest is not a table.
pub fn table_names(files: &[String]) -> Vec<(String, String)> {
    let tabular: Vec<&String> =
        files.iter().filter(|f| f.as_str() != crate::protocol::MANIFEST_NAME && table_kind(f).is_some()).collect();
    let stem = |f: &str| {
        let base = f.rsplit('/').next().unwrap_or(f);
        base.split('.').next().unwrap_or(base).to_lowercase()
    };
    let ident = |s: &str| {
        let s: String =
            s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        s
    };
    let mut out = Vec::with_capacity(tabular.len());
    for f in &tabular {
        let s = stem(f);
        let unique = tabular.iter().filter(|g| stem(g) == s).count() == 1;
        let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let name = if unique && plain {
            s
        } else {
            let no_ext = match f.rfind('.') {
                Some(i) if i > f.rfind('/').map_or(0, |j| j + 1) => &f[..i],
                _ => f.as_str(),
            };
            ident(no_ext)
        };
        out.push((name, (*f).clone()));
    }
    out
}

/// The tabular kind of a file, by extension: parquet, csv, or json (JSON lines).
pub fn table_kind(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    if lower.ends_with(".parquet") {
        Some("parquet")
    } else if lower.ends_with(".csv") {
        Some("csv")
    } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
        Some("json")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let req = JobRequest {
            version: JOBS_PROTOCOL_VERSION,
            dataset: Hash::new(b"x"),
            spec: JobSpec::Sql { query: "SELECT 1".into(), format: ResultFormat::Csv, engine: Engine::DataFusion },
            payment: Some(JobPayment { deal_id: [7; 32], terms: vec![2; 416], hello_sig: vec![1; 65] }),
        };
        let f = frame(&req);
        assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        let back: JobRequest = decode(&f[4..], MAX_REQUEST_BYTES).unwrap();
        assert_eq!(back, req);
        assert!(matches!(decode::<JobRequest>(&f[4..], 3), Err(FrameError::TooLarge { .. })));
        assert!(matches!(decode::<JobRequest>(&[0xff, 0xff], 100), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn table_names_use_stems_and_fall_back_to_paths() {
        let files: Vec<String> = [
            "bdc.json",
            "Trades.parquet",
            "quotes.csv",
            "2024/a.parquet",
            "2025/a.parquet",
            "my file.csv",
            "README.md",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let names = table_names(&files);
        let get = |f: &str| names.iter().find(|(_, g)| g == f).map(|(n, _)| n.as_str());
        assert_eq!(get("Trades.parquet"), Some("trades"));
        assert_eq!(get("quotes.csv"), Some("quotes"));
        assert_eq!(get("2024/a.parquet"), Some("2024_a"));
        assert_eq!(get("2025/a.parquet"), Some("2025_a"));
        assert_eq!(get("my file.csv"), Some("my_file"));
        assert_eq!(get("README.md"), None);
        assert_eq!(get("bdc.json"), None);
    }
}
