//! Why a job was refused or failed. The kind gives the stable `bdc/jobs/1` code
//! ([`HasErrorCode`]); the reason is what the buyer is told (`JobUpdate::Failed`); an internal
//! failure keeps its source for the provider's log.

use bdc_core::{jobs::codes, wire::HasErrorCode};

/// What kind of failure, one per `bdc/jobs/1` failure code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Malformed,
    UnsupportedVersion,
    UnknownDataset,
    QueryRefused,
    QueryFailed,
    MemoryLimit,
    TimeLimit,
    ResultTooLarge,
    Sandbox,
    Busy,
    ProgramFailed,
    UnsupportedJob,
    PaymentRequired,
    BadDeal,
    Internal,
}

impl FailureKind {
    pub fn code(self) -> u32 {
        match self {
            Self::Malformed => codes::MALFORMED_REQUEST,
            Self::UnsupportedVersion => codes::UNSUPPORTED_VERSION,
            Self::UnknownDataset => codes::UNKNOWN_DATASET,
            Self::QueryRefused => codes::QUERY_REFUSED,
            Self::QueryFailed => codes::QUERY_FAILED,
            Self::MemoryLimit => codes::MEMORY_LIMIT,
            Self::TimeLimit => codes::TIME_LIMIT,
            Self::ResultTooLarge => codes::RESULT_TOO_LARGE,
            Self::Sandbox => codes::SANDBOX,
            Self::Busy => codes::BUSY,
            Self::ProgramFailed => codes::PROGRAM_FAILED,
            Self::UnsupportedJob => codes::UNSUPPORTED_JOB,
            Self::PaymentRequired => codes::PAYMENT_REQUIRED,
            Self::BadDeal => codes::BAD_DEAL,
            Self::Internal => codes::INTERNAL,
        }
    }

    /// The kind of a code a worker process reported (an unknown one is internal).
    pub fn from_code(code: u32) -> Self {
        [
            Self::Malformed,
            Self::UnsupportedVersion,
            Self::UnknownDataset,
            Self::QueryRefused,
            Self::QueryFailed,
            Self::MemoryLimit,
            Self::TimeLimit,
            Self::ResultTooLarge,
            Self::Sandbox,
            Self::Busy,
            Self::ProgramFailed,
            Self::UnsupportedJob,
            Self::PaymentRequired,
            Self::BadDeal,
        ]
        .into_iter()
        .find(|k| k.code() == code)
        .unwrap_or(Self::Internal)
    }

    /// Whether the job was refused before it ran (rather than failed while running).
    pub fn refused(self) -> bool {
        matches!(
            self,
            Self::Malformed
                | Self::UnsupportedVersion
                | Self::UnknownDataset
                | Self::QueryRefused
                | Self::Busy
                | Self::UnsupportedJob
                | Self::PaymentRequired
                | Self::BadDeal
        )
    }

    /// Whether a failure of this kind on a sold dataset may be told in full: the provider wrote
    /// the reason itself, or it comes from planning (no data is read then). A query's run-time
    /// error quotes values, a program's stderr anything it read.
    pub fn tells_no_data(self) -> bool {
        matches!(
            self,
            Self::QueryRefused
                | Self::MemoryLimit
                | Self::TimeLimit
                | Self::ResultTooLarge
                | Self::Sandbox
                | Self::Malformed
        )
    }
}

/// A job's failure: its kind, what the buyer is told, and (for the log) the source.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct JobFailure {
    pub kind: FailureKind,
    pub reason: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl JobFailure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into(), source: None }
    }

    /// A failure told as `source` itself.
    pub fn from_error(kind: FailureKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { kind, reason: source.to_string(), source: Some(Box::new(source)) }
    }

    /// A failure caused by `source`; the buyer is told `reason: source`.
    pub fn caused(
        kind: FailureKind,
        reason: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { kind, reason: format!("{reason}: {source}"), source: Some(Box::new(source)) }
    }

    /// An internal failure (the provider's), told as `context: source`.
    pub fn internal(context: impl std::fmt::Display, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::caused(FailureKind::Internal, context, source)
    }

    /// What the buyer of a failed job on a sold dataset is told: a failed job is not paid, so
    /// its details must not carry the data (see [`FailureKind::tells_no_data`]).
    pub fn unpaid(self) -> Self {
        if self.kind.tells_no_data() {
            return self;
        }
        let code = self.kind.code();
        Self {
            reason: format!(
                "{}; the details are not returned for jobs on a sold dataset (they could carry its data, and a failed job is not paid)",
                codes::name(code)
            ),
            ..self
        }
    }
}

impl HasErrorCode for JobFailure {
    fn code(&self) -> u32 {
        self.kind.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes_map_both_ways() {
        for code in 0..32 {
            let kind = FailureKind::from_code(code);
            if kind != FailureKind::Internal {
                assert_eq!(kind.code(), code);
            }
        }
        assert_eq!(FailureKind::from_code(9999), FailureKind::Internal);
        let f = JobFailure::new(FailureKind::QueryFailed, "Cannot cast string 'BTC-USD' to Int32").unpaid();
        assert!(!f.reason.contains("BTC-USD") && f.code() == codes::QUERY_FAILED, "{f}");
        let f = JobFailure::new(FailureKind::TimeLimit, "ran past 10 s").unpaid();
        assert_eq!(f.reason, "ran past 10 s");
    }
}
