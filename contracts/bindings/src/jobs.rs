//! EIP-712 result manifests of compute jobs.
//!
//! A provider signs `JobResult{...}` (every field of [`bdc_core::jobs::JobResult`]) under the domain
//! `{name: "BDC Compute", version: "1"}`. The manifest names its deal (all zero for a free job),
//! the dataset, the query and the result root, so a signature cannot be moved to another job,
//! dataset or result. Checking it needs no chain connection.

use alloy::{
    primitives::{Address, B256, Signature},
    signers::{Signer, SignerSync},
    sol,
    sol_types::{Eip712Domain, SolStruct, eip712_domain},
};
use bdc_core::jobs::{JobResult as ResultManifest, SignedJobResult};

sol! {
    /// What a provider signs for a finished job.
    #[derive(Debug, PartialEq, Eq)]
    struct JobResult {
        bytes32 jobId;
        bytes32 dealId;
        bytes32 datasetRoot;
        string kind;
        string query;
        string engine;
        bytes32 resultRoot;
        string format;
        uint64 rows;
        uint64 bytes;
        uint64 startedMs;
        uint64 finishedMs;
    }
}

pub const DOMAIN_NAME: &str = "BDC Compute";
pub const DOMAIN_VERSION: &str = "1";

/// The compute domain (no chain id: a result manifest is a statement about bytes, not a payment;
/// the deal id inside binds it to a deal when there is one).
pub fn compute_domain() -> Eip712Domain {
    eip712_domain! { name: DOMAIN_NAME, version: DOMAIN_VERSION, }
}

fn to_eip712(r: &ResultManifest) -> JobResult {
    JobResult {
        jobId: B256::from(r.job_id),
        dealId: B256::from(r.deal_id),
        datasetRoot: B256::from(*r.dataset.as_bytes()),
        kind: r.kind.clone(),
        query: r.query.clone(),
        engine: r.engine.clone(),
        resultRoot: B256::from(*r.result_root.as_bytes()),
        format: r.format.clone(),
        rows: r.rows,
        bytes: r.bytes,
        startedMs: r.started_ms,
        finishedMs: r.finished_ms,
    }
}

/// The digest a provider signs for `r`.
pub fn job_result_digest(r: &ResultManifest) -> B256 {
    to_eip712(r).eip712_signing_hash(&compute_domain())
}

/// Why a signed result manifest could not be made or does not check.
#[derive(Debug, thiserror::Error)]
pub enum ResultSigError {
    #[error("signing the result failed: {0}")]
    Sign(#[source] alloy::signers::Error),
    #[error("result signature is malformed: {0}")]
    Malformed(#[source] alloy::primitives::SignatureError),
    #[error(
        "result manifest is not signed by the provider it names: signed by {signer}, claims {claimed} (manifest or signature altered)"
    )]
    NotItsSigner { signer: Address, claimed: Address },
}

/// Signs a result manifest.
pub fn sign_job_result(
    signer: &(impl SignerSync + Signer),
    r: ResultManifest,
) -> Result<SignedJobResult, ResultSigError> {
    let sig = signer.sign_hash_sync(&job_result_digest(&r)).map_err(ResultSigError::Sign)?;
    Ok(SignedJobResult { result: r, signer: signer.address().into_array(), sig: sig.as_bytes().to_vec() })
}

/// Returns the address that signed `s.result`, and checks it is the address `s` claims.
pub fn job_result_signer(s: &SignedJobResult) -> Result<Address, ResultSigError> {
    let sig = Signature::try_from(s.sig.as_slice()).map_err(ResultSigError::Malformed)?;
    let signer = sig.recover_address_from_prehash(&job_result_digest(&s.result)).map_err(ResultSigError::Malformed)?;
    let claimed = Address::from(s.signer);
    if signer != claimed {
        return Err(ResultSigError::NotItsSigner { signer, claimed });
    }
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::local::PrivateKeySigner;
    use bdc_core::Hash;

    fn manifest() -> ResultManifest {
        ResultManifest {
            job_id: [1; 32],
            deal_id: [0; 32],
            dataset: Hash::new(b"dataset"),
            kind: "sql".into(),
            query: "SELECT 1".into(),
            engine: "datafusion 55.2.0".into(),
            result_root: Hash::new(b"result"),
            format: "parquet".into(),
            rows: 1,
            bytes: 300,
            started_ms: 10,
            finished_ms: 20,
        }
    }

    #[test]
    fn signed_results_verify_and_any_change_is_caught() {
        let key = PrivateKeySigner::random();
        let signed = sign_job_result(&key, manifest()).unwrap();
        assert_eq!(job_result_signer(&signed).unwrap(), key.address());
        assert_eq!(signed.signer, key.address().into_array());
        let mut other = signed.clone();
        other.result.result_root = Hash::new(b"other");
        assert!(matches!(job_result_signer(&other).unwrap_err(), ResultSigError::NotItsSigner { .. }));
        let mut other = signed.clone();
        other.result.rows += 1;
        assert!(job_result_signer(&other).is_err());
        let mut other = signed.clone();
        other.result.query.push(' ');
        assert!(job_result_signer(&other).is_err());
        let mut other = signed.clone();
        other.sig[3] ^= 1;
        assert!(job_result_signer(&other).is_err());
        let mut other = signed;
        other.sig.truncate(10);
        assert!(matches!(job_result_signer(&other).unwrap_err(), ResultSigError::Malformed(_)));
    }
}
