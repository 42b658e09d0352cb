//! The provider's dataset catalog: which roots it publishes, under which name, and whether they
//! are free. A small JSON file next to the store, written atomically, readable while the store
//! itself is locked by a running `serve`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bdc_core::{BlobFormat, Hash};
use serde::{Deserialize, Serialize};

/// One published dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub root: Hash,
    /// `raw` for a single file published as a blob, `hashseq` for a collection.
    #[serde(with = "format_serde")]
    pub format: BlobFormat,
    pub name: String,
    /// Served on the free protocol (`/iroh-bytes/4`) to anyone.
    pub free: bool,
    /// Payload bytes (the files, without the manifest and collection metadata).
    pub size: u64,
    pub files: usize,
    /// Unix seconds.
    pub published_at: u64,
    /// Copied from another provider (`bdc provider mirror`), not published here.
    #[serde(default)]
    pub mirror: bool,
}

mod format_serde {
    use bdc_core::BlobFormat;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &BlobFormat, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match f {
            BlobFormat::Raw => "raw",
            BlobFormat::HashSeq => "hashseq",
        })
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BlobFormat, D::Error> {
        match String::deserialize(d)?.as_str() {
            "raw" => Ok(BlobFormat::Raw),
            "hashseq" => Ok(BlobFormat::HashSeq),
            other => Err(serde::de::Error::custom(format!("unknown blob format {other:?}"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("catalog {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("cannot write catalog {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The catalog file and its records, keyed by root.
#[derive(Debug, Clone)]
pub struct Catalog {
    path: PathBuf,
    records: BTreeMap<Hash, DatasetRecord>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    datasets: Vec<DatasetRecord>,
}

impl Catalog {
    pub const FILE: &'static str = "datasets.json";

    /// Loads the catalog under `data_dir` (empty if the file does not exist yet).
    pub fn load(data_dir: &Path) -> Result<Self, CatalogError> {
        let path = data_dir.join(Self::FILE);
        let records = match std::fs::read(&path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes)
                    .map_err(|source| CatalogError::Corrupt { path: path.clone(), source })?;
                d.datasets.into_iter().map(|r| (r.root, r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        Ok(Self { path, records })
    }

    pub fn get(&self, root: &Hash) -> Option<&DatasetRecord> {
        self.records.get(root)
    }

    pub fn iter(&self) -> impl Iterator<Item = &DatasetRecord> {
        self.records.values()
    }

    /// Inserts or replaces the record for `rec.root` and saves the file.
    pub fn upsert(&mut self, rec: DatasetRecord) -> Result<(), CatalogError> {
        self.records.insert(rec.root, rec);
        self.save()
    }

    fn save(&self) -> Result<(), CatalogError> {
        let d = OnDisk { datasets: self.records.values().cloned().collect() };
        let bytes = serde_json::to_vec_pretty(&d).expect("catalog serializes");
        bdc_core::keys::write_private(&self.path, &bytes)
            .map_err(|source| CatalogError::Write { path: self.path.clone(), source })
    }
}
