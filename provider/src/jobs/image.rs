//! OCI images from local archives (no registry): `podman save --format oci-archive`, or any tar
//! of an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`).
//!
//! An archive is unpacked once into `<dir>/<archive sha256>/rootfs`, keyed by the SHA-256 of the
//! archive file itself (what the buyer names and uploads). Every blob read is checked against its
//! digest; layers (tar, tar+gzip) are applied in order with OCI whiteouts (`.wh.<name>` removes,
//! `.wh..wh..opq` empties a directory); entries that would land outside the root are refused.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image archive: {0}")]
    Bad(String),
    #[error("image archive I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn bad(s: impl Into<String>) -> ImageError {
    ImageError::Bad(s.into())
}

/// What a job needs from an image's config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image manifest's digest (`sha256:…`), as registries and podman name the image.
    pub manifest_digest: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
}

pub use bdc_core::jobs::file_sha256;

/// An unpacked image: its root file system and config.
#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub info: ImageInfo,
}

/// The unpacked image under `dir` for an archive hash, if there is one.
pub fn cached(dir: &Path, archive_sha256: &[u8; 32]) -> Option<Image> {
    let d = dir.join(hex::encode(archive_sha256));
    let info: ImageInfo = serde_json::from_slice(&std::fs::read(d.join("image.json")).ok()?).ok()?;
    Some(Image { rootfs: d.join("rootfs"), info })
}

/// Unpacks `archive` (whose SHA-256 is `archive_sha256`) under `dir`, once.
pub fn unpack(dir: &Path, archive: &Path, archive_sha256: &[u8; 32]) -> Result<Image, ImageError> {
    if let Some(i) = cached(dir, archive_sha256) {
        return Ok(i);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let final_dir = dir.join(hex::encode(archive_sha256));
    let tmp = dir.join(format!(".{}.tmp", hex::encode(archive_sha256)));
    let _ = std::fs::remove_dir_all(&tmp);
    let layout = tmp.join("layout");
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir_all(&layout).map_err(io(&layout))?;
    std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
    let mut ar = tar::Archive::new(File::open(archive).map_err(io(archive))?);
    ar.unpack(&layout).map_err(|e| bad(format!("not a readable tar: {e}")))?;
    let info = apply_layout(&layout, &rootfs)?;
    let _ = std::fs::remove_dir_all(&layout);
    // mount points the sandbox needs, and a /tmp anyone may write
    for d in ["proc", "dev", "sys", "tmp", "data", "out"] {
        let p = rootfs.join(d);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .map_err(io(&rootfs))?;
    std::fs::write(tmp.join("image.json"), serde_json::to_vec_pretty(&info).expect("json")).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    Ok(Image { rootfs: final_dir.join("rootfs"), info })
}

/// Reads a blob of the layout, checking it against its digest.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| bad(format!("unsupported digest {digest:?}")))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("malformed digest {digest:?}")));
    }
    let path = layout.join("blobs/sha256").join(hex);
    let got = file_sha256(&path).map_err(|e| bad(format!("blob {digest} missing: {e}")))?;
    if hex::encode(got) != hex.to_lowercase() {
        return Err(bad(format!("blob {digest} does not match its digest")));
    }
    Ok(path)
}

fn json_blob(layout: &Path, digest: &str) -> Result<serde_json::Value, ImageError> {
    let p = blob(layout, digest)?;
    let bytes = std::fs::read(&p).map_err(|source| ImageError::Io { path: p, source })?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("blob {digest} is not JSON: {e}")))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn apply_layout(layout: &Path, rootfs: &Path) -> Result<ImageInfo, ImageError> {
    let index_path = layout.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(|e| bad(format!("no index.json (not an OCI archive?): {e}")))?,
    )
    .map_err(|e| bad(format!("index.json: {e}")))?;
    let mut desc = index["manifests"].get(0).cloned().ok_or_else(|| bad("index.json lists no manifest"))?;
    // an image index may wrap the manifest (multi-platform): take the first linux/amd64 or the first
    for _ in 0..4 {
        let digest = desc["digest"].as_str().ok_or_else(|| bad("manifest descriptor without digest"))?.to_string();
        let doc = json_blob(layout, &digest)?;
        if let Some(ms) = doc["manifests"].as_array() {
            desc = ms
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .or(ms.first())
                .cloned()
                .ok_or_else(|| bad("empty image index"))?;
            continue;
        }
        let config = json_blob(layout, doc["config"]["digest"].as_str().ok_or_else(|| bad("manifest has no config"))?)?;
        let layers = doc["layers"].as_array().cloned().unwrap_or_default();
        for l in &layers {
            let d = l["digest"].as_str().ok_or_else(|| bad("layer without digest"))?;
            let media = l["mediaType"].as_str().unwrap_or("");
            let path = blob(layout, d)?;
            let f = File::open(&path).map_err(|source| ImageError::Io { path: path.clone(), source })?;
            let reader: Box<dyn Read> = if media.ends_with("gzip") {
                Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
            } else if media.ends_with("tar") || media.is_empty() {
                Box::new(BufReader::new(f))
            } else {
                return Err(bad(format!("layer {d}: media type {media:?} is not supported (tar or tar+gzip)")));
            };
            apply_layer(reader, rootfs).map_err(|e| bad(format!("layer {d}: {e}")))?;
        }
        let c = &config["config"];
        return Ok(ImageInfo {
            manifest_digest: digest,
            env: strings(&c["Env"]),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            workdir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
        });
    }
    Err(bad("image indexes nested too deep"))
}

/// Applies one layer tar on top of `rootfs`.
fn apply_layer(reader: impl Read, rootfs: &Path) -> std::io::Result<()> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(std::io::Error::other(format!("entry {} escapes the root", path.display())));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(target) = name.strip_prefix(".wh.") {
            let parent = rootfs.join(path.parent().unwrap_or(Path::new("")));
            if target == ".wh..opq" {
                if let Ok(rd) = std::fs::read_dir(&parent) {
                    for e in rd.flatten() {
                        let p = e.path();
                        let _ = if p.is_dir() && !p.is_symlink() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            } else {
                let p = parent.join(target);
                let _ =
                    if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
            continue;
        }
        // unpack_in refuses paths that resolve outside rootfs (through `..` or symlinks)
        if !entry.unpack_in(rootfs)? {
            return Err(std::io::Error::other(format!("entry {} escapes the root", path.display())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        /// A path written raw into the header, bypassing the builder's checks.
        Raw(&'a str, &'a [u8]),
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                E::File(p, d) => {
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, *d).unwrap();
                }
                E::Link(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                E::Raw(p, d) => {
                    h.as_gnu_mut().unwrap().name[..p.len()].copy_from_slice(p.as_bytes());
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    h.set_cksum();
                    b.append(&h, *d).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// An OCI archive with these (uncompressed) layers; `corrupt` alters the last layer's bytes
    /// after its digest was taken.
    fn archive(dir: &Path, layers: &[Vec<u8>], corrupt: bool) -> (PathBuf, [u8; 32]) {
        let config = serde_json::to_vec(&serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["A=1"]}})).unwrap();
        let descs: Vec<_> = layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(l)), "size": l.len()}))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": format!("sha256:{}", sha(&config)), "size": config.len()},
            "layers": descs
        }))
        .unwrap();
        let index =
            serde_json::to_vec(&serde_json::json!({"manifests": [{"digest": format!("sha256:{}", sha(&manifest))}]}))
                .unwrap();
        let path = dir.join("image.tar");
        let mut ar = tar::Builder::new(File::create(&path).unwrap());
        let mut put = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            ar.append_data(&mut h, name, data).unwrap();
        };
        put("index.json", &index);
        put(&format!("blobs/sha256/{}", sha(&config)), &config);
        put(&format!("blobs/sha256/{}", sha(&manifest)), &manifest);
        for (i, l) in layers.iter().enumerate() {
            let mut bytes = l.clone();
            if corrupt && i == layers.len() - 1 {
                let n = bytes.len();
                bytes[n / 3] ^= 1;
            }
            put(&format!("blobs/sha256/{}", sha(l)), &bytes);
        }
        ar.finish().unwrap();
        drop(ar);
        let digest = file_sha256(&path).unwrap();
        (path, digest)
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let l1 = layer(&[E::Dir("a/"), E::File("a/x", b"x"), E::File("a/y", b"y"), E::Dir("b/"), E::File("b/z", b"z")]);
        let l2 = layer(&[E::File("a/.wh.x", b""), E::File("b/.wh..wh..opq", b""), E::File("b/new", b"n")]);
        let (path, digest) = archive(tmp.path(), &[l1, l2], false);
        let img = unpack(&tmp.path().join("images"), &path, &digest).unwrap();
        let r = &img.rootfs;
        assert!(!r.join("a/x").exists() && r.join("a/y").exists());
        assert!(!r.join("b/z").exists() && r.join("b/new").exists());
        assert_eq!((img.info.cmd.clone(), img.info.env.clone()), (vec!["sh".to_string()], vec!["A=1".to_string()]));
        assert!(img.info.manifest_digest.starts_with("sha256:"));
        // cached: a second unpack reads it back
        assert_eq!(cached(&tmp.path().join("images"), &digest).unwrap().info, img.info);
    }

    #[test]
    fn hostile_archives_are_refused() {
        for (name, l) in [
            ("dotdot", layer(&[E::Raw("../evil", b"x")])),
            ("through a symlink", layer(&[E::Link("etc", "/tmp"), E::File("etc/bdc-image-test-evil", b"x")])),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (path, digest) = archive(tmp.path(), &[l], false);
            let err = unpack(&tmp.path().join("images"), &path, &digest).unwrap_err();
            assert!(err.to_string().contains("layer"), "{name}: {err}");
            assert!(!tmp.path().join("images/evil").exists() && !Path::new("/tmp/bdc-image-test-evil").exists());
        }
        let tmp = tempfile::tempdir().unwrap();
        let (path, digest) = archive(tmp.path(), &[layer(&[E::File("f", b"data")])], true);
        let err = unpack(&tmp.path().join("images"), &path, &digest).unwrap_err();
        assert!(err.to_string().contains("does not match its digest"), "{err}");
        std::fs::write(tmp.path().join("junk.tar"), b"not a tar at all").unwrap();
        let err = unpack(&tmp.path().join("images"), &tmp.path().join("junk.tar"), &[0; 32]).unwrap_err();
        assert!(err.to_string().contains("image archive"), "{err}");
    }
}
