//! Publishing: a file or a folder becomes a dataset.
//!
//! - A folder (or a single file, by default) becomes an iroh-blobs collection: `bdc.json` first,
//!   then the files in name order. Its root is the collection's hash.
//! - A single file with [`PublishOptions::raw`] becomes a raw blob whose root equals `b3sum` of
//!   the file.
//!
//! The store deduplicates by hash, so publishing identical bytes again gives the same root and
//! stores nothing new.

use std::path::{Path, PathBuf};

use bdc_core::{
    BlobFormat, Hash, HashAndFormat,
    manifest::{DatasetManifest, FileEntry, MANIFEST_VERSION, media_type},
    paths::{UnsafeName, name_from_relative},
    protocol::MANIFEST_NAME,
};
use futures_lite::StreamExt;
use iroh_blobs::{
    api::{
        TempTag,
        blobs::{AddPathOptions, AddProgressItem, ImportMode},
    },
    format::collection::Collection,
};

use crate::{
    catalog::{CatalogError, DatasetRecord},
    store::ProviderStore,
};

/// What to publish and how.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Dataset name; defaults to the file or folder name.
    pub name: Option<String>,
    pub description: String,
    pub license: String,
    pub tags: Vec<String>,
    /// Vendor's Ethereum address, recorded in the manifest.
    pub vendor: Option<String>,
    /// Serve on the free protocol.
    pub free: bool,
    /// Publish a single file as a raw blob (root == `b3sum` of the file) instead of a collection.
    pub raw: bool,
    /// Reference files in place instead of copying them into the store. Faster and uses no extra
    /// disk, but the files must not change afterwards.
    pub in_place: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} contains no files")]
    Empty(PathBuf),
    #[error("--raw publishes a single file, but {0} is a directory")]
    RawNeedsFile(PathBuf),
    #[error("{path}: {source}")]
    Name { path: PathBuf, source: UnsafeName },
    #[error("{0} contains a top-level {MANIFEST_NAME}, a name bdc reserves for the dataset manifest")]
    ReservedName(PathBuf),
    #[error("importing {path} into the store failed: {source}")]
    Import {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("importing {0} into the store ended without a result")]
    ImportUnfinished(PathBuf),
    #[error("storing the dataset failed: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the publishing task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Progress of a publish, in payload bytes hashed so far out of the total.
#[derive(Debug, Clone, Copy)]
pub struct PublishProgress {
    pub done: u64,
    pub total: u64,
}

struct Input {
    name: String,
    path: PathBuf,
    size: u64,
}

/// Publishes `path` into `store` and records it in the catalog.
pub async fn publish(
    store: &mut ProviderStore,
    path: &Path,
    opts: &PublishOptions,
    mut progress: impl FnMut(PublishProgress),
) -> Result<DatasetRecord, PublishError> {
    // the directory walk and the stat calls are blocking file work: off the async workers
    let (p, raw) = (path.to_path_buf(), opts.raw);
    let (default_name, inputs) =
        tokio::task::spawn_blocking(move || inputs_of(&p, raw)).await.map_err(PublishError::Task)??;

    let total: u64 = inputs.iter().map(|i| i.size).sum();
    let mode = if opts.in_place { ImportMode::TryReference } else { ImportMode::Copy };
    let blobs = store.store.blobs().clone();
    let mut done = 0u64;
    progress(PublishProgress { done, total });
    let mut imported: Vec<(FileEntry, TempTag)> = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let mut stream = blobs
            .add_path_with_opts(AddPathOptions { path: input.path.clone(), format: BlobFormat::Raw, mode })
            .stream()
            .await;
        let (mut copied, mut hashed) = (0u64, 0u64);
        let mut tag = None;
        while let Some(item) = stream.next().await {
            match item {
                AddProgressItem::CopyProgress(n) => copied = n,
                AddProgressItem::CopyDone => copied = input.size,
                AddProgressItem::OutboardProgress(n) => hashed = n,
                AddProgressItem::Size(_) => {}
                AddProgressItem::Done(tt) => {
                    tag = Some(tt);
                    break;
                }
                AddProgressItem::Error(e) => {
                    return Err(PublishError::Import { path: input.path.clone(), source: Box::new(e) });
                }
            }
            // copying and hashing each count for half of a file's progress when both happen
            let part = if opts.in_place { hashed } else { (copied + hashed) / 2 };
            progress(PublishProgress { done: done + part.min(input.size), total });
        }
        let tag = tag.ok_or_else(|| PublishError::ImportUnfinished(input.path.clone()))?;
        done += input.size;
        progress(PublishProgress { done, total });
        let entry = FileEntry {
            name: input.name.clone(),
            size: input.size,
            hash: tag.hash(),
            media_type: media_type(&input.name).to_string(),
            // reading a schema reads the file: blocking work
            columns: {
                let (p, n) = (input.path.clone(), input.name.clone());
                tokio::task::spawn_blocking(move || crate::schema::file_columns(&p, &n))
                    .await
                    .map_err(PublishError::Task)?
            },
        };
        imported.push((entry, tag));
    }

    let name = opts.name.clone().unwrap_or(default_name);
    let (root, format) = if opts.raw {
        (imported[0].0.hash, BlobFormat::Raw)
    } else {
        let manifest = DatasetManifest {
            version: MANIFEST_VERSION,
            name: name.clone(),
            description: opts.description.clone(),
            license: opts.license.clone(),
            tags: opts.tags.clone(),
            vendor: opts.vendor.clone(),
            files: imported.iter().map(|(e, _)| e.clone()).collect(),
        };
        let mtag =
            blobs.add_bytes(manifest.to_bytes()).temp_tag().await.map_err(|e| PublishError::Store(Box::new(e)))?;
        let collection: Collection = std::iter::once((MANIFEST_NAME.to_string(), mtag.hash()))
            .chain(imported.iter().map(|(e, _)| (e.name.clone(), e.hash)))
            .collect();
        let ctag = collection.store(&store.store).await.map_err(|e| PublishError::Store(Box::new(e)))?;
        (ctag.hash(), BlobFormat::HashSeq)
    };
    // A named tag keeps the dataset alive in the store for good; the temp tags can go now.
    store
        .store
        .tags()
        .set(dataset_tag(&root), HashAndFormat { hash: root, format })
        .await
        .map_err(|e| PublishError::Store(Box::new(e)))?;
    drop(imported);

    let rec = DatasetRecord {
        root,
        format,
        name,
        free: opts.free,
        size: total,
        files: inputs.len(),
        published_at: unix_now(),
        mirror: false,
    };
    store.catalog.upsert(rec.clone())?;
    tracing::info!(root = %root, files = rec.files, bytes = total, "published");
    Ok(rec)
}

pub(crate) use bdc_core::time::unix_now;

/// The store tag that keeps a published dataset.
pub fn dataset_tag(root: &Hash) -> String {
    format!("bdc/dataset/{root}")
}

/// The files to publish for `path` (a file, or every file under a folder, sorted by name), with
/// its absolute path and default dataset name. Blocking file work.
fn inputs_of(path: &Path, raw: bool) -> Result<(String, Vec<Input>), PublishError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PublishError::NotFound(path.to_path_buf()));
        }
        Err(source) => {
            return Err(PublishError::Io { path: path.to_path_buf(), source });
        }
    };
    let abs = std::path::absolute(path).map_err(|source| PublishError::Io { path: path.to_path_buf(), source })?;
    let default_name = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
    if !meta.is_dir() {
        let name = name_from_relative(Path::new(&default_name))
            .map_err(|source| PublishError::Name { path: path.to_path_buf(), source })?;
        let inputs = vec![Input { name, path: abs, size: meta.len() }];
        return Ok((default_name, inputs));
    }
    if raw {
        return Err(PublishError::RawNeedsFile(path.to_path_buf()));
    }
    let mut inputs = Vec::new();
    // symlinks to files are followed; symlinked directories are not walked (no cycles)
    for entry in walkdir::WalkDir::new(&abs).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let at = e.path().unwrap_or(&abs).to_path_buf();
            PublishError::Io { path: at, source: e.into() }
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let p = entry.path();
        let meta = std::fs::metadata(p).map_err(|source| PublishError::Io { path: p.to_path_buf(), source })?;
        if !meta.is_file() {
            tracing::warn!(path = %p.display(), "skipping: not a regular file");
            continue;
        }
        let rel = p.strip_prefix(&abs).expect("walked path is under its base");
        let name = name_from_relative(rel).map_err(|source| PublishError::Name { path: p.to_path_buf(), source })?;
        inputs.push(Input { name, path: p.to_path_buf(), size: meta.len() });
    }
    if inputs.is_empty() {
        return Err(PublishError::Empty(path.to_path_buf()));
    }
    if inputs.iter().any(|i| i.name == MANIFEST_NAME) {
        return Err(PublishError::ReservedName(path.to_path_buf()));
    }
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((default_name, inputs))
}
