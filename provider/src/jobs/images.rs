//! The provider's unpacked images, under a disk budget.
//!
//! Buyers upload image archives; each is unpacked once ([`super::image::unpack`]) and reused by
//! later jobs naming the same archive hash. Intake is bounded so strangers cannot fill the disk
//! or block jobs:
//! - at most [`ImagesConfig::max_uploads`] uploads at once (more are refused as busy), each
//!   bounded in size and time by the caller;
//! - before an upload, room is made for the archive plus the most it may unpack to
//!   ([`super::image::UnpackLimits`]): unpacked images no job is using are evicted, least
//!   recently used first, until the budget holds it; when in-use images fill the budget the
//!   upload is refused as busy;
//! - unpacking holds a lock of that image only: other images unpack, and other jobs run,
//!   meanwhile.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::image::{self, Image, ImageError, UnpackLimits};

/// How much image intake a provider accepts.
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    /// Disk for unpacked images and uploads in flight, bytes.
    pub disk_budget: u64,
    /// Uploads received at once.
    pub max_uploads: usize,
    pub unpack: UnpackLimits,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self { disk_budget: 8 << 30, max_uploads: 2, unpack: UnpackLimits::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0} image uploads are in progress; try again later")]
    UploadsBusy(usize),
    #[error("this buyer already has an image upload in progress; one at a time")]
    PeerBusy,
    #[error(
        "no room for this image: it needs up to {needed} bytes of the {budget}-byte image budget, and images in use hold {in_use}"
    )]
    NoRoom { needed: u64, budget: u64, in_use: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("image unpack task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Debug)]
struct Entry {
    bytes: u64,
    last_used: SystemTime,
    leases: usize,
}

#[derive(Debug, Default)]
struct State {
    images: HashMap<[u8; 32], Entry>,
    /// Bytes held for uploads and unpacks in flight.
    reserved: u64,
    /// Buyers (EndpointIds) with an upload in flight: one each, so one buyer cannot hold every
    /// upload slot.
    uploaders: std::collections::HashSet<[u8; 32]>,
    unpacking: HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Debug)]
pub(crate) struct Images {
    dir: PathBuf,
    cfg: ImagesConfig,
    uploads: Arc<Semaphore>,
    state: Mutex<State>,
}

/// An image a job is using: not evicted until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    images: Arc<Images>,
    sha: [u8; 32],
    pub image: Image,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(e) = self.images.state.lock().expect("images lock").images.get_mut(&self.sha) {
            e.leases = e.leases.saturating_sub(1);
        }
    }
}

/// Disk held for one upload and its unpack; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    images: Arc<Images>,
    bytes: u64,
    peer: [u8; 32],
    _permit: OwnedSemaphorePermit,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.images.state.lock().expect("images lock");
        s.reserved = s.reserved.saturating_sub(self.bytes);
        s.uploaders.remove(&self.peer);
    }
}

fn last_used(dir: &Path) -> SystemTime {
    std::fs::metadata(dir.join("image.json")).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Images {
    /// The images under `dir`; leftovers of uploads and unpacks a stop interrupted are removed.
    pub(crate) fn open(dir: PathBuf, cfg: ImagesConfig) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let mut images = HashMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                continue;
            }
            let Some(sha) = hex::decode(&name).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else { continue };
            let Some(img) = image::cached(&dir, &sha) else {
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            };
            let bytes = match img.info.unpacked_bytes {
                0 => super::rootfs::Root::open(&img.rootfs).map(|r| r.usage()).unwrap_or(0),
                n => n,
            };
            images.insert(sha, Entry { bytes, last_used: last_used(&e.path()), leases: 0 });
        }
        let uploads = Arc::new(Semaphore::new(cfg.max_uploads.max(1)));
        Ok(Arc::new(Self { dir, cfg, uploads, state: Mutex::new(State { images, ..Default::default() }) }))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the unpacked images take, as recorded.
    pub(crate) fn used(&self) -> u64 {
        self.state.lock().expect("images lock").images.values().map(|e| e.bytes).sum()
    }

    /// The unpacked image for an archive hash, leased to a job.
    pub(crate) fn get(self: &Arc<Self>, sha: &[u8; 32]) -> Option<Lease> {
        let image = image::cached(&self.dir, sha)?;
        {
            let mut s = self.state.lock().expect("images lock");
            let e = s.images.get_mut(sha)?;
            e.leases += 1;
            e.last_used = SystemTime::now();
        }
        let stamp = self.dir.join(hex::encode(sha)).join("image.json");
        if let Ok(f) = std::fs::File::options().append(true).open(stamp) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(Lease { images: self.clone(), sha: *sha, image })
    }

    /// Room for an upload of `archive_bytes` by buyer `peer` and its unpack, made by evicting
    /// unused images (least recently used first); refused when uploads are at their limit, the
    /// buyer already uploads one, or in-use images leave no room.
    pub(crate) fn reserve(self: &Arc<Self>, archive_bytes: u64, peer: [u8; 32]) -> Result<Reservation, IntakeError> {
        let needed = archive_bytes.saturating_add(self.cfg.unpack.max_unpacked_bytes);
        let (evict, permit) = {
            let mut s = self.state.lock().expect("images lock");
            if s.uploaders.contains(&peer) {
                return Err(IntakeError::PeerBusy);
            }
            let permit =
                self.uploads.clone().try_acquire_owned().map_err(|_| IntakeError::UploadsBusy(self.cfg.max_uploads))?;
            let (evict, fits) = plan_eviction(&s, needed, self.cfg.disk_budget);
            if !fits {
                let in_use = s.images.values().filter(|e| e.leases > 0).map(|e| e.bytes).sum::<u64>() + s.reserved;
                return Err(IntakeError::NoRoom { needed, budget: self.cfg.disk_budget, in_use });
            }
            // moved aside under the lock: no `get` or `unpack` finds them from here on
            let mut gone = Vec::new();
            for sha in &evict {
                s.images.remove(sha);
                let aside = self.dir.join(format!(".evicted-{}", hex::encode(sha)));
                if std::fs::rename(self.dir.join(hex::encode(sha)), &aside).is_ok() {
                    gone.push(aside);
                }
            }
            s.reserved += needed;
            s.uploaders.insert(peer);
            (gone, permit)
        };
        for aside in evict {
            tracing::info!(image = %aside.display(), "image evicted (disk budget)");
            let _ = std::fs::remove_dir_all(aside);
        }
        Ok(Reservation { images: self.clone(), bytes: needed, peer, _permit: permit })
    }

    /// Unpacks an uploaded archive (its hash checked by the caller) under this image's own lock,
    /// and leases it; the reservation is given back once the image's real size is recorded.
    pub(crate) async fn unpack(
        self: &Arc<Self>,
        sha: [u8; 32],
        upload: PathBuf,
        reservation: Reservation,
    ) -> Result<Lease, IntakeError> {
        let lock = self.state.lock().expect("images lock").unpacking.entry(sha).or_default().clone();
        let guard = lock.lock().await;
        let result = match self.get(&sha) {
            // another buyer sent the same image meanwhile
            Some(lease) => Ok(lease),
            None => {
                let (dir, limits) = (self.dir.clone(), self.cfg.unpack);
                let img = tokio::task::spawn_blocking(move || image::unpack(&dir, &upload, &sha, &limits)).await??;
                {
                    let mut s = self.state.lock().expect("images lock");
                    let entry = Entry { bytes: img.info.unpacked_bytes, last_used: SystemTime::now(), leases: 1 };
                    s.images.insert(sha, entry);
                }
                Ok(Lease { images: self.clone(), sha, image: img })
            }
        };
        drop(reservation);
        drop(guard);
        let mut s = self.state.lock().expect("images lock");
        if Arc::strong_count(&lock) <= 2 {
            s.unpacking.remove(&sha);
        }
        result
    }
}

/// Which unused images to evict, least recently used first, so that `needed` more bytes fit in
/// `budget`; and whether they then fit.
fn plan_eviction(s: &State, needed: u64, budget: u64) -> (Vec<[u8; 32]>, bool) {
    let mut used: u64 = s.images.values().map(|e| e.bytes).sum::<u64>() + s.reserved;
    let mut idle: Vec<(&[u8; 32], &Entry)> = s.images.iter().filter(|(_, e)| e.leases == 0).collect();
    idle.sort_by_key(|(_, e)| e.last_used);
    let mut evict = Vec::new();
    for (sha, e) in idle {
        if used.saturating_add(needed) <= budget {
            break;
        }
        used -= e.bytes;
        evict.push(*sha);
    }
    (evict, used.saturating_add(needed) <= budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: u64, t: u64, leases: usize) -> Entry {
        Entry { bytes, last_used: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t), leases }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_idle_images_only() {
        let mut s = State::default();
        s.images.insert([1; 32], entry(40, 10, 0));
        s.images.insert([2; 32], entry(40, 5, 1)); // oldest, but in use
        s.images.insert([3; 32], entry(40, 20, 0));
        // 120 used of 150: 50 more needs one eviction, the older idle one
        assert_eq!(plan_eviction(&s, 50, 150), (vec![[1; 32]], true));
        // 100 more: both idle ones go
        assert_eq!(plan_eviction(&s, 100, 150), (vec![[1; 32], [3; 32]], true));
        // 120 more cannot fit beside the one in use
        assert!(!plan_eviction(&s, 120, 150).1);
        s.reserved = 30;
        assert!(!plan_eviction(&s, 100, 150).1, "bytes reserved for uploads in flight count");
    }

    fn images(tmp: &Path, budget: u64, uploads: usize) -> Arc<Images> {
        let unpack = UnpackLimits { max_unpacked_bytes: 1 << 20, max_entries: 100 };
        Images::open(tmp.join("images"), ImagesConfig { disk_budget: budget, max_uploads: uploads, unpack }).unwrap()
    }

    /// An archive with one file of `n` bytes named `name`: (path, sha, size).
    fn one_file(tmp: &Path, name: &str, n: usize) -> (PathBuf, [u8; 32], u64) {
        use crate::jobs::image::tests::{E, archive, layer};
        let d = tmp.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let data = vec![7u8; n];
        let (path, sha) = archive(&d, &[layer(&[E::File(name, &data)])], false);
        let size = std::fs::metadata(&path).unwrap().len();
        (path, sha, size)
    }

    #[tokio::test]
    async fn intake_is_bounded_by_uploads_and_the_disk_budget() {
        let tmp = tempfile::tempdir().unwrap();
        // 1.6 MiB: room for one reservation (archive + 1 MiB unpack allowance) beside one image, not two
        let imgs = images(tmp.path(), (8 << 20) / 5, 1);
        let (a, sha_a, size_a) = one_file(tmp.path(), "a", 200 << 10);
        let r = imgs.reserve(size_a, [1; 32]).unwrap();
        assert!(matches!(imgs.reserve(10, [2; 32]), Err(IntakeError::UploadsBusy(1))), "a second upload at once");
        let lease_a = imgs.unpack(sha_a, a, r).await.unwrap();
        assert!(lease_a.image.rootfs.join("a").exists() && imgs.used() > 200 << 10);
        // A is in use: B fits beside it, but C then finds no room while both are leased
        let (b, sha_b, size_b) = one_file(tmp.path(), "b", 200 << 10);
        let lease_b = imgs.unpack(sha_b, b, imgs.reserve(size_b, [1; 32]).unwrap()).await.unwrap();
        let (c, sha_c, size_c) = one_file(tmp.path(), "c", 200 << 10);
        assert!(matches!(imgs.reserve(size_c, [1; 32]), Err(IntakeError::NoRoom { .. })));
        // once idle, the least recently used (A) goes first
        drop(lease_a);
        drop(lease_b);
        drop(imgs.get(&sha_b).unwrap()); // B used after A
        let lease_c = imgs.unpack(sha_c, c, imgs.reserve(size_c, [1; 32]).unwrap()).await.unwrap();
        assert!(imgs.get(&sha_a).is_none() && !tmp.path().join("images").join(hex::encode(sha_a)).exists());
        assert!(imgs.get(&sha_b).is_some() && lease_c.image.rootfs.join("c").exists());
        // with two slots, one buyer still uploads one image at a time; another buyer gets the
        // second slot; a slot given back is free again
        let two = images(&tmp.path().join("two"), 64 << 20, 2);
        let first = two.reserve(10, [7; 32]).unwrap();
        assert!(matches!(two.reserve(10, [7; 32]), Err(IntakeError::PeerBusy)));
        let other = two.reserve(10, [8; 32]).unwrap();
        drop(first);
        drop(two.reserve(10, [7; 32]).unwrap());
        drop(other);
        // a reopened store knows what is on disk, and clears leftovers
        std::fs::create_dir_all(tmp.path().join("images/.deadbeef.tmp")).unwrap();
        drop(lease_c);
        let again = images(tmp.path(), 5 << 20, 1);
        assert!(again.get(&sha_b).is_some() && again.get(&sha_c).is_some());
        assert!(!tmp.path().join("images/.deadbeef.tmp").exists());
    }
}
