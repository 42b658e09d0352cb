//! Every body the market's HTTP API takes or answers. The market serializes these, clients
//! deserialize them: a field renamed on one side is a compile error or a decode error, never a
//! silent zero. The OpenAPI document is generated from the same types (`utoipa`).

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, Bytes};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::Amount;

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong with the request (for 5xx only "internal error": details are logged).
    pub error: String,
}

// ---- listings and reports (signed by their authors) ----

/// What a provider signs to offer one dataset (the EIP-712 `Listing` of `bdc_contracts::listing`,
/// in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListingBody {
    #[schema(value_type = String, example = "0x5f1c…")]
    pub dataset_root: B256,
    /// The provider's Ethereum address: the signer.
    #[schema(value_type = String)]
    pub provider: Address,
    /// The provider's iroh EndpointId, 32 bytes.
    #[schema(value_type = String)]
    pub provider_node_id: B256,
    /// Token base units per byte.
    pub price_per_byte: Amount,
    /// Bytes the provider sends ahead of receipts (its risk per deal).
    pub window: u64,
    /// Every byte of the dataset the provider sells (all its blobs), in the provider's signed
    /// word: what a buyer sizes its deposit by (the market's own figures are not signed).
    #[serde(default)]
    pub size: u64,
    /// The provider copied the dataset from another provider (`bdc provider mirror`); the
    /// bytes verify against the root either way.
    #[serde(default)]
    pub mirror: bool,
    /// The node's direct socket addresses.
    pub addrs: Vec<String>,
    pub region: String,
    /// Declared serving capacity, MiB/s.
    pub capacity_mibps: u64,
    /// The arbiters the provider accepts on a deal; a deal naming another is refused.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub arbiters: Vec<Address>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the market drops the listing then.
    pub expires_at: u64,
}

/// `POST /listings`: a listing, the dataset's manifest (`bdc.json` text) and the provider's
/// EIP-712 signature over the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedListing {
    pub listing: ListingBody,
    pub manifest: String,
    /// 65 bytes `r || s || v`, 0x-hex.
    #[schema(value_type = String)]
    pub signature: Bytes,
}

/// `POST /listings` answer (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListingAccepted {
    #[schema(value_type = String)]
    pub provider: Address,
    #[schema(value_type = String)]
    pub root: B256,
    /// The manifest's hash equals the one the vendor registered on chain.
    pub manifest_verified: bool,
}

/// `POST /reports`: what a buyer measured on a deal, signed by the deal's buyer (EIP-712
/// `ThroughputReport` under the market domain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    #[schema(value_type = String)]
    pub deal_id: B256,
    /// Bytes verified.
    pub bytes: u64,
    /// In this many milliseconds.
    pub millis: u64,
    /// Unix seconds.
    pub issued_at: u64,
    #[schema(value_type = String)]
    pub signature: Bytes,
}

/// `POST /faults`: a deal's buyer says the provider sent bytes that did not verify (EIP-712
/// `FaultReport`, signed by the deal's buyer). The market cannot check the claim: it shows how
/// many paying buyers made it, and does not score it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedFault {
    #[schema(value_type = String)]
    pub deal_id: B256,
    /// Bytes that verified before the bad ones.
    pub verified_bytes: u64,
    /// Unix seconds.
    pub issued_at: u64,
    #[schema(value_type = String)]
    pub signature: Bytes,
}

/// `POST /faults` answer (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FaultAccepted {
    #[schema(value_type = String)]
    pub deal: B256,
    #[schema(value_type = String)]
    pub provider: Address,
}

/// `POST /reports` answer (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportAccepted {
    #[schema(value_type = String)]
    pub deal: B256,
    #[schema(value_type = String)]
    pub provider: Address,
    /// The reported throughput, MiB/s.
    pub mibps: f64,
}

// ---- search and datasets ----

/// `GET /datasets` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Full text: every word must match (a prefix of) a term of the name, description, tags,
    /// file names or schema column names.
    pub q: Option<String>,
    /// Only datasets of this vendor (0x address).
    pub vendor: Option<String>,
    /// Only datasets with this tag.
    pub tag: Option<String>,
    /// Only datasets offered at or below this price, BDC per GiB.
    pub max_price_gib: Option<f64>,
    /// Bytes.
    pub min_size: Option<i64>,
    /// Bytes.
    pub max_size: Option<i64>,
    /// Page size, 1–100 (default 20).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// Keyset pagination: the `next` of the previous page (the last root it showed).
    pub after: Option<String>,
}

/// One dataset in a search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasetSummary {
    #[schema(value_type = String)]
    pub root: B256,
    #[schema(value_type = String)]
    pub vendor: Address,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Bytes.
    pub size: u64,
    /// The cheapest current offer, BDC per GiB.
    pub min_price_gib: Option<f64>,
    /// Current offers.
    pub offers: u64,
}

/// `GET /datasets` answer: one page, in (name, root) order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchPage {
    pub items: Vec<DatasetSummary>,
    pub offset: i64,
    pub limit: i64,
    /// Whether another page follows.
    pub more: bool,
    /// Pass as `after` for the next page.
    #[schema(value_type = Option<String>)]
    pub next: Option<B256>,
}

/// A column of a tabular file, as the manifest states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ColumnEntry {
    pub name: String,
    /// Arrow data type, e.g. `Float64`.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// A file of a dataset, as its manifest states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// Bytes.
    pub size: u64,
    pub media_type: String,
    #[serde(default)]
    pub columns: Vec<ColumnEntry>,
}

/// A current offer of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasetOffer {
    #[schema(value_type = String)]
    pub provider: Address,
    #[schema(value_type = String)]
    pub node_id: B256,
    pub addrs: Vec<String>,
    pub region: String,
    pub price_per_byte: Amount,
    /// BDC per GiB.
    pub price_gib: f64,
    /// Bytes sent ahead of receipts.
    pub window: u64,
    pub capacity_mibps: u64,
    /// Unix seconds.
    pub expires_at: u64,
    #[schema(value_type = Vec<String>)]
    pub arbiters: Vec<Address>,
    /// The provider's listing says it mirrors the dataset (copied it from another provider).
    #[serde(default)]
    pub mirror: bool,
}

/// A dataset on a given day of its sales: deals opened, and what they redeemed so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SalesDay {
    /// Unix seconds at 00:00 UTC of the day.
    pub day: u64,
    pub deals: u64,
    pub redeemed: Amount,
}

/// `GET /datasets/{root}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasetDetail {
    #[schema(value_type = String)]
    pub root: B256,
    #[schema(value_type = String)]
    pub vendor: Address,
    /// Basis points of every redeem paid to the vendor.
    pub royalty_bps: u16,
    /// The manifest hash the vendor registered (zero when it registered none).
    #[schema(value_type = String)]
    pub manifest_hash: B256,
    /// The vendor's suggested price, token base units per byte.
    pub price_hint: Amount,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Bytes.
    pub size: u64,
    pub files: Vec<FileEntry>,
    /// The description above is the manifest the vendor registered (its hash matches).
    pub manifest_verified: bool,
    /// Current offers, cheapest first.
    pub offers: Vec<DatasetOffer>,
    /// Deals opened per day, and what they redeemed (for the sales chart).
    #[serde(default)]
    pub sales: Vec<SalesDay>,
}

// ---- providers and deals ----

/// Outcomes as the reputation score counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Weighed {
    /// Completed deals, weighed by value paid per buyer (each buyer counts at most once).
    pub completed: f64,
    /// Disputes lost before an arbiter the market trusts.
    pub disputes_lost: f64,
}

impl Weighed {
    /// `(completed + 1) / (completed + 2 × disputes_lost + 2)`, in (0, 1); 0.5 with no history.
    pub fn score(&self) -> f64 {
        (self.completed + 1.0) / (self.completed + 2.0 * self.disputes_lost + 2.0)
    }
}

/// A provider's record from on-chain outcomes only (see MARKET.md, "Reputation").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reputation {
    pub deals: u64,
    /// Deals paid out to the provider by a withdrawal.
    pub completed: u64,
    /// Deals refunded with nothing redeemed (shown, not scored).
    pub failed: u64,
    /// Disputes resolved for the buyer (by any arbiter).
    pub disputes_lost: u64,
    /// Distinct buyers that paid the provider on a completed deal.
    pub paying_buyers: u64,
    /// What the score is computed from.
    pub weighed: Weighed,
    /// Bytes the provider was paid for (redeemed amount / price per byte, over all deals).
    #[schema(value_type = u64)]
    pub bytes_redeemed: u128,
    /// [`Weighed::score`].
    pub score: f64,
    /// Median throughput buyers measured, MiB/s (0 with no reports); each buyer counts once.
    pub throughput_mibps: f64,
    /// How many buyers' reports the median is over.
    pub throughput_buyers: u64,
    /// Buyers that reported bytes that did not verify, each counted once, on deals that paid
    /// the provider at least a hundredth of the reputation unit (a claim the market cannot
    /// check: shown, not scored).
    #[serde(default)]
    pub faults_reported: u64,
}

/// A listing of a provider, on its page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderListing {
    #[schema(value_type = String)]
    pub root: B256,
    /// The dataset's name ("" when the market has no manifest for it).
    pub name: String,
    /// BDC per GiB.
    pub price_gib: f64,
    pub region: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A deal in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DealSummary {
    #[schema(value_type = String)]
    pub id: B256,
    #[schema(value_type = String)]
    pub root: B256,
    /// `open`, `disputed`, `resolved`, `completed` or `refunded`.
    pub state: String,
    pub redeemed: Amount,
    pub max_amount: Amount,
    pub opened_block: u64,
}

/// A throughput report a buyer posted about a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ThroughputPoint {
    /// Unix seconds the buyer signed it.
    pub issued_at: u64,
    pub mibps: f64,
    pub bytes: u64,
}

/// `GET /providers/{id}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderRecord {
    #[schema(value_type = String)]
    pub provider: Address,
    pub reputation: Reputation,
    pub listings: Vec<ProviderListing>,
    /// The newest 50 deals.
    pub deals: Vec<DealSummary>,
    /// Buyers' throughput reports, oldest first (the newest 200).
    #[serde(default)]
    pub throughput: Vec<ThroughputPoint>,
}

/// The last dispute of a deal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DisputeInfo {
    /// Unix seconds by which the arbiter must rule; after it the default applies.
    pub rule_by: u64,
    /// The BLAKE3 root of the evidence the buyer committed to (0x-hex).
    pub evidence: String,
}

/// One redeem of a deal's receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Redemption {
    pub block: u64,
    /// Unix seconds of the block (0 when the indexer did not record it).
    #[serde(default)]
    pub time: u64,
    /// The receipt's cumulative amount after this redeem.
    pub cumulative: Amount,
}

/// `GET /deals/{id}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DealRecord {
    #[schema(value_type = String)]
    pub id: B256,
    #[schema(value_type = String)]
    pub buyer: Address,
    #[schema(value_type = String)]
    pub provider: Address,
    #[schema(value_type = String)]
    pub root: B256,
    pub price_per_byte: Amount,
    pub max_amount: Amount,
    /// Bytes the provider may send ahead of receipts.
    pub window: u64,
    /// Unix seconds.
    pub expiry: u64,
    pub redeemed: Amount,
    pub refunded: Amount,
    /// `open`, `disputed`, `resolved`, `completed` or `refunded`.
    pub state: String,
    /// A ruling went the buyer's way.
    pub buyer_won: bool,
    pub opened_block: u64,
    #[schema(value_type = String)]
    pub arbiter: Address,
    pub dispute: Option<DisputeInfo>,
    /// Escrowed and not yet redeemed (what the buyer may still spend; not a loss).
    pub buyer_escrowed_unspent: Amount,
    /// The window's worth the provider may have sent unpaid.
    pub provider_at_risk: Amount,
    /// Every redeem, in chain order (the chart of cumulative receipts).
    pub redemptions: Vec<Redemption>,
}

// ---- matching ----

/// `POST /match`: rank current offers with CEL expressions over [`OfferAttrs`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// Only offers of this dataset (0x root; else all current offers).
    pub root: Option<String>,
    /// CEL bool over the offer's attributes; offers for which it is false are dropped.
    pub require: Option<String>,
    /// Named CEL criteria (numbers); the score is their sum.
    #[serde(default)]
    pub rank: BTreeMap<String, String>,
    /// How many offers to answer, 1–100 (default 10).
    pub limit: Option<usize>,
}

/// What an expression can see of an offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfferAttrs {
    /// Price, BDC per GiB.
    pub price_gib: f64,
    /// Declared serving capacity, MiB/s.
    pub capacity_mibps: f64,
    /// Reputation score in [0, 1] from on-chain outcomes.
    pub reputation: f64,
    /// Deals the provider completed.
    pub deals_completed: i64,
    pub region: String,
    /// Window, MiB (what the provider risks per deal).
    pub window_mib: f64,
    /// Dataset size, GiB.
    pub size_gib: f64,
    /// Median throughput buyers reported for the provider, MiB/s (0 with no reports).
    pub throughput_mibps: f64,
}

/// One ranked offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MatchedOffer {
    #[schema(value_type = String)]
    pub provider: Address,
    #[schema(value_type = String)]
    pub root: B256,
    #[schema(value_type = String)]
    pub node_id: B256,
    pub addrs: Vec<String>,
    pub price_per_byte: Amount,
    pub window: u64,
    /// The dataset's size as the market knows it, bytes (not signed by anyone: a buyer sizes
    /// its deposit from it only up to its own ceiling).
    pub size: u64,
    /// The provider's signed listing, for buyers that check it rather than trust the market.
    pub listing: ListingBody,
    /// The listing's EIP-712 signature.
    #[schema(value_type = String)]
    pub signature: Bytes,
    pub attributes: OfferAttrs,
    /// Each criterion's value.
    pub criteria: BTreeMap<String, f64>,
    /// The sum of the criteria.
    pub score: f64,
}

/// `POST /match` answer, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MatchResponse {
    pub offers: Vec<MatchedOffer>,
}

// ---- status ----

/// `GET /status` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Newest chain head the indexer saw.
    pub head: u64,
    /// Last block indexed.
    pub indexed: u64,
    pub lag_blocks: u64,
}
