//! Typed clients over the deployed contracts.
//!
//! [`Contracts`] wraps an alloy provider (with the caller's wallet) and a [`Deployment`]. Every
//! call that sends a transaction waits for its receipt and reads what happened from the events
//! it emitted; reverts are decoded into the contracts' custom errors ("BadSigner(…)", not hex).

use alloy::{
    contract::Error as ContractError,
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    rpc::types::{Filter, Log, TransactionReceipt},
    sol_types::{Eip712Domain, SolEvent, SolInterface},
};
use serde::{Deserialize, Serialize};

use crate::{
    bindings::{
        BDCToken::{self, BDCTokenErrors},
        DatasetRegistry::{self, DatasetRegistryErrors},
        TransferEscrow::{self, TransferEscrowErrors},
    },
    receipt::escrow_domain,
};

/// Terms of a deal, as the escrow hashes them (`dealId == keccak256(abi.encode(terms))`).
pub type Terms = TransferEscrow::Terms;

/// Where the contracts live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub chain_id: u64,
    pub token: Address,
    pub registry: Address,
    pub escrow: Address,
    /// Block of the first deployment transaction: indexers start here.
    pub deploy_block: u64,
    /// The feed registry (`FeedRegistry`; zero in deployment files written before it existed).
    #[serde(default)]
    pub feeds: Address,
}

/// An open deal: its id and the terms every later call must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    pub id: B256,
    pub terms: Terms,
}

/// A deal's on-chain state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DealState {
    pub exists: bool,
    pub redeemed: U256,
    pub paid_out: U256,
    pub release_at: u64,
    pub disputed: bool,
    pub refunded: bool,
}

/// A dispute as its `Disputed` event recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dispute {
    /// The pot the dispute froze (redeemed, not yet paid out), token base units.
    pub frozen: U256,
    pub bond: U256,
    /// The BLAKE3 hash of the buyer's evidence document (zero: none).
    pub evidence: B256,
    /// Unix seconds: the arbiter rules before this; after it anyone applies the default.
    pub rule_by: u64,
}

/// What a buyer asks for when opening a deal.
#[derive(Debug, Clone)]
pub struct OpenDeal {
    pub provider: Address,
    /// The provider's iroh EndpointId (32 bytes).
    pub provider_node_id: B256,
    pub dataset_root: B256,
    /// Token base units per byte.
    pub price_per_byte: u128,
    pub max_amount: U256,
    /// Bytes the provider may send ahead of receipts.
    pub window: u64,
    /// Unix seconds.
    pub expiry: u64,
    pub arbiter: Address,
}

/// Why a call reverted: one of the contracts' custom errors, decoded from the revert data, so
/// a caller matches on the error's type (`Revert::Escrow(TransferEscrowErrors::DealExpired(_))`),
/// never on its text.
#[derive(Debug)]
pub enum Revert {
    Escrow(TransferEscrowErrors),
    Registry(DatasetRegistryErrors),
    Token(BDCTokenErrors),
    /// Revert data that is none of the contracts' custom errors (a require string, a panic).
    Other(alloy::primitives::Bytes),
}

impl std::fmt::Display for Revert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revert::Escrow(e) => write!(f, "{e:?}"),
            Revert::Registry(e) => write!(f, "{e:?}"),
            Revert::Token(e) => write!(f, "{e:?}"),
            Revert::Other(data) => match alloy::sol_types::decode_revert_reason(data) {
                Some(reason) => f.write_str(&reason),
                None => write!(f, "revert data {data}"),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("{call} reverted: {error}")]
    Reverted { call: &'static str, error: Revert },
    #[error("{call} failed: {source}")]
    Rpc {
        call: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{call}: the node has no {what}")]
    Missing { call: &'static str, what: &'static str },
    #[error("{call}: transaction {tx} failed on chain")]
    Failed { call: &'static str, tx: B256 },
    #[error("{call}: transaction {tx} emitted no {event} event")]
    MissingEvent { call: &'static str, tx: B256, event: &'static str },
}

/// Why one deal of a `redeemBatch` was not redeemed (the error `redeem` would have reverted with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemFailure {
    UnknownDeal,
    OnlyProvider,
    AlreadyRefunded,
    Disputed,
    Expired,
    BadSigner,
    Other([u8; 4]),
}

impl RedeemFailure {
    fn from_selector(sel: [u8; 4]) -> Self {
        use TransferEscrow::{AlreadyRefunded, BadSigner, DealDisputed, DealExpired, OnlyProvider, UnknownDeal};
        use alloy::sol_types::SolError;
        match sel {
            s if s == UnknownDeal::SELECTOR => Self::UnknownDeal,
            s if s == OnlyProvider::SELECTOR => Self::OnlyProvider,
            s if s == AlreadyRefunded::SELECTOR => Self::AlreadyRefunded,
            s if s == DealDisputed::SELECTOR => Self::Disputed,
            s if s == DealExpired::SELECTOR => Self::Expired,
            s if s == BadSigner::SELECTOR => Self::BadSigner,
            s => Self::Other(s),
        }
    }

    /// The receipt can never be redeemed on this deal (as opposed to: not now, or not by this
    /// sender: `OnlyProvider` means the wallet sending is not the deal's provider, which an
    /// operator can fix).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::UnknownDeal | Self::AlreadyRefunded | Self::Expired | Self::BadSigner)
    }
}

impl ChainError {
    /// The escrow's custom error, if the call reverted with one.
    pub fn escrow_error(&self) -> Option<&TransferEscrowErrors> {
        match self {
            ChainError::Reverted { error: Revert::Escrow(e), .. } => Some(e),
            _ => None,
        }
    }
}

/// Decodes a contract error into the contracts' custom error types, when it is one.
fn decode(call: &'static str, e: ContractError) -> ChainError {
    fn typed<I: SolInterface>(e: &ContractError) -> Option<I> {
        e.as_decoded_interface_error::<I>()
    }
    let error = if let Some(x) = typed::<TransferEscrowErrors>(&e) {
        Revert::Escrow(x)
    } else if let Some(x) = typed::<DatasetRegistryErrors>(&e) {
        Revert::Registry(x)
    } else if let Some(x) = typed::<BDCTokenErrors>(&e) {
        Revert::Token(x)
    } else if let Some(data) = e.as_revert_data() {
        Revert::Other(data)
    } else {
        return ChainError::Rpc { call, source: Box::new(e) };
    };
    ChainError::Reverted { call, error }
}

/// Sends a prepared call, waits for the receipt, and checks it succeeded.
macro_rules! send {
    ($name:literal, $call:expr) => {{
        let pending = $call.send().await.map_err(|e| decode($name, e))?;
        let receipt: TransactionReceipt =
            pending.get_receipt().await.map_err(|e| ChainError::Rpc { call: $name, source: Box::new(e) })?;
        if !receipt.status() {
            return Err(ChainError::Failed { call: $name, tx: receipt.transaction_hash });
        }
        receipt
    }};
}

fn event<E: SolEvent>(call: &'static str, receipt: &TransactionReceipt) -> Result<E, ChainError> {
    receipt
        .inner
        .logs()
        .iter()
        .find_map(|l| E::decode_log(&l.inner).ok().map(|d| d.data))
        .ok_or(ChainError::MissingEvent { call, tx: receipt.transaction_hash, event: E::SIGNATURE })
}

/// The three contracts behind one provider (whose wallet signs the transactions).
#[derive(Debug, Clone)]
pub struct Contracts<P> {
    provider: P,
    deployment: Deployment,
}

impl<P: Provider + Clone> Contracts<P> {
    pub fn new(provider: P, deployment: Deployment) -> Self {
        Self { provider, deployment }
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    pub fn provider(&self) -> &P {
        &self.provider
    }

    pub fn token(&self) -> BDCToken::BDCTokenInstance<P> {
        BDCToken::new(self.deployment.token, self.provider.clone())
    }

    pub fn registry(&self) -> DatasetRegistry::DatasetRegistryInstance<P> {
        DatasetRegistry::new(self.deployment.registry, self.provider.clone())
    }

    pub fn escrow(&self) -> TransferEscrow::TransferEscrowInstance<P> {
        TransferEscrow::new(self.deployment.escrow, self.provider.clone())
    }

    /// The EIP-712 domain receipts for this escrow are signed under.
    pub fn domain(&self) -> Eip712Domain {
        escrow_domain(self.deployment.chain_id, self.deployment.escrow)
    }

    pub async fn balance(&self, who: Address) -> Result<U256, ChainError> {
        self.token().balanceOf(who).call().await.map_err(|e| decode("balanceOf", e))
    }

    /// Devnet faucet.
    pub async fn faucet(&self, to: Address, amount: U256) -> Result<(), ChainError> {
        send!("faucet", self.token().faucet(to, amount));
        Ok(())
    }

    pub async fn register_dataset(
        &self,
        root: B256,
        royalty_bps: u16,
        manifest_hash: B256,
        price_hint: u128,
    ) -> Result<(), ChainError> {
        send!("register", self.registry().register(root, royalty_bps, manifest_hash, price_hint));
        Ok(())
    }

    /// Opens a deal, approving the escrow first if the allowance is short.
    pub async fn open_deal(&self, from: Address, req: &OpenDeal) -> Result<Deal, ChainError> {
        let allowance =
            self.token().allowance(from, self.deployment.escrow).call().await.map_err(|e| decode("allowance", e))?;
        if allowance < req.max_amount {
            send!("approve", self.token().approve(self.deployment.escrow, req.max_amount));
        }
        let escrow = self.escrow();
        let call = escrow.openDeal(
            req.provider,
            req.provider_node_id,
            req.dataset_root,
            req.price_per_byte,
            req.max_amount,
            req.window,
            req.expiry,
            req.arbiter,
        );
        let receipt = send!("openDeal", call);
        let ev: TransferEscrow::DealOpened = event("openDeal", &receipt)?;
        Ok(Deal { id: ev.dealId, terms: ev.terms })
    }

    /// Redeems a receipt; returns the amount it added to the pending pot (0 for a stale receipt).
    pub async fn redeem(&self, terms: &Terms, cumulative: U256, sig: Bytes) -> Result<U256, ChainError> {
        let receipt = send!("redeem", self.escrow().redeem(terms.clone(), cumulative, sig));
        Ok(event::<TransferEscrow::Redeemed>("redeem", &receipt).map(|e| e.amount).unwrap_or(U256::ZERO))
    }

    /// Pays out the pending pot after the dispute window: (to provider, to vendor).
    pub async fn withdraw(&self, terms: &Terms) -> Result<(U256, U256), ChainError> {
        let receipt = send!("withdraw", self.escrow().withdraw(terms.clone()));
        let ev: TransferEscrow::Withdrawn = event("withdraw", &receipt)?;
        Ok((ev.toProvider, ev.toVendor))
    }

    /// Returns the unredeemed escrow to the buyer after expiry.
    pub async fn refund(&self, terms: &Terms) -> Result<U256, ChainError> {
        let receipt = send!("refund", self.escrow().refund(terms.clone()));
        Ok(event::<TransferEscrow::Refunded>("refund", &receipt)?.amount)
    }

    /// What `redeemBatch` would do now, without sending it (an `eth_call`): for each entry,
    /// None if it would redeem, else the error it would fail with.
    pub async fn simulate_redeem_batch(
        &self,
        batch: &[(Terms, U256, Bytes)],
    ) -> Result<Vec<Option<RedeemFailure>>, ChainError> {
        let ts = batch.iter().map(|b| b.0.clone()).collect();
        let amounts = batch.iter().map(|b| b.1).collect();
        let sigs = batch.iter().map(|b| b.2.clone()).collect();
        let r = self.escrow().redeemBatch(ts, amounts, sigs).call().await.map_err(|e| decode("redeemBatch", e))?;
        Ok(r.reasons.iter().map(|sel| (sel.0 != [0; 4]).then(|| RedeemFailure::from_selector(sel.0))).collect())
    }

    /// Redeems many receipts in one transaction. Returns the total added to the pending pots
    /// and, for each deal that could not be redeemed, the escrow error it failed with.
    pub async fn redeem_batch(
        &self,
        batch: &[(Terms, U256, Bytes)],
    ) -> Result<(U256, Vec<(B256, RedeemFailure)>), ChainError> {
        let ts = batch.iter().map(|b| b.0.clone()).collect();
        let amounts = batch.iter().map(|b| b.1).collect();
        let sigs = batch.iter().map(|b| b.2.clone()).collect();
        let receipt = send!("redeemBatch", self.escrow().redeemBatch(ts, amounts, sigs));
        let mut added = U256::ZERO;
        let mut failed = Vec::new();
        for l in receipt.inner.logs() {
            if let Ok(e) = TransferEscrow::Redeemed::decode_log(&l.inner) {
                added += e.data.amount;
            } else if let Ok(e) = TransferEscrow::RedeemFailed::decode_log(&l.inner) {
                failed.push((e.data.dealId, RedeemFailure::from_selector(e.data.reason.0)));
            }
        }
        Ok((added, failed))
    }

    /// The buyer disputes (approving the bond first if needed), committing to `evidence` (the
    /// root of a bdc blob holding it, or zero).
    pub async fn dispute(&self, from: Address, terms: &Terms, evidence: B256) -> Result<(), ChainError> {
        let bond = self.escrow().disputeBond().call().await.map_err(|e| decode("disputeBond", e))?;
        let allowance =
            self.token().allowance(from, self.deployment.escrow).call().await.map_err(|e| decode("allowance", e))?;
        if allowance < bond {
            send!("approve", self.token().approve(self.deployment.escrow, bond));
        }
        send!("dispute", self.escrow().dispute(terms.clone(), evidence));
        Ok(())
    }

    /// After the arbiter's deadline: applies the default ruling (anyone may call it).
    pub async fn settle_dispute(&self, terms: &Terms) -> Result<(), ChainError> {
        send!("settleDispute", self.escrow().settleDispute(terms.clone()));
        Ok(())
    }

    /// The arbiter splits a disputed pot.
    pub async fn resolve(&self, terms: &Terms, to_buyer: U256, buyer_wins: bool) -> Result<(), ChainError> {
        send!("resolve", self.escrow().resolve(terms.clone(), to_buyer, buyer_wins));
        Ok(())
    }

    /// The registry's vendor and royalty (bps) of `root`, None if it is not registered.
    pub async fn registered(&self, root: B256) -> Result<Option<(Address, u16)>, ChainError> {
        let d = self.registry().get(root).call().await.map_err(|e| decode("get", e))?;
        Ok((d.vendor != Address::ZERO).then_some((d.vendor, d.royaltyBps)))
    }

    pub async fn deal_state(&self, id: B256) -> Result<DealState, ChainError> {
        let s = self.escrow().deals(id).call().await.map_err(|e| decode("deals", e))?;
        Ok(DealState {
            exists: s.flags & 1 != 0,
            redeemed: U256::from(s.redeemed),
            paid_out: U256::from(s.paidOut),
            release_at: s.releaseAt.to::<u64>(),
            disputed: s.flags & 2 != 0,
            refunded: s.flags & 4 != 0,
        })
    }

    /// Finds a deal's terms from its `DealOpened` event (the terms are not in storage).
    pub async fn find_deal(&self, id: B256) -> Result<Option<Deal>, ChainError> {
        let logs = self.deal_logs::<TransferEscrow::DealOpened>(id).await?;
        Ok(logs.into_iter().find_map(|ev| (ev.dealId == id).then_some(Deal { id, terms: ev.terms })))
    }

    /// Every escrow event `E` of deal `id` (its first topic), oldest first.
    async fn deal_logs<E: SolEvent>(&self, id: B256) -> Result<Vec<E>, ChainError> {
        let filter = Filter::new()
            .address(self.deployment.escrow)
            .event_signature(E::SIGNATURE_HASH)
            .topic1(id)
            .from_block(self.deployment.deploy_block);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| ChainError::Rpc { call: "eth_getLogs", source: Box::new(e) })?;
        Ok(logs.iter().filter_map(|l| Some(E::decode_log(&l.inner).ok()?.data)).collect())
    }

    /// The newest `Disputed` event of a deal: what was frozen, the bond, the evidence hash the
    /// buyer committed to, and the arbiter's deadline. None if the deal was never disputed.
    pub async fn find_dispute(&self, id: B256) -> Result<Option<Dispute>, ChainError> {
        let logs = self.deal_logs::<TransferEscrow::Disputed>(id).await?;
        Ok(logs.into_iter().rev().find(|ev| ev.dealId == id).map(|ev| Dispute {
            frozen: ev.frozen,
            bond: ev.bond,
            evidence: ev.evidence,
            rule_by: ev.ruleBy.to::<u64>(),
        }))
    }

    /// Latest block timestamp.
    pub async fn chain_time(&self) -> Result<u64, ChainError> {
        let b = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| ChainError::Rpc { call: "eth_getBlockByNumber", source: Box::new(e) })?
            .ok_or(ChainError::Missing { call: "eth_getBlockByNumber", what: "latest block" })?;
        Ok(b.header.timestamp)
    }

    /// Decoded escrow events in `[from, to]` (inclusive block numbers).
    pub async fn escrow_events(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Log, TransferEscrow::TransferEscrowEvents)>, ChainError> {
        self.decoded_logs(self.deployment.escrow, from, to).await
    }

    /// Decoded registry events in `[from, to]` (inclusive block numbers).
    pub async fn registry_events(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Log, DatasetRegistry::DatasetRegistryEvents)>, ChainError> {
        self.decoded_logs(self.deployment.registry, from, to).await
    }

    /// The logs of `address` in `[from, to]` that decode as one of the contract's events `E`.
    async fn decoded_logs<E: alloy::sol_types::SolEventInterface>(
        &self,
        address: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Log, E)>, ChainError> {
        let filter = Filter::new().address(address).from_block(from).to_block(to);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| ChainError::Rpc { call: "eth_getLogs", source: Box::new(e) })?;
        Ok(logs
            .into_iter()
            .filter_map(|l| {
                let ev = E::decode_log(&l.inner).ok()?.data;
                Some((l, ev))
            })
            .collect())
    }

    /// The chain's newest block number.
    pub async fn head(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| ChainError::Rpc { call: "eth_blockNumber", source: Box::new(e) })
    }
}

/// A provider builder for sending transactions: gas estimation, chain id, and nonces read from
/// the node for every transaction. (alloy's default caches nonces locally and reserves one even
/// when gas estimation then fails on a revert, which leaves a gap that stalls every later
/// transaction from that account.)
pub fn sending_provider() -> alloy::providers::ProviderBuilder<
    alloy::providers::Identity,
    impl alloy::providers::fillers::TxFiller<alloy::network::Ethereum>,
    alloy::network::Ethereum,
> {
    alloy::providers::ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
}

/// Installs rustls' ring crypto provider as the process default if none is installed yet.
/// reqwest is built without a default provider in this workspace (iroh brings rustls with ring
/// only), and panics on the first HTTPS-capable client without one.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connects to `rpc_url` with `signer` as the sending wallet.
pub fn connect(
    rpc_url: alloy::transports::http::reqwest::Url,
    signer: alloy::signers::local::PrivateKeySigner,
    deployment: Deployment,
) -> Contracts<alloy::providers::DynProvider> {
    ensure_crypto_provider();
    let provider = sending_provider().wallet(signer).connect_http(rpc_url).erased();
    Contracts::new(provider, deployment)
}
