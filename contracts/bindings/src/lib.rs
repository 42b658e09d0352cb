//! bdc-contracts: Rust side of bdc's Solidity contracts.
//!
//! Start here:
//! - [`bindings`]: `sol!` bindings generated from the committed artifacts in `contracts/artifacts/`
//!   (no node or solc needed to build).
//! - [`receipt`]: the EIP-712 `Receipt{dealId, cumulativeAmount}`: digest, signing and
//!   verification, with no chain connection needed.
//! - [`jobs`]: the EIP-712 `JobResult` a provider signs for each finished compute job.
//! - [`client`]: typed clients for the escrow, registry and token.
//! - [`devnet`]: [`Devnet`] spawns anvil on a free port, deploys everything, funds test accounts,
//!   and kills anvil on drop.

pub mod bindings;
pub mod client;
pub mod devnet;
pub mod feed;
pub mod jobs;
pub mod listing;
pub mod receipt;

pub use client::{ChainError, Contracts, Deal, Deployment};
pub use devnet::{Devnet, DevnetConfig, DevnetError};
pub use receipt::{Receipt, ReceiptError, escrow_domain, receipt_digest, sign_receipt, verify_receipt};
