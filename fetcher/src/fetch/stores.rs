//! Where a fetch's data lives and how it leaves: a store lent by its owner (a mirror's), a
//! staging store per dataset (`--move`), the deal book's lock, and the export into the output
//! directory (copied, moved, or not at all); what the store already holds of a dataset.

use std::collections::HashMap;

use super::*;
use crate::export::{export_file, export_range, move_file};

/// Locks `<data-dir>/deals.lock`, or says another process holds it.
pub(super) fn lock_book(data_dir: &Path) -> Result<std::fs::File, FetchError> {
    let path = data_dir.join("deals.lock");
    let err = |e: std::io::Error| FetchError::Store { path: data_dir.to_path_buf(), source: Box::new(e) };
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(err(std::io::Error::new(std::io::ErrorKind::WouldBlock, "its deal book is locked by another process")))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

/// In a staging dir: its files are being moved out (see [`Fetcher::staged`]).
const MOVING: &str = "MOVING";

impl Fetcher {
    /// A fetcher that fetches into `store`, which its owner keeps open after
    /// [`shutdown`](Self::shutdown) (a mirror fetches straight into its provider's store). The
    /// data dir still holds the fetcher's key and deal book.
    pub async fn with_store(cfg: FetcherConfig, store: FsStore) -> Result<Self, FetchError> {
        let store_err = |e: std::io::Error| FetchError::Store { path: cfg.data_dir.clone(), source: Box::new(e) };
        std::fs::create_dir_all(&cfg.data_dir).map_err(store_err)?;
        let key = bdc_core::keys::load_or_create(&cfg.data_dir.join("node.key"))
            .map_err(|e| FetchError::Store { path: cfg.data_dir.clone(), source: Box::new(e) })?;
        let book_lock = lock_book(&cfg.data_dir)?;
        let endpoint = bind_endpoint(&cfg.net, key, vec![]).await?;
        Ok(Self {
            cfg,
            store,
            endpoint,
            metrics: Default::default(),
            owns_store: false,
            staging: None,
            _book_lock: Some(book_lock),
        })
    }

    /// Runs `f` with a fetcher (this one's endpoint, key, deal book and metrics) whose store is
    /// a staging store for `root`, `<data-dir>/staging/<root>`: what `f` fetches with
    /// [`Export::Move`] is moved out of it rather than copied, and the staging store is deleted
    /// once `f` succeeds. After a failure it stays, so the next run resumes from it. A staging
    /// store whose move was interrupted may name files in the output dir, which their owner may
    /// have changed since: it is deleted before anything is read from it.
    pub async fn staged<T>(
        &self,
        root: Hash,
        f: impl AsyncFnOnce(&Fetcher) -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let dir = self.cfg.data_dir.join("staging").join(root.to_hex());
        let io = |source: std::io::Error| FetchError::Store { path: dir.clone(), source: Box::new(source) };
        if dir.join(MOVING).exists() {
            tracing::info!(%root, "an earlier move out of the staging store was interrupted: starting afresh");
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        let store = FsStore::load(dir.join("store"))
            .await
            .map_err(|e| FetchError::Store { path: dir.join("store"), source: e.into() })?;
        let staged = Fetcher {
            cfg: self.cfg.clone(),
            store,
            endpoint: self.endpoint.clone(),
            metrics: self.metrics.clone(),
            owns_store: true,
            staging: Some(dir.clone()),
            // this fetcher holds the lock
            _book_lock: None,
        };
        let res = f(&staged).await;
        if let Err(e) = staged.store.shutdown().await {
            tracing::warn!("staging store shutdown failed: {e:#}");
        }
        // the fetch is done: a staging store that cannot be removed costs disk, not the fetch
        if res.is_ok()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!("cannot remove the staging store {}: {e}", dir.display());
        }
        res
    }

    /// Whether this fetcher fetches into its own store (the one the deal book's deals filled),
    /// not a staging store or one lent by a mirror.
    pub(crate) fn fills_own_store(&self) -> bool {
        self.owns_store && self.staging.is_none()
    }

    /// Writes the verified `files` (or `sel`'s part of them) of `root` into `out` as `opts.export`
    /// says.
    pub(super) async fn export(
        &self,
        root: Hash,
        files: Vec<(String, Hash)>,
        sel: Option<Selection>,
        out: &Path,
        opts: &FetchOptions,
        on: &mut impl FnMut(FetchEvent),
    ) -> Result<Vec<ExportedFile>, FetchError> {
        let store: &iroh_blobs::api::Store = &self.store;
        let mut exported = Vec::with_capacity(files.len());
        if opts.export == Export::Move {
            // from here on the staging store may name files in the output dir, which their
            // owner may change: an interrupted move discards the staging store (see `staged`)
            let marker = self.staging.as_deref().unwrap_or(&self.cfg.data_dir).join(MOVING);
            std::fs::write(&marker, b"").map_err(|source| ExportError::Io { path: marker, source })?;
        }
        match sel {
            _ if opts.export == Export::None => {}
            Some(Selection { range: Some(r), .. }) => {
                let name = opts.raw_name.clone().unwrap_or_else(|| format!("{}.{}-{}", root.to_hex(), r.start, r.end));
                let f = export_range(store, root, out, &name, r).await?;
                self.metrics.exported_bytes.inc_by(f.size);
                on(FetchEvent::Exported(f.clone()));
                exported.push(f);
            }
            sel => {
                let files = sel.map(|s| s.files).unwrap_or(files);
                // files with the same content share one blob: it can be moved out only once,
                // so every name but its last is copied out while the store still holds it
                let last: HashMap<Hash, usize> = files.iter().enumerate().map(|(i, (_, h))| (*h, i)).collect();
                for (i, (name, hash)) in files.into_iter().enumerate() {
                    let f = match opts.export {
                        Export::Move if last.get(&hash) == Some(&i) => move_file(store, hash, out, &name).await?,
                        _ => export_file(store, hash, out, &name).await?,
                    };
                    self.metrics.exported_bytes.inc_by(f.size);
                    on(FetchEvent::Exported(f.clone()));
                    exported.push(f);
                }
            }
        }
        Ok(exported)
    }

    /// Whether the store already holds, verified, all that `opts` asks of the dataset.
    pub(crate) async fn holds(&self, ticket: &BlobTicket, opts: &FetchOptions) -> Result<bool, FetchError> {
        let remote = self.store.remote();
        if let Select::All = opts.select {
            return Ok(remote.local(ticket.hash_and_format()).await.map_err(FetchError::store)?.is_complete());
        }
        let Ok(files) = self.file_list(ticket, ticket.addr().id, opts).await else {
            return Ok(false);
        };
        // a selection that is wrong against verified names or size is said now, before any deal
        // (a range's size not yet verified is checked after the probe)
        match self.selection(ticket, &files, opts).await? {
            Some(s) => Ok(remote.local_for_request(s.request).await.map_err(FetchError::store)?.is_complete()),
            None => Ok(remote.local(ticket.hash_and_format()).await.map_err(FetchError::store)?.is_complete()),
        }
    }

    /// (total, bytes present locally) of what is wanted: every file, the selected files, or the
    /// selected range of a raw blob (counted in the chunk groups that cover it, at most its length).
    pub(super) async fn wanted_state(
        &self,
        files: &[(String, Hash)],
        sel: Option<&Selection>,
    ) -> Result<(u64, u64), FetchError> {
        match sel {
            None => self.payload_state(files).await,
            Some(Selection { range: Some(r), request, .. }) => {
                let bits = self.store.blobs().observe(request.hash).await.map_err(FetchError::store)?;
                let total = r.end.min(bits.size()).saturating_sub(r.start);
                let have = self.store.remote().local_for_request(request.clone()).await.map_err(FetchError::store)?;
                Ok((total, have.local_bytes().min(total)))
            }
            Some(s) => self.payload_state(&s.files).await,
        }
    }

    /// Whether every file's size is already verified in the store.
    pub(super) async fn sizes_known(&self, files: &[(String, Hash)]) -> Result<bool, FetchError> {
        for (_, hash) in files {
            let bits = self.store.blobs().observe(*hash).await.map_err(FetchError::store)?;
            if bits.validated_size().is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// (total size, bytes present locally) over `files`, from the store's verified bitfields.
    pub(super) async fn payload_state(&self, files: &[(String, Hash)]) -> Result<(u64, u64), FetchError> {
        let (mut total, mut local) = (0, 0);
        for (_, hash) in files {
            let bits = self.store.blobs().observe(*hash).await.map_err(FetchError::store)?;
            total += bits.size();
            local += bits.total_bytes();
        }
        Ok((total, local))
    }
}
