//! A local chain for tests, examples and `bdc devnet`.
//!
//! [`Devnet::spawn`] starts anvil (the pinned npm build in `contracts/node_modules`, or `$BDC_ANVIL`,
//! or `anvil` on PATH) on 127.0.0.1 with a free port, deploys `BDCToken` (faucet on),
//! `DatasetRegistry` and `TransferEscrow`, and gives each of the first accounts BDC. Dropping the
//! `Devnet` stops anvil.

use std::path::PathBuf;

use alloy::{
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    transports::http::reqwest::Url,
};

use crate::{
    bindings::{BDCToken, DatasetRegistry, FeedRegistry, TransferEscrow},
    client::{Contracts, Deployment, connect, ensure_crypto_provider, sending_provider},
};

/// One BDC in base units (18 decimals).
pub const BDC: U256 = U256::from_limbs([1_000_000_000_000_000_000, 0, 0, 0]);

/// How long after closing a feed its vendor waits for its stake on the devnet (as `Deploy.s.sol`'s default).
pub const FEED_UNSTAKE_DELAY: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct DevnetConfig {
    /// How many of anvil's accounts get `faucet_amount` BDC (anvil makes at least 10 accounts,
    /// and as many as are funded).
    pub funded_accounts: usize,
    pub faucet_amount: U256,
    pub dispute_bond: U256,
    /// Seconds redeemed funds wait before withdrawal (short on a devnet).
    pub dispute_window: u64,
    /// Seconds an arbiter has to rule on a dispute before anyone may settle it by default.
    pub arbitration_period: u64,
    /// Mine a block every N seconds instead of on every transaction.
    pub block_time: Option<u64>,
    /// Fixed port (0 = any free port).
    pub port: u16,
}

impl Default for DevnetConfig {
    fn default() -> Self {
        Self {
            funded_accounts: 5,
            faucet_amount: BDC * U256::from(1_000_000u64),
            dispute_bond: BDC * U256::from(10u64),
            dispute_window: 60,
            arbitration_period: 300,
            block_time: None,
            port: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error(
        "cannot start anvil ({path}): {source}. Run `make tools` (npm ci in contracts/) or set BDC_ANVIL to an anvil binary"
    )]
    Anvil {
        path: String,
        #[source]
        source: alloy::node_bindings::NodeError,
    },
    #[error("deploying {contract} failed: {source}")]
    Deploy {
        contract: &'static str,
        #[source]
        source: alloy::contract::Error,
    },
    #[error(transparent)]
    Chain(#[from] crate::ChainError),
    #[error("devnet RPC {call} failed: {source}")]
    Rpc {
        call: &'static str,
        #[source]
        source: alloy::transports::TransportError,
    },
    #[error("the devnet has no latest block")]
    NoBlock,
}

/// A running anvil with bdc's contracts deployed.
#[derive(Debug)]
pub struct Devnet {
    anvil: AnvilInstance,
    pub deployment: Deployment,
    keys: Vec<PrivateKeySigner>,
}

/// The anvil binary: `$BDC_ANVIL`, the pinned npm build, or `anvil` on PATH.
pub fn anvil_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BDC_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let pinned =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    pinned.exists().then_some(pinned)
}

impl Devnet {
    pub async fn spawn() -> Result<Self, DevnetError> {
        Self::spawn_with(DevnetConfig::default()).await
    }

    pub async fn spawn_with(cfg: DevnetConfig) -> Result<Self, DevnetError> {
        ensure_crypto_provider();
        let path = anvil_path();
        let shown = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "anvil on PATH".into());
        let mut anvil = match &path {
            Some(p) => Anvil::at(p),
            None => Anvil::new(),
        }
        .host("127.0.0.1")
        .port(cfg.port)
        .args(["--accounts".to_string(), cfg.funded_accounts.max(10).to_string()])
        .timeout(20_000);
        if let Some(bt) = cfg.block_time {
            anvil = anvil.block_time(bt);
        }
        let anvil = anvil.try_spawn().map_err(|source| DevnetError::Anvil { path: shown, source })?;
        let keys: Vec<PrivateKeySigner> = anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
        let url: Url = anvil.endpoint_url();
        let deployer = keys[0].clone();
        let provider = sending_provider().wallet(deployer.clone()).connect_http(url.clone()).erased();
        let deploy_block =
            provider.get_block_number().await.map_err(|source| DevnetError::Rpc { call: "eth_blockNumber", source })?;
        let token = BDCToken::deploy(provider.clone(), deployer.address(), U256::ZERO, true)
            .await
            .map_err(|source| DevnetError::Deploy { contract: "BDCToken", source })?;
        let registry = DatasetRegistry::deploy(provider.clone())
            .await
            .map_err(|source| DevnetError::Deploy { contract: "DatasetRegistry", source })?;
        let escrow = TransferEscrow::deploy(
            provider.clone(),
            *token.address(),
            *registry.address(),
            cfg.dispute_bond,
            cfg.dispute_window,
            cfg.arbitration_period,
        )
        .await
        .map_err(|source| DevnetError::Deploy { contract: "TransferEscrow", source })?;
        let feeds = FeedRegistry::deploy(provider.clone(), *token.address(), FEED_UNSTAKE_DELAY)
            .await
            .map_err(|source| DevnetError::Deploy { contract: "FeedRegistry", source })?;
        let deployment = Deployment {
            chain_id: anvil.chain_id(),
            token: *token.address(),
            registry: *registry.address(),
            escrow: *escrow.address(),
            deploy_block,
            feeds: *feeds.address(),
        };
        let this = Self { anvil, deployment, keys };
        let admin = this.contracts(0);
        for k in this.keys.iter().take(cfg.funded_accounts) {
            admin.faucet(k.address(), cfg.faucet_amount).await?;
        }
        Ok(this)
    }

    pub fn rpc_url(&self) -> Url {
        self.anvil.endpoint_url()
    }

    /// anvil's i-th well-known account.
    pub fn signer(&self, i: usize) -> PrivateKeySigner {
        self.keys[i].clone()
    }

    pub fn address(&self, i: usize) -> Address {
        self.keys[i].address()
    }

    /// The contracts, sending as account `i`.
    pub fn contracts(&self, i: usize) -> Contracts<DynProvider> {
        connect(self.rpc_url(), self.signer(i), self.deployment.clone())
    }

    /// Moves the chain's clock forward and mines a block.
    pub async fn advance_time(&self, secs: u64) -> Result<(), DevnetError> {
        let p = ProviderBuilder::new().connect_http(self.rpc_url());
        let _: serde_json::Value = p
            .raw_request("evm_increaseTime".into(), (secs,))
            .await
            .map_err(|source| DevnetError::Rpc { call: "evm_increaseTime", source })?;
        let _: serde_json::Value = p
            .raw_request("evm_mine".into(), ())
            .await
            .map_err(|source| DevnetError::Rpc { call: "evm_mine", source })?;
        Ok(())
    }

    /// Timestamp of the latest block.
    pub async fn now(&self) -> Result<u64, DevnetError> {
        let p = ProviderBuilder::new().connect_http(self.rpc_url());
        let b = p
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|source| DevnetError::Rpc { call: "eth_getBlockByNumber", source })?
            .ok_or(DevnetError::NoBlock)?;
        Ok(b.header.timestamp)
    }
}
