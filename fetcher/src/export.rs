//! Export from the fetcher's store to an output directory.
//!
//! Only verified bytes are in the store, and a file appears under its final name only after all
//! of it was written: each file is exported to a hidden temp name beside its target, then renamed.

use std::path::{Path, PathBuf};

use bdc_core::{Hash, paths::join_checked};
use iroh_blobs::api::Store;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    UnsafeName(#[from] bdc_core::paths::UnsafeName),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("exporting {hash} to {path} failed: {source}")]
    Store {
        hash: Hash,
        path: PathBuf,
        #[source]
        source: iroh_blobs::api::RequestError,
    },
    #[error("exporting a range of {hash} to {path} failed: {source}")]
    Range {
        hash: Hash,
        path: PathBuf,
        #[source]
        source: iroh_blobs::api::Error,
    },
}

/// One exported file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Exports `hash` from `store` to `out/name` atomically.
pub async fn export_file(store: &Store, hash: Hash, out: &Path, name: &str) -> Result<ExportedFile, ExportError> {
    let target = join_checked(out, name)?;
    let parent = target.parent().unwrap_or(out).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|source| ExportError::Io { path: parent.clone(), source })?;
    let file_name = target.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.bdc-partial"));
    let size = match store.blobs().export(hash, &tmp).finish().await {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(ExportError::Store { hash, path: target.clone(), source: e });
        }
    };
    std::fs::rename(&tmp, &target).map_err(|source| ExportError::Io { path: target.clone(), source })?;
    Ok(ExportedFile { name: name.to_string(), path: target, size })
}

/// Moves `hash` out of `store` to `out/name` atomically, without copying it when the store
/// holds it as a file of its own on the same file system (iroh-blobs' `TryReference`: a rename).
/// The store then refers to the moved file: only for a staging store that is deleted afterwards
/// ([`crate::Fetcher::staged`]).
pub async fn move_file(store: &Store, hash: Hash, out: &Path, name: &str) -> Result<ExportedFile, ExportError> {
    use iroh_blobs::api::proto::{ExportMode, ExportPathRequest};
    let target = join_checked(out, name)?;
    let parent = target.parent().unwrap_or(out).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|source| ExportError::Io { path: parent.clone(), source })?;
    let file_name = target.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    // a name of its own: a staging store interrupted mid-move may still name an older one
    let tmp = parent.join(format!(".{file_name}.{:016x}.bdc-partial", rand::random::<u64>()));
    let opts = ExportPathRequest { hash, mode: ExportMode::TryReference, target: tmp.clone() };
    let size = match store.blobs().export_with_opts(opts).finish().await {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(ExportError::Store { hash, path: target.clone(), source: e });
        }
    };
    if let Err(source) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ExportError::Io { path: target, source });
    }
    Ok(ExportedFile { name: name.to_string(), path: target, size })
}

/// Exports bytes `range` of blob `hash` (verified in `store`) to `out/name` atomically.
pub async fn export_range(
    store: &Store,
    hash: Hash,
    out: &Path,
    name: &str,
    range: std::ops::Range<u64>,
) -> Result<ExportedFile, ExportError> {
    use futures_lite::StreamExt;
    use iroh_blobs::api::proto::ExportRangesItem;
    use std::io::Write;

    let target = join_checked(out, name)?;
    let parent = target.parent().unwrap_or(out).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|source| ExportError::Io { path: parent.clone(), source })?;
    let file_name = target.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.bdc-partial"));
    let io = |source| ExportError::Io { path: tmp.clone(), source };
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    // the data of the range comes in ascending order, clipped to the blob's size
    let mut next = range.start;
    let mut size = None;
    let mut stream = store.blobs().export_ranges(hash, range.clone()).stream();
    let res = async {
        while let Some(item) = stream.next().await {
            match item {
                ExportRangesItem::Size(s) => size = Some(s),
                ExportRangesItem::Data(leaf) => {
                    if leaf.offset != next {
                        let e = format!("the store gave bytes at {} where {next} was due", leaf.offset);
                        return Err(io(std::io::Error::other(e)));
                    }
                    next = leaf.offset + leaf.data.len() as u64;
                    file.write_all(&leaf.data).map_err(io)?;
                }
                ExportRangesItem::Error(e) => {
                    return Err(ExportError::Range { hash, path: target.clone(), source: e });
                }
            }
        }
        // the whole range, inside the blob, or nothing (the store clips a range to its size)
        if size.is_none_or(|s| range.end > s) || next != range.end {
            let e =
                format!("the store holds {}..{next} of {}..{} (size {size:?})", range.start, range.start, range.end);
            return Err(io(std::io::Error::other(e)));
        }
        file.flush().map_err(io)?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &target).map_err(|source| ExportError::Io { path: target.clone(), source })?;
    Ok(ExportedFile { name: name.to_string(), path: target, size: next.saturating_sub(range.start) })
}
