//! `bdc/paid/1`: the wire messages of a paid transfer, offers, and pricing.
//!
//! One QUIC connection per (buyer, provider, deal). Bi streams carry ordinary iroh-blobs GET
//! requests. The buyer opens one uni stream and writes length-prefixed postcard messages on it:
//! a [`Hello`] first, then [`SignedReceipt`]s as data verifies, and finishes the stream after the
//! final receipt. The provider answers a protocol violation by closing the connection with one of
//! the stable [`codes`]. See docs/PROTOCOL.md.

use serde::{Deserialize, Serialize};

pub use crate::wire::FrameError;
use crate::wire::{self, Prefix};

/// Version carried in every [`Hello`].
/// Version 2: the Hello carries the deal's terms.
pub const PAID_PROTOCOL_VERSION: u8 = 2;

/// Largest encoded message (length prefix excluded). Hello and receipts are ~140 bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Connection close codes of `bdc/paid/1` (application error codes on the QUIC connection).
pub mod codes {
    /// Normal end: the buyer finished its receipt stream and the provider stored the last receipt.
    pub const DONE: u32 = 0;
    pub const MALFORMED_MESSAGE: u32 = 10;
    pub const UNSUPPORTED_VERSION: u32 = 11;
    pub const UNKNOWN_DEAL: u32 = 12;
    /// The deal names another provider, node id, or a dataset this provider does not serve.
    pub const NOT_THIS_PROVIDER: u32 = 13;
    pub const BAD_HELLO_SIGNATURE: u32 = 14;
    /// Refunded, disputed, expired or not funded.
    pub const DEAL_NOT_OPEN: u32 = 15;
    pub const BAD_RECEIPT_SIGNATURE: u32 = 16;
    pub const RECEIPT_FOR_OTHER_DEAL: u32 = 17;
    pub const RECEIPT_ABOVE_SENT: u32 = 18;
    pub const RECEIPT_ABOVE_MAX: u32 = 19;
    /// The buyer stopped paying: no receipt within the stall timeout while the window was full.
    pub const PAYMENT_TIMEOUT: u32 = 20;
    pub const INTERNAL: u32 = 21;
    /// The deal names an arbiter this provider does not accept (its offer lists those it does).
    pub const ARBITER_NOT_ACCEPTED: u32 = 22;
    /// The deal's vendor or royalty is not what this provider sells the dataset on.
    pub const TERMS_NOT_ACCEPTED: u32 = 23;
    /// The deal expires within the provider's safety margin: bytes sent now could not be redeemed.
    pub const DEAL_EXPIRING: u32 = 24;
    /// The deal's window is spent on bytes an earlier connection sent and the buyer never
    /// receipted (a buyer that crashed mid-window): this deal gets no more bytes; open a new one.
    pub const WINDOW_SPENT: u32 = 25;
    /// The same buyer node opened a newer connection for this deal (it restarted): this one,
    /// likely dead, stops taking the deal's window.
    pub const SUPERSEDED: u32 = 26;

    /// A short name for a code, for error messages.
    pub fn name(code: u64) -> &'static str {
        match code as u32 {
            DONE => "done",
            MALFORMED_MESSAGE => "malformed message",
            UNSUPPORTED_VERSION => "unsupported protocol version",
            UNKNOWN_DEAL => "unknown deal",
            NOT_THIS_PROVIDER => "deal is not for this provider or dataset",
            BAD_HELLO_SIGNATURE => "hello not signed by the deal's buyer",
            DEAL_NOT_OPEN => "deal is not open (refunded, disputed, expired)",
            BAD_RECEIPT_SIGNATURE => "receipt not signed by the deal's buyer",
            RECEIPT_FOR_OTHER_DEAL => "receipt for another deal",
            RECEIPT_ABOVE_SENT => "receipt for more than was sent",
            RECEIPT_ABOVE_MAX => "receipt above the deal's maximum",
            PAYMENT_TIMEOUT => "payment timeout: no receipt while the window was full",
            INTERNAL => "provider internal error",
            ARBITER_NOT_ACCEPTED => "the deal's arbiter is not one this provider accepts",
            TERMS_NOT_ACCEPTED => "the deal's vendor or royalty is not what this provider sells on",
            DEAL_EXPIRING => "the deal expires within the provider's safety margin",
            WINDOW_SPENT => "the deal's window is spent on bytes never receipted: open a new deal",
            SUPERSEDED => "a newer connection of this buyer took over the deal",
            _ => "unknown code",
        }
    }
}

/// First message: binds this connection (the buyer's EndpointId) to a deal, signed by the deal's
/// buyer with its Ethereum key (EIP-712 `Hello{dealId, buyerNodeId}` under the escrow domain).
/// It carries the deal's terms (`abi.encode(Terms)`, 416 bytes): the provider checks that they
/// hash to `deal_id` and that the signature is the terms' buyer's before it asks the chain
/// anything, and then reads only the deal's one state slot (no log scan for a stranger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u8,
    pub deal_id: [u8; 32],
    pub terms: Vec<u8>,
    pub buyer_node: [u8; 32],
    pub sig: Vec<u8>,
}

/// A cumulative receipt: the buyer owes `cumulative` token base units for this deal in total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub deal_id: [u8; 32],
    pub cumulative: u128,
    pub sig: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaidMessage {
    Hello(Hello),
    Receipt(SignedReceipt),
}

impl PaidMessage {
    /// `u16` big-endian length, then the postcard bytes ([`crate::wire`]).
    pub fn frame(&self) -> Vec<u8> {
        wire::encode(self, Prefix::U16)
    }

    /// Decodes a message body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        wire::decode(body, MAX_MESSAGE_BYTES)
    }

    /// Reads the next message of a stream; `Ok(None)` at its clean end.
    pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Option<Self>, FrameError> {
        wire::read(r, Prefix::U16, MAX_MESSAGE_BYTES).await
    }
}

/// What a provider offers for one dataset: everything a buyer needs to open a deal and dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The dataset ticket (provider address, root, format).
    pub ticket: String,
    /// The provider's Ethereum address (receives payment).
    pub provider: [u8; 20],
    /// Token base units per byte.
    pub price_per_byte: u128,
    /// Bytes the provider sends ahead of receipts.
    pub window: u64,
    /// Bytes a full download moves (all blobs of the dataset).
    pub size: u64,
    pub chain_id: u64,
    pub escrow: [u8; 20],
    /// The arbiters this provider accepts on a deal; a deal naming another is refused.
    pub arbiters: Vec<[u8; 20]>,
    /// Seconds before a deal's expiry from which the provider admits no Hello and sends nothing.
    pub expiry_margin: u64,
}

/// The provider's default expiry margin, seconds (`PaidConfig::expiry_margin`).
pub const DEFAULT_EXPIRY_MARGIN_SECS: u64 = 300;

/// Why text is not an offer.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("malformed offer: an offer starts with `bdcoffer`")]
    Prefix,
    #[error("malformed offer: not base32: {0}")]
    Base32(#[source] data_encoding::DecodeError),
    #[error("malformed offer: {0}")]
    Decode(#[source] postcard::Error),
}

impl Offer {
    const PREFIX: &'static str = "bdcoffer";

    /// Maximum cost of the whole dataset at this price.
    pub fn full_price(&self) -> u128 {
        amount_for(self.size, self.price_per_byte)
    }
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = postcard::to_stdvec(self).expect("offers serialize");
        write!(f, "{}{}", Self::PREFIX, data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    }
}

impl std::str::FromStr for Offer {
    type Err = OfferError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(Self::PREFIX).ok_or(OfferError::Prefix)?;
        let bytes =
            data_encoding::BASE32_NOPAD.decode(rest.to_ascii_uppercase().as_bytes()).map_err(OfferError::Base32)?;
        postcard::from_bytes(&bytes).map_err(OfferError::Decode)
    }
}

/// Bytes per GiB.
pub const GIB: u128 = 1 << 30;

/// Price per byte for a price per GiB, rounded down (a provider states per-GiB prices; receipts
/// are computed per byte, so the buyer never pays more than the stated GiB price).
pub fn price_per_byte(price_per_gib: u128) -> u128 {
    price_per_gib / GIB
}

/// What `bytes` cost at `price_per_byte`: an exact product (saturating at u128::MAX).
pub fn amount_for(bytes: u64, price_per_byte: u128) -> u128 {
    (bytes as u128).saturating_mul(price_per_byte)
}

/// How many whole bytes `amount` pays for (rounded down; unlimited when the price is 0).
pub fn bytes_for(amount: u128, price_per_byte: u128) -> u64 {
    amount.checked_div(price_per_byte).map_or(u64::MAX, |b| b.min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_limits() {
        let m = PaidMessage::Receipt(SignedReceipt { deal_id: [3; 32], cumulative: 12345, sig: vec![1; 65] });
        let f = m.frame();
        let len = u16::from_be_bytes([f[0], f[1]]) as usize;
        assert_eq!(len, f.len() - 2);
        assert_eq!(PaidMessage::decode(&f[2..]).unwrap(), m);
        assert!(matches!(PaidMessage::decode(&vec![0u8; MAX_MESSAGE_BYTES + 1]), Err(FrameError::TooLarge { .. })));
        assert!(matches!(PaidMessage::decode(&[9, 9, 9]), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn offer_roundtrip() {
        let o = Offer {
            ticket: "blobabc".into(),
            provider: [1; 20],
            price_per_byte: 7,
            window: 1 << 20,
            size: 1000,
            chain_id: 31337,
            escrow: [2; 20],
            arbiters: vec![[3; 20]],
            expiry_margin: 300,
        };
        let s = o.to_string();
        assert!(s.starts_with("bdcoffer"));
        assert_eq!(s.parse::<Offer>().unwrap(), o);
        assert_eq!(o.full_price(), 7000);
        assert!("bdcofferzz".parse::<Offer>().is_err());
        assert!("blobxyz".parse::<Offer>().is_err());
    }

    proptest::proptest! {
        /// A receipt for the bytes verified pays for exactly those bytes, never one more: the
        /// amount for `b` bytes buys back `b`, and any amount buys at most what it pays for.
        #[test]
        fn amounts_and_bytes_round_trip_and_never_overpay(
            bytes in proptest::prelude::any::<u64>(),
            price in 1u128..(1u128 << 64),
            amount in proptest::prelude::any::<u128>(),
        ) {
            proptest::prop_assert_eq!(bytes_for(amount_for(bytes, price), price), bytes);
            let b = bytes_for(amount, price);
            proptest::prop_assert!(amount_for(b, price) <= amount, "bytes_for never rounds up");
            if b < u64::MAX {
                proptest::prop_assert!(amount_for(b + 1, price) > amount, "and never leaves a whole byte unpaid");
            }
        }

        /// A per-GiB price becomes the largest per-byte price whose GiB costs no more.
        #[test]
        fn per_gib_prices_round_down_to_bytes(per_gib in proptest::prelude::any::<u128>()) {
            let p = price_per_byte(per_gib);
            proptest::prop_assert!(p.saturating_mul(GIB) <= per_gib);
            proptest::prop_assert!((p + 1).saturating_mul(GIB) > per_gib || p == u128::MAX / GIB);
        }
    }

    #[test]
    fn pricing_is_exact_and_rounds_down() {
        assert_eq!(price_per_byte(GIB * 5 + 3), 5);
        assert_eq!(amount_for(1 << 20, 3), 3 << 20);
        assert_eq!(bytes_for(10, 3), 3);
        assert_eq!(amount_for(u64::MAX, u128::MAX), u128::MAX);
    }
}
