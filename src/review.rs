//! What an arbiter checks before it rules on a dispute (`bdc arbiter review`).
//!
//! The arbiter trusts neither party. It reads the evidence the buyer committed to on chain
//! (checked against the committed hash), its own verified copy of the deal's dataset, and what
//! the provider signed; and it checks the buyer's claim against them:
//! - **a wrong job result**: it re-runs the signed query on DataFusion over its copy, compares
//!   result roots, and when they differ compares the rows (of the buyer's copy of the signed
//!   result, checked against the signed root), so a result that differs only in row order or
//!   encoding is not called wrong;
//! - **data contradicting its manifest**: it checks every claim of `bdc.json` (file list,
//!   sizes, hashes, schemas) against the verified bytes.
//!
//! The outcome is a [`Ruling`] with the findings that support it; `bdc arbiter resolve` puts a
//! ruling on chain.

use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use bdc_contracts::client::Terms;
use bdc_core::{
    Hash,
    evidence::{Claim, Evidence},
    jobs::{Engine, ResultFormat, SignedJobResult, codes},
    manifest::DatasetManifest,
    protocol::MANIFEST_NAME,
};
use bdc_provider::jobs::worker::{WorkerArgs, engine_name, run_sql};
use datafusion::{
    arrow::{
        record_batch::RecordBatch,
        util::display::{ArrayFormatter, FormatOptions},
    },
    prelude::{CsvReadOptions, ParquetReadOptions, SessionContext},
};
use serde::Serialize;

/// Memory a re-run may use (DataFusion's pool; it spills past it).
const RERUN_MEMORY: usize = 2 << 30;

/// Rows quoted in a finding when results differ.
const QUOTED_ROWS: usize = 3;

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
    #[error("cannot read the result {path}: {reason}")]
    ReadResult { path: PathBuf, reason: String },
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
    let for_provider = |why: String| Ok(Review::new(WRONG_RESULT, Ruling::Provider, why));
    let Some(signed) = results.iter().find(|r| r.result.deal_id == input.deal.0) else {
        return for_provider(format!("the evidence holds no result manifest for deal {}", input.deal));
    };
    match bdc_contracts::jobs::job_result_signer(signed) {
        Ok(a) if a == provider => {}
        Ok(a) => {
            return for_provider(format!(
                "the result manifest is signed by {a}, not by the deal's provider {provider}"
            ));
        }
        Err(e) => return for_provider(format!("the result manifest's signature does not verify: {e}")),
    }
    let r = &signed.result;
    if r.dataset != deal_root {
        return Ok(Review::new(
            WRONG_RESULT,
            Ruling::Buyer,
            format!("the provider signed a result over dataset {} for a deal on dataset {deal_root}", r.dataset),
        ));
    }
    if r.kind != "sql" {
        return Ok(Review::new(
            WRONG_RESULT,
            Ruling::Inconclusive,
            format!("a {} job is not re-run by the arbiter (SQL jobs only): compare replicas' signed roots", r.kind),
        ));
    }
    let Ok(format) = r.format.parse::<ResultFormat>() else {
        return Ok(Review::new(
            WRONG_RESULT,
            Ruling::Buyer,
            format!("the provider signed a SQL result in format {:?}, which no SQL job writes", r.format),
        ));
    };
    let mut notes = Vec::new();
    let here = engine_name(Engine::DataFusion);
    if r.engine != here {
        notes.push(format!("the provider ran {:?}; the arbiter re-ran on {here:?}", r.engine));
    }
    let rerun = input.work.join(format!("rerun.{}", format.extension()));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let args = WorkerArgs {
        data: input.data,
        query: &r.query,
        out: &rerun,
        format,
        memory_pool: RERUN_MEMORY,
        threads,
        engine: Engine::DataFusion,
        scheduler: None,
    };
    let report = match run_sql(&args).await {
        Ok(rep) => rep,
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
    };
    let own = file_root(&rerun)?;
    let mut replicas = replica_findings(results, input.deal, r, own);
    let mut rev = if own == r.result_root {
        Review::new(
            WRONG_RESULT,
            Ruling::Provider,
            format!("re-running the signed query on the verified dataset gives the signed result root {own}"),
        )
    } else if report.rows != r.rows {
        Review::new(
            WRONG_RESULT,
            Ruling::Buyer,
            format!(
                "the provider signed a result of {} rows; the query gives {} rows on the verified dataset (root {own}, signed {})",
                r.rows, report.rows, r.result_root
            ),
        )
    } else if let Some(path) = input.result_file {
        let got = file_root(path)?;
        if got != r.result_root {
            return Err(ReviewError::ResultFileMismatch { path: path.to_path_buf(), got, signed: r.result_root });
        }
        compare_rows(path, &rerun, format).await?
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
    rev.findings.append(&mut replicas);
    rev.findings.extend(notes);
    Ok(rev)
}

/// What the other signed manifests in the evidence (replicas of the job at other providers)
/// say, against the arbiter's own result.
fn replica_findings(
    results: &[SignedJobResult],
    deal: B256,
    disputed: &bdc_core::jobs::JobResult,
    own: Hash,
) -> Vec<String> {
    let mut out = Vec::new();
    for s in results.iter().filter(|s| s.result.deal_id != deal.0) {
        let who = match bdc_contracts::jobs::job_result_signer(s) {
            Ok(a) => a,
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
        } else if s.result.result_root == own {
            out.push(format!("the replica signed by {who} agrees with the arbiter's re-run"));
        } else {
            out.push(format!(
                "the replica signed by {who} ({}) differs from the arbiter's re-run",
                s.result.result_root
            ));
        }
    }
    out
}

/// Compares the rows of the signed result (`signed`, the buyer's copy) with the re-run's.
async fn compare_rows(signed: &Path, rerun: &Path, format: ResultFormat) -> Result<Review, ReviewError> {
    let (mut theirs, mut ours) = (read_rows(signed, format).await?, read_rows(rerun, format).await?);
    if theirs == ours {
        return Ok(Review::new(
            WRONG_RESULT,
            Ruling::Provider,
            "the signed result holds the re-run's rows in the same order; the files differ in encoding only",
        ));
    }
    theirs.sort();
    ours.sort();
    if theirs == ours {
        return Ok(Review::new(
            WRONG_RESULT,
            Ruling::Provider,
            "the signed result holds the re-run's rows in another order (the query does not fix the order of every row)",
        ));
    }
    let (extra, missing) = multiset_difference(&theirs, &ours);
    let quote =
        |rows: &[&String]| rows.iter().take(QUOTED_ROWS).map(|r| format!("[{r}]")).collect::<Vec<_>>().join(" ");
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
    Ok(rev)
}

/// Rows of `a` not in `b` and rows of `b` not in `a`, counting repeats (both sorted).
fn multiset_difference<'a>(a: &'a [String], b: &'a [String]) -> (Vec<&'a String>, Vec<&'a String>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                only_a.push(x);
                i += 1;
            }
            (Some(_), Some(y)) => {
                only_b.push(y);
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x);
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

/// Every row of a result file, each as its columns' display strings joined by `|`, in file
/// order; the header (column names) first.
async fn read_rows(path: &Path, format: ResultFormat) -> Result<Vec<String>, ReviewError> {
    let err = |reason: String| ReviewError::ReadResult { path: path.to_path_buf(), reason };
    let ctx = SessionContext::new();
    let name = path.to_string_lossy();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let df = match format {
        ResultFormat::Parquet => {
            ctx.read_parquet(name.as_ref(), ParquetReadOptions::default().file_extension(&ext)).await
        }
        ResultFormat::Csv => ctx.read_csv(name.as_ref(), CsvReadOptions::new().file_extension(&ext)).await,
    }
    .map_err(|e| err(e.to_string()))?;
    let header = df.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join("|");
    let batches: Vec<RecordBatch> = df.collect().await.map_err(|e| err(e.to_string()))?;
    let mut rows = vec![header];
    let opts = FormatOptions::default();
    for b in &batches {
        let cols = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        for i in 0..b.num_rows() {
            rows.push(cols.iter().map(|f| f.value(i).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    Ok(rows)
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
    let mut failed = Vec::new();
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
            failed.push(format!(
                "{}: the manifest says columns [{}], the file has [{}]",
                entry.name,
                show(&entry.columns),
                show(&columns)
            ));
        }
    }
    for f in files.iter().filter(|f| f.as_str() != MANIFEST_NAME) {
        if !manifest.files.iter().any(|e| &e.name == f) {
            failed.push(format!("the dataset holds {f}, which the manifest does not list"));
        }
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

    #[test]
    fn multiset_difference_counts_repeats() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (a, b) = (s(&["a", "b", "b", "d"]), s(&["a", "b", "c", "d", "d"]));
        let (only_a, only_b) = multiset_difference(&a, &b);
        assert_eq!(only_a, vec!["b"]);
        assert_eq!(only_b, vec!["c", "d"]);
        assert_eq!(multiset_difference(&a, &a), (vec![], vec![]));
    }

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
        lie(|m| m.files[0].columns[1].data_type = "Utf8".into(), "the manifest says columns [ts Int64, price Utf8]");
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
