//! What an arbiter checks before it rules on a dispute (`bdc arbiter review`).
//!
//! The arbiter trusts neither party. It reads the evidence the buyer committed to on chain
//! (checked against the committed hash), its own verified copy of the deal's dataset, and what
//! the provider signed; and it checks the buyer's claim against them:
//! - **a wrong job result**: it checks the query can have one answer (no volatile or
//!   time-dependent function), re-runs it twice with different parallelism ([`rerun`]: child
//!   processes under time and size limits), and calls it nondeterministic when the two runs
//!   disagree; then compares result roots, row counts, and the rows of the buyer's copy of the
//!   signed result (checked against the signed root; [`rows`]), so a result that differs only in
//!   row order, encoding or the last bits of a float is not called wrong;
//! - **data contradicting its manifest**: it checks every claim of `bdc.json` (file list,
//!   sizes, hashes, schemas) against the verified bytes.
//!
//! The outcome is a [`Ruling`] with the findings that support it; `bdc arbiter resolve` puts a
//! ruling on chain.

pub mod rerun;
pub mod rows;

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use bdc_contracts::client::Terms;
use bdc_core::{
    Hash,
    evidence::{Claim, Evidence},
    jobs::{Engine, JobSpec, ResultFormat, SignedJobResult, codes},
    manifest::DatasetManifest,
    protocol::MANIFEST_NAME,
};
use bdc_provider::jobs::worker::engine_name;
use serde::Serialize;

use self::{
    rerun::RerunLimits,
    rows::{Comparison, show},
};

/// Rows quoted in a finding when results differ.
const QUOTED_ROWS: usize = 3;

/// Largest result (signed or re-run) whose rows are compared in memory.
pub const MAX_COMPARED_BYTES: u64 = 512 << 20;

/// Who the review finds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ruling {
    /// The claim holds: rule for the buyer (`bdc arbiter resolve --for buyer`).
    Buyer,
    /// The claim does not hold (or the evidence proves nothing): rule for the provider.
    Provider,
    /// The evidence is not enough to decide either way; the findings say what is missing.
    Inconclusive,
}

/// A review's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub ruling: Ruling,
    /// "wrong_result" or "data_contradicts_manifest".
    pub claim: &'static str,
    /// Why, one statement each, the deciding one first.
    pub findings: Vec<String>,
}

impl Review {
    fn new(claim: &'static str, ruling: Ruling, first: impl Into<String>) -> Self {
        Self { ruling, claim, findings: vec![first.into()] }
    }
}

/// Why a review could not be made. (A claim that does not hold is a [`Review`], not an error.)
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the evidence ({got}) is not what the buyer committed to on chain ({committed})")]
    EvidenceMismatch { committed: B256, got: B256 },
    #[error(transparent)]
    Evidence(#[from] bdc_core::evidence::EvidenceError),
    #[error("the evidence is for deal {evidence_deal}, not for deal {deal}")]
    WrongDeal { evidence_deal: String, deal: B256 },
    #[error("the result file {path} ({got}) is not the signed result ({signed})")]
    ResultFileMismatch { path: PathBuf, got: Hash, signed: Hash },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot run the re-run's worker {path}: {source}")]
    Worker { path: PathBuf, source: std::io::Error },
}

/// Checks `bytes` against the hash committed with the dispute, then parses them as evidence
/// for `deal`.
pub fn open_evidence(bytes: &[u8], committed: B256, deal: B256) -> Result<Evidence, ReviewError> {
    let got = B256::from(*Evidence::hash_of(bytes).as_bytes());
    if got != committed {
        return Err(ReviewError::EvidenceMismatch { committed, got });
    }
    let e = Evidence::from_bytes(bytes)?;
    if e.deal.parse::<B256>().ok() != Some(deal) {
        return Err(ReviewError::WrongDeal { evidence_deal: e.deal, deal });
    }
    Ok(e)
}

/// The BLAKE3 root of a file (what iroh-blobs names it as a raw blob).
pub fn file_root(path: &Path) -> Result<Hash, ReviewError> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path).map_err(|source| ReviewError::Io { path: path.to_path_buf(), source })?;
    Ok(Hash::from_bytes(*h.finalize().as_bytes()))
}

/// What a review works on: the deal, the evidence, the arbiter's verified copy of the dataset
/// (exported files), the buyer's copy of the signed result if given, and a scratch directory.
pub struct ReviewInput<'a> {
    pub deal: B256,
    pub terms: &'a Terms,
    pub evidence: &'a Evidence,
    pub data: &'a Path,
    /// Names of the dataset's files as its verified collection lists them.
    pub files: &'a [String],
    pub result_file: Option<&'a Path>,
    pub work: &'a Path,
    pub rerun: &'a RerunLimits,
}

/// Reviews the buyer's claim.
pub async fn review(input: &ReviewInput<'_>) -> Result<Review, ReviewError> {
    match &input.evidence.claim {
        Claim::WrongResult { results } => review_result(input, results).await,
        Claim::DataContradictsManifest => review_manifest(input.data, input.files),
    }
}

const WRONG_RESULT: &str = "wrong_result";

async fn review_result(input: &ReviewInput<'_>, results: &[SignedJobResult]) -> Result<Review, ReviewError> {
    let provider = input.terms.provider;
    let deal_root = Hash::from_bytes(input.terms.datasetRoot.0);
    let decide = |ruling, why: String| Ok(Review::new(WRONG_RESULT, ruling, why));
    let Some(signed) = results.iter().find(|r| r.result.deal_id == input.deal.0) else {
        return decide(Ruling::Provider, format!("the evidence holds no result manifest for deal {}", input.deal));
    };
    match bdc_contracts::jobs::job_result_signer(signed) {
        Ok(a) if a == provider => {}
        Ok(a) => {
            return decide(
                Ruling::Provider,
                format!("the result manifest is signed by {a}, not by the deal's provider {provider}"),
            );
        }
        Err(e) => return decide(Ruling::Provider, format!("the result manifest's signature does not verify: {e}")),
    }
    let r = &signed.result;
    if r.dataset != deal_root {
        return decide(
            Ruling::Buyer,
            format!("the provider signed a result over dataset {} for a deal on dataset {deal_root}", r.dataset),
        );
    }
    if r.kind != JobSpec::SQL_KIND {
        return decide(
            Ruling::Inconclusive,
            format!("a {:?} job is not re-run by the arbiter (SQL jobs only): compare replicas' signed roots", r.kind),
        );
    }
    let Ok(format) = r.format.parse::<ResultFormat>() else {
        return decide(
            Ruling::Buyer,
            format!("the provider signed a SQL result in format {:?}, which no SQL job writes", r.format),
        );
    };
    // a query whose answer is not fixed by the data has no one right result
    match rerun::unfixed_functions(input.data, &r.query).await {
        Ok(f) if !f.is_empty() => {
            return decide(
                Ruling::Inconclusive,
                format!("the query is not deterministic: it calls {}, whose value the data does not fix", f.join(", ")),
            );
        }
        Ok(_) => {}
        Err(e) => {
            return decide(Ruling::Inconclusive, format!("the signed query does not plan on the arbiter's copy: {e}"));
        }
    }
    let mut notes = Vec::new();
    let here = engine_name(Engine::DataFusion);
    if r.engine != here {
        notes.push(format!("the provider ran {:?}; the arbiter re-ran on {here:?}", r.engine));
    }
    let query_file = input.work.join("query.sql");
    std::fs::write(&query_file, &r.query).map_err(|source| ReviewError::Io { path: query_file.clone(), source })?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut runs = Vec::new();
    for (i, threads) in [1, cores.max(4)].into_iter().enumerate() {
        let out = input.work.join(format!("rerun-{i}.{}", format.extension()));
        let spill = input.work.join("spill");
        let res = rerun::run(input.rerun, input.data, &query_file, format, threads, &out, &spill)
            .await
            .map_err(|source| ReviewError::Worker { path: input.rerun.worker.clone(), source })?;
        match res {
            Ok(rep) => runs.push((out, rep.rows)),
            Err(f) => {
                let mut rev = Review::new(
                    WRONG_RESULT,
                    Ruling::Inconclusive,
                    format!(
                        "the signed query fails on the arbiter's copy ({}: {}), where the provider signed a result",
                        codes::name(f.code),
                        f.reason
                    ),
                );
                rev.findings.extend(notes);
                return Ok(rev);
            }
        }
    }
    let roots = [file_root(&runs[0].0)?, file_root(&runs[1].0)?];
    let own = roots[0];
    if roots[0] != roots[1] {
        // the runs differ in bytes: they must agree on rows, else the query has no one answer
        match (read_compared(&runs[0].0, format)?, read_compared(&runs[1].0, format)?) {
            (Ok(a), Ok(b)) if matches!(rows::compare(&a, &b), Comparison::SameOrder | Comparison::OtherOrder) => {}
            (Ok(_), Ok(_)) => {
                return decide(
                    Ruling::Inconclusive,
                    "the query is not deterministic: two re-runs with different parallelism give different rows (a LIMIT or an aggregate without a total order?)"
                        .into(),
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                return decide(Ruling::Inconclusive, format!("the re-run is not comparable: {e}"));
            }
        }
    }
    let replicas = replica_findings(results, input.deal, provider, r, &roots);
    let mut rev = if roots.contains(&r.result_root) {
        Review::new(
            WRONG_RESULT,
            Ruling::Provider,
            format!(
                "re-running the signed query on the verified dataset gives the signed result root {}",
                r.result_root
            ),
        )
    } else if runs[0].1 != r.rows {
        Review::new(
            WRONG_RESULT,
            Ruling::Buyer,
            format!(
                "the provider signed a result of {} rows; the query gives {} rows on the verified dataset (root {own}, signed {})",
                r.rows, runs[0].1, r.result_root
            ),
        )
    } else if let Some(path) = input.result_file {
        // read a copy made while hashing it: the file cannot change between the two
        let copy = input.work.join(format!("signed.{}", format.extension()));
        std::fs::copy(path, &copy).map_err(|source| ReviewError::Io { path: path.to_path_buf(), source })?;
        let got = file_root(&copy)?;
        if got != r.result_root {
            return Err(ReviewError::ResultFileMismatch { path: path.to_path_buf(), got, signed: r.result_root });
        }
        compare_signed(&copy, &runs[0].0, format)?
    } else {
        Review::new(
            WRONG_RESULT,
            Ruling::Inconclusive,
            format!(
                "the result roots differ ({own} here, {} signed) and both have {} rows: give the buyer's copy of the signed result (--result-file) to compare rows",
                r.result_root, r.rows
            ),
        )
    };
    rev.findings.extend(replicas);
    rev.findings.extend(notes);
    Ok(rev)
}

/// Why a result's rows are not compared.
#[derive(Debug)]
enum NotCompared {
    TooLarge(u64),
    Unreadable { format: ResultFormat, source: rows::ReadError },
}

impl std::fmt::Display for NotCompared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(len) => write!(f, "{len} bytes, more than the {MAX_COMPARED_BYTES} this review compares"),
            Self::Unreadable { format, source } => write!(f, "not a readable {} file: {source}", format.as_str()),
        }
    }
}

/// The rows of a result file, or why they are not compared here.
fn read_compared(path: &Path, format: ResultFormat) -> Result<Result<rows::Rows, NotCompared>, ReviewError> {
    let len = std::fs::metadata(path).map_err(|source| ReviewError::Io { path: path.to_path_buf(), source })?.len();
    if len > MAX_COMPARED_BYTES {
        return Ok(Err(NotCompared::TooLarge(len)));
    }
    Ok(rows::read(path, format).map_err(|source| NotCompared::Unreadable { format, source }))
}

/// What the other signed manifests in the evidence (replicas of the job at other providers)
/// say, against the arbiter's own result. Their signers are whatever keys signed them: the
/// evidence does not show who they are.
fn replica_findings(
    results: &[SignedJobResult],
    deal: B256,
    provider: Address,
    disputed: &bdc_core::jobs::JobResult,
    own: &[Hash],
) -> Vec<String> {
    let mut out = Vec::new();
    for s in results.iter().filter(|s| s.result.deal_id != deal.0) {
        let who = match bdc_contracts::jobs::job_result_signer(s) {
            Ok(a) if a == provider => "the deal's provider (another deal)".to_string(),
            Ok(a) => format!("{a} (a key the evidence does not identify)"),
            Err(_) => {
                out.push("a replica manifest's signature does not verify: ignored".into());
                continue;
            }
        };
        let same_job = s.result.query == disputed.query
            && s.result.dataset == disputed.dataset
            && s.result.format == disputed.format;
        if !same_job {
            out.push(format!("the replica manifest signed by {who} is for another job: ignored"));
        } else if own.contains(&s.result.result_root) {
            out.push(format!("a replica signed by {who} agrees with the arbiter's re-run"));
        } else {
            out.push(format!("a replica signed by {who} ({}) differs from the arbiter's re-run", s.result.result_root));
        }
    }
    out
}

/// Compares the rows of the signed result (`signed`, the buyer's copy, checked against the
/// signed root) with the re-run's.
fn compare_signed(signed: &Path, rerun: &Path, format: ResultFormat) -> Result<Review, ReviewError> {
    let ours = match read_compared(rerun, format)? {
        Ok(r) => r,
        Err(e) => {
            return Ok(Review::new(WRONG_RESULT, Ruling::Inconclusive, format!("the re-run is not comparable: {e}")));
        }
    };
    let theirs = match read_compared(signed, format)? {
        Ok(r) => r,
        // the provider wrote and signed these bytes: a result that does not read is wrong
        Err(e @ NotCompared::Unreadable { .. }) => {
            return Ok(Review::new(WRONG_RESULT, Ruling::Buyer, format!("the signed result is {e}")));
        }
        Err(e @ NotCompared::TooLarge(_)) => {
            return Ok(Review::new(WRONG_RESULT, Ruling::Inconclusive, format!("the signed result is {e}")));
        }
    };
    let quote = |rows: &[Vec<rows::Cell>]| rows.iter().take(QUOTED_ROWS).map(|r| show(r)).collect::<Vec<_>>().join(" ");
    Ok(match rows::compare(&theirs, &ours) {
        Comparison::SameOrder => Review::new(
            WRONG_RESULT,
            Ruling::Provider,
            "the signed result holds the re-run's rows in the same order; the files differ in encoding only",
        ),
        Comparison::OtherOrder => Review::new(
            WRONG_RESULT,
            Ruling::Provider,
            "the signed result holds the re-run's rows in another order (the query does not fix the order of every row)",
        ),
        Comparison::OtherColumns { signed, rerun } => Review::new(
            WRONG_RESULT,
            Ruling::Buyer,
            format!("the signed result's columns are {signed:?}; the query gives {rerun:?}"),
        ),
        Comparison::OtherRows { extra, missing } => {
            let mut rev = Review::new(
                WRONG_RESULT,
                Ruling::Buyer,
                format!(
                    "the signed result differs from the query's result on the verified dataset: {} rows it holds are not in the query's result, {} rows of the query's result are missing",
                    extra.len(),
                    missing.len()
                ),
            );
            if !extra.is_empty() {
                rev.findings.push(format!("signed but wrong: {}", quote(&extra)));
            }
            if !missing.is_empty() {
                rev.findings.push(format!("missing from the signed result: {}", quote(&missing)));
            }
            rev
        }
    })
}

const DATA_CLAIM: &str = "data_contradicts_manifest";

/// Checks every claim of the dataset's `bdc.json` against the files of its verified copy.
fn review_manifest(data: &Path, files: &[String]) -> Result<Review, ReviewError> {
    if !files.iter().any(|f| f == MANIFEST_NAME) {
        return Ok(Review::new(
            DATA_CLAIM,
            Ruling::Inconclusive,
            format!("the dataset holds no {MANIFEST_NAME} (a raw blob): there is no manifest to contradict"),
        ));
    }
    let mpath = data.join(MANIFEST_NAME);
    let bytes = std::fs::read(&mpath).map_err(|source| ReviewError::Io { path: mpath.clone(), source })?;
    let manifest = match DatasetManifest::from_bytes(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Review::new(
                DATA_CLAIM,
                Ruling::Buyer,
                format!("the dataset's {MANIFEST_NAME} is not valid: {e}"),
            ));
        }
    };
    let (mut failed, mut unsure) = (Vec::new(), Vec::new());
    for entry in &manifest.files {
        if !files.contains(&entry.name) {
            failed.push(format!("the manifest lists {}, which the dataset does not hold", entry.name));
            continue;
        }
        let path = data.join(&entry.name);
        let size = std::fs::metadata(&path).map_err(|source| ReviewError::Io { path: path.clone(), source })?.len();
        if size != entry.size {
            failed.push(format!("{}: the manifest says {} bytes, the file has {size}", entry.name, entry.size));
        }
        let root = file_root(&path)?;
        if root != entry.hash {
            failed.push(format!("{}: the manifest says hash {}, the file's is {root}", entry.name, entry.hash));
        }
        let columns = bdc_provider::schema::file_columns(&path, &entry.name);
        if columns != entry.columns {
            let show = |c: &[bdc_core::manifest::Column]| {
                c.iter().map(|c| format!("{} {}", c.name, c.data_type)).collect::<Vec<_>>().join(", ")
            };
            let line = format!(
                "{}: the manifest says columns [{}], the file has [{}]",
                entry.name,
                show(&entry.columns),
                show(&columns)
            );
            let names = |c: &[bdc_core::manifest::Column]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
            // the names are in the file; a type is what a reader of this build infers (CSV,
            // JSON lines) or prints, which another build may do differently
            if names(&columns) != names(&entry.columns) {
                failed.push(line);
            } else {
                unsure.push(format!("{line} (types only: they may come from another build's reader)"));
            }
        }
    }
    for f in files.iter().filter(|f| f.as_str() != MANIFEST_NAME) {
        if !manifest.files.iter().any(|e| &e.name == f) {
            failed.push(format!("the dataset holds {f}, which the manifest does not list"));
        }
    }
    if failed.is_empty() && !unsure.is_empty() {
        let mut rev = Review::new(DATA_CLAIM, Ruling::Inconclusive, "only column types differ from the manifest");
        rev.findings.extend(unsure);
        return Ok(rev);
    }
    if failed.is_empty() {
        return Ok(Review::new(
            DATA_CLAIM,
            Ruling::Provider,
            format!(
                "every claim of the manifest holds on the verified bytes: {} files, their sizes, hashes and schemas",
                manifest.files.len()
            ),
        ));
    }
    let first = format!("{} claim(s) of the dataset's manifest fail on the verified bytes", failed.len());
    let mut rev = Review::new(DATA_CLAIM, Ruling::Buyer, first);
    rev.findings.extend(failed);
    rev.findings.extend(unsure);
    Ok(rev)
}

/// The address a review's ruling favours, for messages.
pub fn favoured(ruling: Ruling, terms: &Terms) -> Option<Address> {
    match ruling {
        Ruling::Buyer => Some(terms.buyer),
        Ruling::Provider => Some(terms.provider),
        Ruling::Inconclusive => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset dir with one CSV file and a manifest that `edit` may make lie.
    fn dataset(edit: impl FnOnce(&mut DatasetManifest)) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("quotes.csv");
        std::fs::write(&csv, "ts,price\n1,10.5\n2,11.0\n").unwrap();
        let mut m = DatasetManifest {
            version: bdc_core::manifest::MANIFEST_VERSION,
            name: "quotes".into(),
            description: String::new(),
            license: String::new(),
            tags: vec![],
            vendor: None,
            files: vec![bdc_core::manifest::FileEntry {
                name: "quotes.csv".into(),
                size: std::fs::metadata(&csv).unwrap().len(),
                hash: file_root(&csv).unwrap(),
                media_type: "text/csv".into(),
                columns: bdc_provider::schema::file_columns(&csv, "quotes.csv"),
            }],
        };
        assert_eq!(m.files[0].columns.len(), 2);
        edit(&mut m);
        std::fs::write(dir.path().join(MANIFEST_NAME), m.to_bytes()).unwrap();
        (dir, vec![MANIFEST_NAME.to_string(), "quotes.csv".to_string()])
    }

    #[test]
    fn every_claim_of_a_manifest_is_checked_against_the_bytes() {
        let (dir, files) = dataset(|_| {});
        let rev = review_manifest(dir.path(), &files).unwrap();
        assert_eq!(rev.ruling, Ruling::Provider, "{:?}", rev.findings);
        let lie = |edit: fn(&mut DatasetManifest), expect: &str| {
            let (dir, files) = dataset(edit);
            let rev = review_manifest(dir.path(), &files).unwrap();
            assert_eq!(rev.ruling, Ruling::Buyer, "{:?}", rev.findings);
            assert!(rev.findings.iter().any(|f| f.contains(expect)), "{expect:?} not in {:?}", rev.findings);
        };
        lie(|m| m.files[0].size += 1, "the manifest says 24 bytes");
        lie(|m| m.files[0].hash = Hash::new(b"other"), "the manifest says hash");
        lie(|m| m.files[0].columns[1].name = "bid".into(), "the manifest says columns [ts Int64, bid Float64]");
        // a type alone may be another build's inference: not decided
        let (dir, files) = dataset(|m| m.files[0].columns[1].data_type = "Utf8".into());
        let rev = review_manifest(dir.path(), &files).unwrap();
        assert_eq!(rev.ruling, Ruling::Inconclusive, "{:?}", rev.findings);
        lie(|m| m.files[0].name = "trades.csv".into(), "lists trades.csv, which the dataset does not hold");
        lie(|m| m.files[0].name = "trades.csv".into(), "holds quotes.csv, which the manifest does not list");
        // a raw blob has no manifest: nothing to contradict
        let (dir, _) = dataset(|_| {});
        let rev = review_manifest(dir.path(), &["quotes.csv".to_string()]).unwrap();
        assert_eq!(rev.ruling, Ruling::Inconclusive);
        // a manifest that does not parse is the vendor's fault
        let (dir, files) = dataset(|_| {});
        std::fs::write(dir.path().join(MANIFEST_NAME), b"{}").unwrap();
        assert_eq!(review_manifest(dir.path(), &files).unwrap().ruling, Ruling::Buyer);
    }

    #[test]
    fn evidence_must_match_its_commitment_and_deal() {
        let deal = B256::repeat_byte(7);
        let e = Evidence {
            version: bdc_core::evidence::EVIDENCE_VERSION,
            deal: format!("{deal:#x}"),
            claim: Claim::DataContradictsManifest,
            dataset_ticket: None,
            note: String::new(),
        };
        let bytes = e.to_bytes();
        let committed = B256::from(*Evidence::hash_of(&bytes).as_bytes());
        assert_eq!(open_evidence(&bytes, committed, deal).unwrap(), e);
        // a byte changed after the dispute
        let mut tampered = bytes.clone();
        tampered.push(b' ');
        assert!(matches!(open_evidence(&tampered, committed, deal), Err(ReviewError::EvidenceMismatch { .. })));
        // evidence written for another deal
        assert!(matches!(open_evidence(&bytes, committed, B256::repeat_byte(8)), Err(ReviewError::WrongDeal { .. })));
    }
}
