//! Persistent iroh node keys.
//!
//! A node's transport identity is an ed25519 [`SecretKey`]; its public half is the node's
//! `EndpointId`. The key is stored hex-encoded in a file readable only by its owner.

use std::{io::Write, path::Path};

use iroh::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read node key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write node key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("node key file {path} is malformed (expected 64 hex digits)")]
    Malformed { path: String },
}

/// Loads the key at `path`, or creates a new random one there (mode 0600) if the file is absent.
pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed { path: shown.clone() })?;
            let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed { path: shown })?;
            Ok(SecretKey::from_bytes(&arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            write_private(path, hex::encode(key.to_bytes()).as_bytes())
                .map_err(|source| KeyError::Write { path: shown, source })?;
            Ok(key)
        }
        Err(source) => Err(KeyError::Read { path: shown, source }),
    }
}

/// Writes `data` to `path` atomically (temp file, fsync, rename) with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_private_with(path, data, true)
}

/// [`write_private`], with the flush to disk before the rename only if `durable`: readers still
/// see the old or the new file whole, and a process crash loses nothing, but a power cut may
/// lose the update.
pub fn write_private_with(path: &Path, data: &[u8], durable: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_persists_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let a = load_or_create(&p).unwrap();
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn malformed_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        std::fs::write(&p, "zz").unwrap();
        assert!(matches!(load_or_create(&p), Err(KeyError::Malformed { .. })));
    }
}
