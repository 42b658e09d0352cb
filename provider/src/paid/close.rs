//! Why a paid connection ends. Each reason knows its `bdc/paid/1` close code
//! ([`HasErrorCode`]), so the code a buyer sees comes from the error's type.

use alloy::primitives::B256;
use bdc_core::{
    paid::{FrameError, codes},
    wire::HasErrorCode,
};

use super::{admission::AdmitError, ledger::LedgerError};

/// Why the provider closed a paid connection (or a receipt was refused).
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("no Hello stream within the hello timeout")]
    NoHello,
    #[error("malformed message: {0}")]
    Frame(#[from] FrameError),
    #[error("the stream ended before the Hello")]
    NoHelloMessage,
    #[error("a receipt came before the Hello")]
    ReceiptBeforeHello,
    #[error("a second Hello on the connection")]
    SecondHello,
    #[error("protocol version {0} is not supported")]
    Version(u8),
    #[error("the Hello names another node than the connection's")]
    NodeMismatch,
    #[error(transparent)]
    Admit(Box<AdmitError>),
    #[error("deal {0} is for a dataset not sold here")]
    NotSold(B256),
    #[error(transparent)]
    Receipt(#[from] ReceiptRefusal),
    #[error("deal {0}'s window is spent on bytes nobody receipted")]
    WindowSpent(B256),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the receipt task ended before the connection")]
    ReceiptTaskEnded,
}

impl From<AdmitError> for CloseReason {
    fn from(e: AdmitError) -> Self {
        Self::Admit(Box::new(e))
    }
}

impl HasErrorCode for CloseReason {
    fn code(&self) -> u32 {
        match self {
            Self::NoHello | Self::Frame(_) | Self::NoHelloMessage | Self::ReceiptBeforeHello | Self::SecondHello => {
                codes::MALFORMED_MESSAGE
            }
            Self::Version(_) => codes::UNSUPPORTED_VERSION,
            Self::NodeMismatch => codes::BAD_HELLO_SIGNATURE,
            Self::Admit(e) => e.code(),
            Self::NotSold(_) => codes::NOT_THIS_PROVIDER,
            Self::Receipt(r) => r.code(),
            Self::WindowSpent(_) => codes::WINDOW_SPENT,
            Self::Ledger(_) | Self::ReceiptTaskEnded => codes::INTERNAL,
        }
    }
}

/// Why a receipt was refused (checked offline against the deal and the gate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRefusal {
    #[error("receipt for deal {got}, not {deal}")]
    OtherDeal { deal: B256, got: B256 },
    #[error("receipt not signed by deal {0}'s buyer")]
    BadSignature(B256),
    #[error("receipt of {amount} is above the deal's maximum {max}")]
    AboveMax { amount: u128, max: u128 },
    #[error("receipt for {bytes} bytes, but {sent} were sent")]
    AboveSent { bytes: u64, sent: u64 },
}

impl HasErrorCode for ReceiptRefusal {
    fn code(&self) -> u32 {
        match self {
            Self::OtherDeal { .. } => codes::RECEIPT_FOR_OTHER_DEAL,
            Self::BadSignature(_) => codes::BAD_RECEIPT_SIGNATURE,
            Self::AboveMax { .. } => codes::RECEIPT_ABOVE_MAX,
            Self::AboveSent { .. } => codes::RECEIPT_ABOVE_SENT,
        }
    }
}

/// Why a payload group was not sent (the gate's writer turns it into an I/O error of the stream).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the deal entered its expiry margin")]
    Expiring,
    #[error("the buyer stopped paying")]
    PaymentTimeout,
    #[error("cannot persist sent bytes: {0}")]
    Persist(#[from] LedgerError),
    #[error("no admitted deal on this connection")]
    NoDeal,
}

impl HasErrorCode for GateError {
    fn code(&self) -> u32 {
        match self {
            Self::Expiring => codes::DEAL_EXPIRING,
            Self::PaymentTimeout => codes::PAYMENT_TIMEOUT,
            Self::Persist(_) | Self::NoDeal => codes::INTERNAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_closes_with_its_own_code() {
        let d = B256::repeat_byte(1);
        let cases: [(CloseReason, u32); 8] = [
            (CloseReason::NoHello, codes::MALFORMED_MESSAGE),
            (CloseReason::Version(9), codes::UNSUPPORTED_VERSION),
            (CloseReason::NodeMismatch, codes::BAD_HELLO_SIGNATURE),
            (CloseReason::NotSold(d), codes::NOT_THIS_PROVIDER),
            (ReceiptRefusal::BadSignature(d).into(), codes::BAD_RECEIPT_SIGNATURE),
            (ReceiptRefusal::AboveSent { bytes: 2, sent: 1 }.into(), codes::RECEIPT_ABOVE_SENT),
            (AdmitError::UnknownDeal(d).into(), codes::UNKNOWN_DEAL),
            (CloseReason::WindowSpent(d), codes::WINDOW_SPENT),
        ];
        for (reason, code) in cases {
            assert_eq!(reason.code(), code, "{reason}");
            assert_ne!(codes::name(code.into()), "unknown code", "{reason}");
        }
        assert_eq!(GateError::PaymentTimeout.code(), codes::PAYMENT_TIMEOUT);
        assert_eq!(GateError::Expiring.code(), codes::DEAL_EXPIRING);
    }
}
