//! OCI images from local archives (no registry): `podman save --format oci-archive`, or any tar
//! of an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`).
//!
//! An archive is unpacked once into `<dir>/<archive sha256>/rootfs`, keyed by the SHA-256 of the
//! archive file itself (what the buyer names and uploads). The archive and its layers are a
//! stranger's files, applied as root, so:
//! - of the outer archive only regular files named `index.json`, `oci-layout` and
//!   `blobs/sha256/<hex>` are read (a symlink there is refused, everything else skipped), into
//!   files this code names, never more bytes than the archive holds;
//! - every blob read is checked against its digest, and JSON documents are size-capped;
//! - layers (tar, tar+gzip) are applied in order with OCI whiteouts (`.wh.<name>` removes,
//!   `.wh..wh..opq` hides the lower layers' entries of a directory) through `super::rootfs`:
//!   nothing is written, linked or removed outside the root or through a symlink;
//! - all layers together may decompress to at most [`UnpackLimits::max_unpacked_bytes`] and hold
//!   at most [`UnpackLimits::max_entries`] entries (gzip bombs stop there);
//! - setuid and setgid bits are dropped, devices and FIFOs skipped, owners not kept (everything
//!   belongs to root; the job runs as nobody on a read-only root).

use std::{
    collections::HashSet,
    ffi::OsString,
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::rootfs::{self, Root, RootError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The archive's structure is wrong in a way the message names.
    #[error("image archive: {0}")]
    Malformed(&'static str),
    #[error("image archive: not a readable tar: {0}")]
    NotTar(#[source] std::io::Error),
    #[error("image archive: {entry} holds more bytes than the archive itself")]
    Overlong { entry: String },
    #[error("image archive: unsupported or malformed digest {digest:?}")]
    BadDigest { digest: String },
    #[error("image archive: blob {digest} missing: {source}")]
    MissingBlob {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image archive: blob {digest} does not match its digest")]
    DigestMismatch { digest: String },
    #[error("image archive: no {what}: {source}")]
    NoDocument {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image archive: {what} is {len} bytes, over the {MAX_JSON_BYTES}-byte limit")]
    DocumentTooLarge { what: String, len: u64 },
    #[error("image archive: {what} is not JSON: {source}")]
    NotJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image archive: layer {digest}: media type {media:?} is not supported (tar or tar+gzip)")]
    LayerMediaType { digest: String, media: String },
    #[error("image archive I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An entry of the outer archive that must be a regular file is a link, device or FIFO.
    #[error("image archive: {entry} is not a regular file")]
    NotRegular { entry: String },
    #[error("image archive holds {entry} twice")]
    Duplicate { entry: String },
    /// The layers decompress to more than the limit (a decompression bomb, or just too big).
    #[error("image unpacks to more than {limit} bytes, this provider's limit")]
    TooLarge { limit: u64 },
    #[error("image layers hold more than {limit} entries, this provider's limit")]
    TooManyEntries { limit: u64 },
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: Box<ImageError>,
    },
    /// An entry that would be written outside the root or through a symlink.
    #[error("entry refused: {0}")]
    Entry(#[from] RootError),
}

/// Bounds on what one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes all layers may decompress to, and file bytes they may write.
    pub max_unpacked_bytes: u64,
    /// Entries in all layers.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self { max_unpacked_bytes: 2 << 30, max_entries: 200_000 }
    }
}

/// Largest JSON document (index, manifest, config) read from an archive.
const MAX_JSON_BYTES: u64 = 4 << 20;

/// What a job needs from an image's config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image manifest's digest (`sha256:…`), as registries and podman name the image.
    pub manifest_digest: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
    /// Disk the unpacked root takes, bytes (for the provider's image disk budget).
    #[serde(default)]
    pub unpacked_bytes: u64,
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

/// The mount points the sandbox needs; each made a real directory (a symlink or file the image
/// put there is replaced), `/tmp` writable by anyone.
const MOUNT_POINTS: [&str; 6] = ["proc", "dev", "sys", "tmp", "data", "out"];

/// Unpacks `archive` (whose SHA-256 is `archive_sha256`) under `dir`, once.
pub fn unpack(
    dir: &Path,
    archive: &Path,
    archive_sha256: &[u8; 32],
    limits: &UnpackLimits,
) -> Result<Image, ImageError> {
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
    let result = (|| {
        extract_layout(archive, &layout)?;
        let root = Root::open(&rootfs)?;
        let mut info = apply_layout(&layout, &root, limits)?;
        let _ = std::fs::remove_dir_all(&layout);
        for d in MOUNT_POINTS {
            let mode = if d == "tmp" { 0o1777 } else { 0o755 };
            root.mkdir(&[OsString::from(d)], mode)?;
        }
        info.unpacked_bytes = root.usage();
        Ok(info)
    })();
    let info = match result {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    std::fs::write(tmp.join("image.json"), serde_json::to_vec_pretty(&info).expect("json")).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    Ok(Image { rootfs: final_dir.join("rootfs"), info })
}

/// Copies the layout files of the outer archive into `layout`: regular files only, never more
/// bytes in all than the archive itself holds (a sparse entry cannot inflate).
fn extract_layout(archive: &Path, layout: &Path) -> Result<(), ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let file = File::open(archive).map_err(io(archive))?;
    let mut budget = file.metadata().map_err(io(archive))?.len();
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(io(layout))?;
    let mut ar = tar::Archive::new(BufReader::new(file));
    let unreadable = ImageError::NotTar;
    for entry in ar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let Ok(comps) = rootfs::clean(&path) else { continue };
        let comps: Vec<&str> = comps.iter().filter_map(|c| c.to_str()).collect();
        let name = match comps.as_slice() {
            ["index.json"] | ["oci-layout"] => comps[0].to_string(),
            ["blobs", "sha256", hex] if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                format!("blobs/sha256/{}", hex.to_ascii_lowercase())
            }
            _ => continue,
        };
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(ImageError::NotRegular { entry: name });
        }
        let target = layout.join(&name);
        let mut out = match File::create_new(&target) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ImageError::Duplicate { entry: name });
            }
            Err(e) => return Err(ImageError::Io { path: target, source: e }),
        };
        let n = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out).map_err(unreadable)?;
        if n > budget {
            return Err(ImageError::Overlong { entry: name });
        }
        budget -= n;
    }
    Ok(())
}

/// Reads a blob of the layout, checking it against its digest.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let bad_digest = || ImageError::BadDigest { digest: digest.to_string() };
    let hex = digest.strip_prefix("sha256:").ok_or_else(bad_digest)?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad_digest());
    }
    let path = layout.join("blobs/sha256").join(hex.to_ascii_lowercase());
    let got = file_sha256(&path).map_err(|source| ImageError::MissingBlob { digest: digest.to_string(), source })?;
    if hex::encode(got) != hex.to_lowercase() {
        return Err(ImageError::DigestMismatch { digest: digest.to_string() });
    }
    Ok(path)
}

fn read_json(path: &Path, what: &str) -> Result<serde_json::Value, ImageError> {
    let len =
        std::fs::metadata(path).map_err(|source| ImageError::NoDocument { what: what.to_string(), source })?.len();
    if len > MAX_JSON_BYTES {
        return Err(ImageError::DocumentTooLarge { what: what.to_string(), len });
    }
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::NotJson { what: what.to_string(), source })
}

fn json_blob(layout: &Path, digest: &str) -> Result<serde_json::Value, ImageError> {
    read_json(&blob(layout, digest)?, &format!("blob {digest}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// What all layers of one image have used of the limits so far.
struct Budget {
    limits: UnpackLimits,
    read: u64,
    written: u64,
    entries: u64,
}

/// A reader charging every decompressed byte to the budget.
struct Counted<'a, R> {
    inner: R,
    budget: &'a std::cell::Cell<u64>,
    limit: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.budget.get() + n as u64;
        self.budget.set(total);
        if total > self.limit {
            return Err(std::io::Error::other("image unpack budget exceeded"));
        }
        Ok(n)
    }
}

fn apply_layout(layout: &Path, root: &Root, limits: &UnpackLimits) -> Result<ImageInfo, ImageError> {
    let index = read_json(&layout.join("index.json"), "index.json (not an OCI archive?)")?;
    let mut desc = index["manifests"].get(0).cloned().ok_or(ImageError::Malformed("index.json lists no manifest"))?;
    let mut budget = Budget { limits: *limits, read: 0, written: 0, entries: 0 };
    // an image index may wrap the manifest (multi-platform): take the first linux/amd64 or the first
    for _ in 0..4 {
        let digest =
            desc["digest"].as_str().ok_or(ImageError::Malformed("manifest descriptor without digest"))?.to_string();
        let doc = json_blob(layout, &digest)?;
        if let Some(ms) = doc["manifests"].as_array() {
            desc = ms
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .or(ms.first())
                .cloned()
                .ok_or(ImageError::Malformed("empty image index"))?;
            continue;
        }
        let config = json_blob(
            layout,
            doc["config"]["digest"].as_str().ok_or(ImageError::Malformed("manifest has no config"))?,
        )?;
        let layers = doc["layers"].as_array().cloned().unwrap_or_default();
        for l in &layers {
            let d = l["digest"].as_str().ok_or(ImageError::Malformed("layer without digest"))?;
            let media = l["mediaType"].as_str().unwrap_or("");
            let path = blob(layout, d)?;
            let f = File::open(&path).map_err(|source| ImageError::Io { path: path.clone(), source })?;
            let reader: Box<dyn Read> = if media.ends_with("gzip") {
                Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
            } else if media.ends_with("tar") || media.is_empty() {
                Box::new(BufReader::new(f))
            } else {
                return Err(ImageError::LayerMediaType { digest: d.to_string(), media: media.to_string() });
            };
            apply_layer(reader, root, &mut budget)
                .map_err(|e| ImageError::Layer { digest: d.to_string(), source: Box::new(e) })?;
        }
        let c = &config["config"];
        return Ok(ImageInfo {
            manifest_digest: digest,
            env: strings(&c["Env"]),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            workdir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            unpacked_bytes: 0,
        });
    }
    Err(ImageError::Malformed("image indexes nested too deep"))
}

/// Applies one layer tar on top of the root.
fn apply_layer(reader: impl Read, root: &Root, budget: &mut Budget) -> Result<(), ImageError> {
    let read = std::cell::Cell::new(budget.read);
    let limit = budget.limits.max_unpacked_bytes;
    let mut ar = tar::Archive::new(Counted { inner: reader, budget: &read, limit });
    let result = apply_entries(&mut ar, root, budget);
    budget.read = read.get();
    // the tar reader wraps the reader's error: the count tells whether it was the budget
    if read.get() > limit {
        return Err(ImageError::TooLarge { limit });
    }
    result
}

fn apply_entries<R: Read>(ar: &mut tar::Archive<R>, root: &Root, budget: &mut Budget) -> Result<(), ImageError> {
    let broken = ImageError::NotTar;
    // entries this layer wrote: an opaque whiteout hides the lower layers' entries, not these
    let mut written: HashSet<Vec<OsString>> = HashSet::new();
    let mut opaque: Vec<Vec<OsString>> = Vec::new();
    for entry in ar.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        budget.entries += 1;
        if budget.entries > budget.limits.max_entries {
            return Err(ImageError::TooManyEntries { limit: budget.limits.max_entries });
        }
        let comps = rootfs::clean(&entry.path().map_err(broken)?)?;
        let Some(name) = comps.last().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if let Some(target) = name.strip_prefix(".wh.") {
            let parent = comps[..comps.len() - 1].to_vec();
            if target == ".wh..opq" {
                opaque.push(parent);
            } else if target.is_empty() || target == "." || target == ".." {
                return Err(RootError::Escapes { path: entry.path().map_err(broken)?.display().to_string() }.into());
            } else {
                let mut p = parent;
                p.push(OsString::from(target));
                root.remove(&p)?;
            }
            continue;
        }
        let header = entry.header();
        // setuid and setgid never survive; the sticky bit may
        let mode = header.mode().unwrap_or(0o644) & 0o1777;
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => root.mkdir(&comps, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = root.create_file(&comps, mode)?;
                let left = budget.limits.max_unpacked_bytes.saturating_sub(budget.written);
                let n = std::io::copy(&mut (&mut entry).take(left + 1), &mut f).map_err(broken)?;
                budget.written += n;
                if n > left {
                    return Err(ImageError::TooLarge { limit: budget.limits.max_unpacked_bytes });
                }
            }
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name().map_err(broken)?.ok_or(ImageError::Malformed("symlink without target"))?;
                root.symlink(&comps, &target)?;
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name().map_err(broken)?.ok_or(ImageError::Malformed("hard link without target"))?;
                root.hardlink(&comps, &rootfs::clean(&target)?)?;
            }
            // devices and FIFOs have no place in a job's root (its /dev is the sandbox's own)
            _ => continue,
        }
        written.insert(comps);
    }
    for dir in opaque {
        root.empty_dir(&dir, |name| {
            let mut p = dir.clone();
            p.push(name.to_os_string());
            written.contains(&p)
        })?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
