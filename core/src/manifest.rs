//! The dataset manifest, `bdc.json`.
//!
//! Every collection published by bdc carries a file named [`MANIFEST_NAME`](crate::protocol::MANIFEST_NAME)
//! describing the dataset: name, description, license, tags, the vendor's address, and each file's
//! size, hash and media type. Because it is inside the collection, the root hash covers it: a
//! fetcher that verified the root verified the manifest.

use serde::{Deserialize, Serialize};

use crate::Hash;

/// Current manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative `/`-separated path inside the dataset (see [`crate::paths`]).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 root of the file's bytes (equal to `b3sum` of the file).
    pub hash: Hash,
    /// Media type guessed from the file extension.
    pub media_type: String,
    /// The schema of a tabular file (Parquet, CSV), read at publish: what a buyer can search
    /// for and query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<Column>,
}

/// One column of a tabular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The Arrow data type, as Arrow prints it (`Int64`, `Utf8`, `Timestamp(Millisecond, None)`).
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The `bdc.json` manifest of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub version: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The vendor's Ethereum address (0x-hex), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Files, sorted by name. The manifest itself is not listed.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest version {0} is not supported (this build reads version {MANIFEST_VERSION})")]
    Version(u32),
    #[error("manifest lists an unsafe file name: {0}")]
    Name(#[from] crate::paths::UnsafeName),
}

impl DatasetManifest {
    /// Total size of the listed files, in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Canonical encoding: pretty JSON with a trailing newline, so the same dataset always
    /// gets the same manifest bytes (and so the same root).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Self = serde_json::from_slice(bytes)?;
        if m.version != MANIFEST_VERSION {
            return Err(ManifestError::Version(m.version));
        }
        for f in &m.files {
            crate::paths::check_name(&f.name)?;
        }
        Ok(m)
    }
}

/// Guesses a media type from a file name's extension.
pub fn media_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "parquet" => "application/vnd.apache.parquet",
        "csv" => "text/csv",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "arrow" | "feather" => "application/vnd.apache.arrow.file",
        "txt" | "md" => "text/plain",
        "gz" => "application/gzip",
        "zst" => "application/zstd",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DatasetManifest {
        DatasetManifest {
            version: MANIFEST_VERSION,
            name: "trades".into(),
            description: String::new(),
            license: "CC-BY-4.0".into(),
            tags: vec!["crypto".into()],
            vendor: None,
            files: vec![FileEntry {
                name: "2026/trades.parquet".into(),
                size: 42,
                hash: Hash::new(b"x"),
                media_type: media_type("trades.parquet").into(),
                columns: vec![Column { name: "price".into(), data_type: "Float64".into() }],
            }],
        }
    }

    #[test]
    fn roundtrip_is_stable() {
        let m = sample();
        let bytes = m.to_bytes();
        let back = DatasetManifest::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.total_size(), 42);
    }

    #[test]
    fn rejects_unsafe_names_and_unknown_versions() {
        let mut m = sample();
        m.files[0].name = "../../etc/passwd".into();
        assert!(matches!(DatasetManifest::from_bytes(&m.to_bytes()), Err(ManifestError::Name(_))));
        let mut m = sample();
        m.version = 99;
        assert!(matches!(DatasetManifest::from_bytes(&m.to_bytes()), Err(ManifestError::Version(99))));
    }
}
