//! The provider's data directory: node key, catalog and iroh-blobs `FsStore`.
//!
//! ```text
//! <data-dir>/node.key        iroh secret key (hex, 0600)
//! <data-dir>/datasets.json   catalog of published datasets
//! <data-dir>/store/          iroh-blobs FsStore (redb + data/outboard files)
//! <data-dir>/serve.json      address of the running `serve`, for `bdc provider ticket`
//! ```

use std::path::{Path, PathBuf};

use iroh::SecretKey;
use iroh_blobs::store::fs::FsStore;

use crate::catalog::{Catalog, CatalogError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot open the blob store in {path}: {source} (is another bdc process, e.g. `bdc provider serve`, using this data dir?)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("dataset {0} is not published here")]
    NotPublished(bdc_core::Hash),
    #[error("dataset {0} is missing blobs in the store")]
    MissingBlobs(bdc_core::Hash),
    #[error("dataset {root} is not readable in the store: {source}")]
    Unreadable {
        root: bdc_core::Hash,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Key(#[from] bdc_core::keys::KeyError),
}

/// An open provider data dir.
#[derive(Debug)]
pub struct ProviderStore {
    pub(crate) dir: PathBuf,
    pub(crate) store: FsStore,
    pub(crate) catalog: Catalog,
}

impl ProviderStore {
    /// Opens (creating if needed) the provider data dir.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir { path: dir.to_path_buf(), source })?;
        let dir = std::path::absolute(dir).map_err(|source| StoreError::DataDir { path: dir.to_path_buf(), source })?;
        let catalog = Catalog::load(&dir)?;
        let store_dir = dir.join("store");
        let store =
            FsStore::load(&store_dir).await.map_err(|e| StoreError::Open { path: store_dir, source: e.into() })?;
        Ok(Self { dir, store, catalog })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying iroh-blobs store.
    pub fn blobs(&self) -> &FsStore {
        &self.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The hash of a published collection's `bdc.json` (what a vendor registers on chain as the
    /// manifest hash); None for a raw blob.
    pub async fn manifest_hash(&self, root: bdc_core::Hash) -> Result<Option<bdc_core::Hash>, StoreError> {
        let rec = self.catalog.get(&root).ok_or(StoreError::NotPublished(root))?;
        if rec.format != bdc_core::BlobFormat::HashSeq {
            return Ok(None);
        }
        let store: &iroh_blobs::api::Store = &self.store;
        let c = iroh_blobs::format::collection::Collection::load(root, store)
            .await
            .map_err(|e| StoreError::Unreadable { root, source: Box::new(e) })?;
        Ok(c.iter().find(|(n, _)| n == bdc_core::protocol::MANIFEST_NAME).map(|(_, h)| *h))
    }

    /// The node's persistent iroh key (`<data-dir>/node.key`), created on first use.
    pub fn node_key(&self) -> Result<SecretKey, StoreError> {
        Ok(bdc_core::keys::load_or_create(&self.dir.join("node.key"))?)
    }

    /// Records a dataset whose blobs are already in the store (data fetched from a peer that this
    /// node now mirrors) in the catalog, marked as a mirror (its market listings say so). The
    /// root must be complete in the store.
    pub async fn register(
        &mut self,
        root: bdc_core::Hash,
        format: bdc_core::BlobFormat,
        name: &str,
        free: bool,
    ) -> Result<crate::DatasetRecord, StoreError> {
        let content = bdc_core::HashAndFormat { hash: root, format };
        let info = self
            .store
            .remote()
            .local(content)
            .await
            .map_err(|e| StoreError::Unreadable { root, source: Box::new(e) })?;
        if !info.is_complete() {
            return Err(StoreError::MissingBlobs(root));
        }
        self.store
            .tags()
            .set(crate::publish::dataset_tag(&root), content)
            .await
            .map_err(|e| StoreError::Unreadable { root, source: Box::new(e) })?;
        let (size, files) = match format {
            bdc_core::BlobFormat::Raw => (info.local_bytes(), 1),
            bdc_core::BlobFormat::HashSeq => {
                let store: &iroh_blobs::api::Store = &self.store;
                let c = iroh_blobs::format::collection::Collection::load(root, store)
                    .await
                    .map_err(|e| StoreError::Unreadable { root, source: Box::new(e) })?;
                // the dataset's files, as `publish` counts them: not its manifest
                let files: Vec<_> = c.iter().filter(|(n, _)| n != bdc_core::protocol::MANIFEST_NAME).collect();
                let mut size = 0;
                for (_, h) in &files {
                    if let Ok(iroh_blobs::api::blobs::BlobStatus::Complete { size: s }) =
                        self.store.blobs().status(*h).await
                    {
                        size += s;
                    }
                }
                (size, files.len())
            }
        };
        let rec = crate::DatasetRecord {
            root,
            format,
            name: name.to_string(),
            free,
            size,
            files,
            published_at: crate::publish::unix_now(),
            mirror: true,
        };
        self.catalog.upsert(rec.clone())?;
        Ok(rec)
    }

    /// Flushes and closes the store. Always call this before exiting.
    pub async fn shutdown(self) {
        if let Err(e) = self.store.shutdown().await {
            tracing::error!("store shutdown failed: {e:#}");
        }
    }
}
