//! `bdc provider mirror …`: fetch a dataset another provider serves, verified (and paid for, if
//! it is sold), straight into this node's provider store, and add it to the catalog, so that
//! `bdc provider serve` serves it (and `--sell` sells it) like one of its own.
//!
//! The dataset keeps its root, so it is the same registered dataset: a deal for it with this
//! node copies the vendor and royalty from the registry like any other, and the royalty of every
//! byte the mirror sells goes to the vendor. The mirror pins that vendor and royalty the first
//! time it sells, as for a dataset it published.

use std::path::Path;

use anyhow::Context;
use bdc_core::{BlobFormat, Hash, manifest::DatasetManifest, protocol::MANIFEST_NAME};
use bdc_provider::ProviderStore;
use clap::Args;

use super::fetch::{SourceArgs, Target};

#[derive(Debug, Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    pub src: SourceArgs,
    /// Name in this node's catalog (default: the name its manifest gives, or the root).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve it to anyone on the free protocol too (a dataset mirrored from a ticket, which its
    /// origin serves free, is served free anyway).
    #[arg(long)]
    pub free: bool,
    /// Print the catalog record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `root`: the bdc data dir (the provider's store is under `provider/`, the buyer's key and
/// deal book under `fetcher/`).
pub async fn run(a: MirrorArgs, root: &Path, quiet: bool) -> anyhow::Result<()> {
    let mut store = ProviderStore::open(&root.join("provider")).await?;
    // a dataset this node already publishes, sells or mirrors keeps its record as it is
    if let Some(rec) = dataset_of(&a.src).and_then(|h| store.catalog().get(&h).cloned()) {
        store.shutdown().await;
        anyhow::bail!("{} is already in this node's catalog (as {:?}): nothing to mirror", rec.root, rec.name);
    }
    let to = Target {
        // nothing is written there: the dataset stays in the store
        out: root.join("provider"),
        opts: bdc_fetcher::FetchOptions { export: bdc_fetcher::Export::None, ..Default::default() },
        json: false,
        store: Some(store.blobs().clone()),
    };
    let res = async {
        let got = super::fetch::fetch(a.src, to, &root.join("fetcher"), quiet).await?;
        let name = match a.name {
            Some(n) => n,
            None => manifest_name(&store, got.root, got.format).await.unwrap_or_else(|| got.root.to_string()),
        };
        // served free where it came from: free here too
        anyhow::Ok(store.register(got.root, got.format, &name, a.free || !got.paid).await?)
    }
    .await;
    store.shutdown().await;
    let rec = res?;
    let tail = if rec.free { "; `bdc provider serve` serves it" } else { "; `bdc provider serve --sell` sells it" };
    super::provider::print_record(&rec, a.json, "mirrored", tail)
}

/// The dataset the first source names, when it says (a ticket, an offer, or a root).
fn dataset_of(src: &super::fetch::SourceArgs) -> Option<Hash> {
    let first = src.tickets.first()?.trim();
    if let Ok(root) = first.parse::<alloy::primitives::B256>() {
        return Some(Hash::from_bytes(root.0));
    }
    if let Ok(offer) = first.parse::<bdc_core::paid::Offer>() {
        return bdc_core::ticket::parse_ticket(&offer.ticket).ok().map(|t| t.hash());
    }
    bdc_core::ticket::parse_ticket(first).ok().map(|t| t.hash())
}

/// Longest manifest read for its name.
const MAX_MANIFEST: u64 = 1 << 20;

/// The name a collection's manifest gives the dataset (the root commits to it, but whoever
/// published it chose it): printable characters only, at most 200.
async fn manifest_name(store: &ProviderStore, root: Hash, format: BlobFormat) -> Option<String> {
    if format != BlobFormat::HashSeq {
        return None;
    }
    let blobs: &iroh_blobs::api::Store = store.blobs();
    let c = iroh_blobs::format::collection::Collection::load(root, blobs).await.ok()?;
    let (_, hash) = c.iter().find(|(n, _)| n == MANIFEST_NAME)?;
    match blobs.blobs().status(*hash).await.ok()? {
        iroh_blobs::api::blobs::BlobStatus::Complete { size } if size <= MAX_MANIFEST => {}
        _ => return None,
    }
    let bytes = blobs.blobs().get_bytes(*hash).await.ok()?;
    let m = DatasetManifest::from_bytes(&bytes).context("manifest").ok()?;
    let name: String = m.name.chars().filter(|c| !c.is_control()).take(200).collect();
    Some(name).filter(|n| !n.trim().is_empty())
}
