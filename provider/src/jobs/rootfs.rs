//! File-system writes confined to one directory tree, never through a symbolic link.
//!
//! An image's layers are strangers' tar files applied as root. Every entry — file, directory,
//! link, whiteout — is applied relative to a directory file descriptor opened component by
//! component with `O_NOFOLLOW`: a symlink anywhere on the way (one an earlier entry planted,
//! `etc -> /etc` say) stops the walk instead of being followed, and `..` is refused before any
//! walk. The last component is then created, replaced or removed with the `*at` calls on its
//! parent's descriptor, which never follow it either. This is the "beneath, no symlinks"
//! resolution of `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, done as a walk so it needs
//! no particular kernel.

use std::{
    ffi::{OsStr, OsString},
    os::fd::OwnedFd,
    path::{Component, Path},
};

use rustix::{
    fs::{AtFlags, CWD, FileType, Mode, OFlags},
    io::Errno,
};

/// Deepest path accepted (components), so a hostile entry cannot make a walk or a recursive
/// removal run deep.
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// `..`, or deeper than [`MAX_DEPTH`].
    #[error("{path:?} leaves the root or nests too deep")]
    Escapes { path: String },
    /// A symlink (or a non-directory) where a directory was needed on the way.
    #[error("{path:?} passes through {at:?}, which is a symbolic link or not a directory")]
    NotADirectory { path: String, at: String },
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &[OsString], e: Errno) -> RootError {
    RootError::Io { op, path: show(path), source: e.into() }
}

fn show(path: &[OsString]) -> String {
    path.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// An entry's path as components below the root: `/` and `.` dropped, `..` refused.
pub fn clean(path: &Path) -> Result<Vec<OsString>, RootError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(RootError::Escapes { path: path.display().to_string() }),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(RootError::Escapes { path: path.display().to_string() });
    }
    Ok(out)
}

/// A directory tree that writes stay inside.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

/// What is at a name inside a directory, not following a symlink.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<FileType>, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Root {
    /// Opens `path` (itself not a symlink) as the root.
    pub fn open(path: &Path) -> Result<Self, RootError> {
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootError::Io { op: "open root", path: path.display().to_string(), source: e.into() })?;
        Ok(Self { fd })
    }

    /// The directory at `comps`, made (mode 0755) where missing when `create`; refused where a
    /// symlink or a non-directory stands on the way.
    pub fn dir(&self, comps: &[OsString], create: bool) -> Result<OwnedFd, RootError> {
        let mut cur = rustix::io::dup(&self.fd).map_err(|e| io("dup", comps, e))?;
        for (i, c) in comps.iter().enumerate() {
            let next = match open_dir_at(&cur, c) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io("mkdir", &comps[..=i], e)),
                    }
                    open_dir_at(&cur, c)
                        .map_err(|_| RootError::NotADirectory { path: show(comps), at: show(&comps[..=i]) })?
                }
                Err(Errno::NOENT) => return Err(io("open", &comps[..=i], Errno::NOENT)),
                // ELOOP (a symlink under O_NOFOLLOW), ENOTDIR
                Err(_) => return Err(RootError::NotADirectory { path: show(comps), at: show(&comps[..=i]) }),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// The parent directory of `comps` (made where missing) and the last component.
    pub fn parent<'a>(&self, comps: &'a [OsString]) -> Result<(OwnedFd, &'a OsStr), RootError> {
        let (name, parent) = comps.split_last().ok_or_else(|| RootError::Escapes { path: "/".into() })?;
        Ok((self.dir(parent, true)?, name.as_os_str()))
    }

    /// A directory at `comps` (whatever stood there replaced unless it is a directory), with
    /// `mode`.
    pub fn mkdir(&self, comps: &[OsString], mode: u32) -> Result<(), RootError> {
        let (parent, name) = self.parent(comps)?;
        match kind_at(&parent, name).map_err(|e| io("stat", comps, e))? {
            Some(FileType::Directory) => {}
            Some(_) => {
                remove_at(&parent, name, 0).map_err(|e| io("replace", comps, e))?;
                rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(mode)).map_err(|e| io("mkdir", comps, e))?;
            }
            None => rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(mode)).map_err(|e| io("mkdir", comps, e))?,
        }
        let fd = open_dir_at(&parent, name).map_err(|e| io("open", comps, e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| io("chmod", comps, e))
    }

    /// A new regular file at `comps` (whatever stood there removed first), open for writing.
    pub fn create_file(&self, comps: &[OsString], mode: u32) -> Result<std::fs::File, RootError> {
        let (parent, name) = self.parent(comps)?;
        remove_at(&parent, name, 0).map_err(|e| io("replace", comps, e))?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io("create", comps, e))?;
        // the umask may have narrowed the mode
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| io("chmod", comps, e))?;
        Ok(std::fs::File::from(fd))
    }

    /// A symlink at `comps` pointing at `target` (stored as given: it is never followed here).
    pub fn symlink(&self, comps: &[OsString], target: &Path) -> Result<(), RootError> {
        let (parent, name) = self.parent(comps)?;
        remove_at(&parent, name, 0).map_err(|e| io("replace", comps, e))?;
        rustix::fs::symlinkat(target, &parent, name).map_err(|e| io("symlink", comps, e))
    }

    /// A hard link at `comps` to the entry at `target` (both inside the root; a symlink there is
    /// linked as the symlink itself).
    pub fn hardlink(&self, comps: &[OsString], target: &[OsString]) -> Result<(), RootError> {
        let (tparent, tname) = {
            let (name, parent) = target.split_last().ok_or_else(|| RootError::Escapes { path: "/".into() })?;
            (self.dir(parent, false)?, name.as_os_str())
        };
        let (parent, name) = self.parent(comps)?;
        remove_at(&parent, name, 0).map_err(|e| io("replace", comps, e))?;
        rustix::fs::linkat(&tparent, tname, &parent, name, AtFlags::empty()).map_err(|e| io("link", comps, e))
    }

    /// Removes whatever is at `comps` (a directory with everything in it); nothing there is fine.
    /// A symlink on the way to it means there is nothing of the root's to remove.
    pub fn remove(&self, comps: &[OsString]) -> Result<(), RootError> {
        let Some((name, parent)) = comps.split_last() else { return Ok(()) };
        let parent = match self.dir(parent, false) {
            Ok(p) => p,
            Err(RootError::NotADirectory { .. }) => return Ok(()),
            Err(RootError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_at(&parent, name, 0).map_err(|e| io("remove", comps, e))
    }

    /// Removes every entry of the directory at `comps` whose name `keep` refuses.
    pub fn empty_dir(&self, comps: &[OsString], keep: impl Fn(&OsStr) -> bool) -> Result<(), RootError> {
        let dir = match self.dir(comps, false) {
            Ok(d) => d,
            Err(RootError::NotADirectory { .. }) => return Ok(()),
            Err(RootError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for name in names(&dir).map_err(|e| io("read dir", comps, e))? {
            if !keep(&name) {
                remove_at(&dir, &name, 0).map_err(|e| io("remove", comps, e))?;
            }
        }
        Ok(())
    }

    /// Bytes of file data under the root (symlinks not followed), for the disk budget.
    pub fn usage(&self) -> u64 {
        usage_at(&self.fd, 0)
    }
}

fn names(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir`, recursively for a directory, never following a symlink.
fn remove_at(dir: &OwnedFd, name: &OsStr, depth: usize) -> Result<(), Errno> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            if depth > MAX_DEPTH * 4 {
                return Err(Errno::LOOP);
            }
            let sub = open_dir_at(dir, name)?;
            for n in names(&sub)? {
                remove_at(&sub, &n, depth + 1)?;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Some(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()),
    }
}

fn usage_at(dir: &OwnedFd, depth: usize) -> u64 {
    let Ok(list) = names(dir) else { return 0 };
    let mut total = 0;
    for n in list {
        let Ok(st) = rustix::fs::statat(dir, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
        total += st.st_blocks as u64 * 512;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory
            && depth < MAX_DEPTH * 4
            && let Ok(sub) = open_dir_at(dir, &n)
        {
            total += usage_at(&sub, depth + 1);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> Vec<OsString> {
        clean(Path::new(p)).unwrap()
    }

    #[test]
    fn writes_never_leave_the_root_or_follow_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let (root_dir, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(&root_dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep me").unwrap();
        let root = Root::open(&root_dir).unwrap();
        assert!(matches!(clean(Path::new("a/../../x")), Err(RootError::Escapes { .. })));
        assert_eq!(c("/etc/./passwd"), c("etc/passwd"), "absolute paths land inside");
        // a symlink planted to the outside, then writes and removals through it
        root.symlink(&c("evil"), &outside).unwrap();
        assert!(matches!(root.create_file(&c("evil/victim"), 0o644), Err(RootError::NotADirectory { .. })));
        assert!(matches!(root.mkdir(&c("evil/sub"), 0o755), Err(RootError::NotADirectory { .. })));
        root.remove(&c("evil/victim")).unwrap();
        root.empty_dir(&c("evil"), |_| false).unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep me");
        // removing the link removes the link, not what it points at
        root.remove(&c("evil")).unwrap();
        assert!(outside.join("victim").exists() && !root_dir.join("evil").exists());
        // a file over a symlink replaces the symlink
        root.symlink(&c("f"), &outside.join("victim")).unwrap();
        std::io::Write::write_all(&mut root.create_file(&c("f"), 0o4755).unwrap(), b"new").unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep me");
        assert_eq!(std::fs::read(root_dir.join("f")).unwrap(), b"new");
        // a hard link to a file outside cannot be named: the target path is walked inside too
        assert!(matches!(clean(Path::new("../outside/victim")), Err(RootError::Escapes { .. })));
        root.symlink(&c("out"), &outside).unwrap();
        assert!(matches!(root.hardlink(&c("h"), &c("out/victim")), Err(RootError::NotADirectory { .. })));
        root.mkdir(&c("d/e"), 0o755).unwrap();
        root.hardlink(&c("d/e/g"), &c("f")).unwrap();
        assert_eq!(std::fs::read(root_dir.join("d/e/g")).unwrap(), b"new");
        root.remove(&c("d")).unwrap();
        assert!(!root_dir.join("d").exists());
    }
}
