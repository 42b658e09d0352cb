//! Hostile archives and layers against the unpacker.

use sha2::{Digest, Sha256};

use super::*;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub(crate) enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    /// A path written raw into the header, bypassing the builder's checks.
    Raw(&'a str, &'a [u8]),
    HardLink(&'a str, &'a str),
    /// An empty file with this mode.
    Mode(&'a str, u32),
    Fifo(&'a str),
}

pub(crate) fn layer(entries: &[E]) -> Vec<u8> {
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
            E::HardLink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Mode(p, m) => {
                h.set_mode(*m);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
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
pub(crate) fn archive(dir: &Path, layers: &[Vec<u8>], corrupt: bool) -> (PathBuf, [u8; 32]) {
    let layers: Vec<_> = layers.iter().map(|l| (l.clone(), "application/vnd.oci.image.layer.v1.tar")).collect();
    archive_of(dir, &layers, corrupt)
}

fn archive_of(dir: &Path, layers: &[(Vec<u8>, &str)], corrupt: bool) -> (PathBuf, [u8; 32]) {
    let config = serde_json::to_vec(&serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["A=1"]}})).unwrap();
    let descs: Vec<_> = layers
        .iter()
        .map(|(l, media)| serde_json::json!({"mediaType": media, "digest": format!("sha256:{}", sha(l)), "size": l.len()}))
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
    for (i, (l, _)) in layers.iter().enumerate() {
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
    let img = unpack(&tmp.path().join("images"), &path, &digest, &UnpackLimits::default()).unwrap();
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
        let err = unpack(&tmp.path().join("images"), &path, &digest, &UnpackLimits::default()).unwrap_err();
        assert!(err.to_string().contains("layer"), "{name}: {err}");
        assert!(!tmp.path().join("images/evil").exists() && !Path::new("/tmp/bdc-image-test-evil").exists());
    }
    let tmp = tempfile::tempdir().unwrap();
    let (path, digest) = archive(tmp.path(), &[layer(&[E::File("f", b"data")])], true);
    let err = unpack(&tmp.path().join("images"), &path, &digest, &UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("does not match its digest"), "{err}");
    std::fs::write(tmp.path().join("junk.tar"), b"not a tar at all").unwrap();
    let err = unpack(&tmp.path().join("images"), &tmp.path().join("junk.tar"), &[0; 32], &UnpackLimits::default())
        .unwrap_err();
    assert!(err.to_string().contains("image archive"), "{err}");
}

fn unpack_default(tmp: &Path, layers: &[Vec<u8>]) -> Result<Image, ImageError> {
    let (path, digest) = archive(tmp, layers, false);
    unpack(&tmp.join("images"), &path, &digest, &UnpackLimits::default())
}

/// A host directory outside the image, with a file in it, that no layer may touch.
fn victim(tmp: &Path) -> PathBuf {
    let outside = tmp.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"ledger").unwrap();
    outside
}

#[test]
fn whiteouts_never_remove_outside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = victim(tmp.path());
    let abs = outside.to_str().unwrap().to_string();
    // through a symlink an earlier layer planted, by an absolute path, and as an opaque dir
    let l1 = layer(&[E::Link("l", &abs), E::Dir("keep/"), E::File("keep/a", b"a")]);
    let wh_abs = format!("{abs}/.wh.victim");
    let l2 = layer(&[
        E::File("l/.wh.victim", b""),
        E::Raw(&wh_abs, b""),
        E::File("l/.wh..wh..opq", b""),
        E::File("keep/.wh..wh..opq", b""),
        E::File("keep/b", b"b"),
    ]);
    let img = unpack_default(tmp.path(), &[l1, l2]).unwrap();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"ledger", "a host file was removed");
    // the opaque whiteout hid the lower layer's entry and kept this layer's own
    assert!(!img.rootfs.join("keep/a").exists() && img.rootfs.join("keep/b").exists());
    // the absolute path landed inside the root (there was nothing to remove there)
    assert!(std::fs::symlink_metadata(img.rootfs.join("l")).unwrap().file_type().is_symlink());
}

#[test]
fn links_and_files_never_write_through_a_symlink() {
    for (name, l) in [
        ("hard link through a symlink", layer(&[E::Link("l", "/"), E::HardLink("h", "l/etc/passwd")])),
        ("file through a nested symlink", layer(&[E::Dir("a/"), E::Link("a/b", "/tmp"), E::File("a/b/c", b"x")])),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack_default(tmp.path(), &[l]).unwrap_err();
        assert!(
            matches!(&err, ImageError::Layer { source, .. } if matches!(**source, ImageError::Entry(RootError::NotADirectory { .. }))),
            "{name}: {err}"
        );
        assert!(!tmp.path().join("images").read_dir().unwrap().flatten().any(|e| e.path().join("image.json").exists()));
    }
}

#[test]
fn setuid_bits_do_not_survive_and_devices_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(&[E::Mode("bin/su", 0o4755), E::Mode("bin/sg", 0o2755), E::Mode("tmpdir", 0o1777), E::Fifo("f")]);
    let img = unpack_default(tmp.path(), &[l]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(img.rootfs.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("bin/su"), mode("bin/sg"), mode("tmpdir")), (0o755, 0o755, 0o1777));
    assert!(!img.rootfs.join("f").exists());
    assert!(img.info.unpacked_bytes > 0);
}

#[test]
fn mount_points_are_real_directories_whatever_the_image_put_there() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = victim(tmp.path());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
    let abs = outside.to_str().unwrap().to_string();
    let l = layer(&[E::Link("tmp", &abs), E::Link("out", &abs), E::File("data", b"not a dir")]);
    let img = unpack_default(tmp.path(), &[l]).unwrap();
    for d in ["tmp", "out", "data"] {
        assert!(std::fs::symlink_metadata(img.rootfs.join(d)).unwrap().is_dir(), "{d}");
    }
    assert_eq!(std::fs::metadata(img.rootfs.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o700, "host dir chmodded");
}

#[test]
fn gzip_bombs_and_entry_floods_stop_at_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    // 64 MiB of zeros in one file, about 64 KiB gzipped
    let zeros = vec![0u8; 64 << 20];
    let tar = layer(&[E::File("zeros", &zeros)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    let (path, digest) = archive_of(tmp.path(), &[(gz, "application/vnd.oci.image.layer.v1.tar+gzip")], false);
    let limits = UnpackLimits { max_unpacked_bytes: 16 << 20, max_entries: 1000 };
    let err = unpack(&tmp.path().join("images"), &path, &digest, &limits).unwrap_err();
    assert!(
        matches!(&err, ImageError::Layer { source, .. } if matches!(**source, ImageError::TooLarge { limit } if limit == 16 << 20)),
        "{err}"
    );
    let used: u64 = walk_size(&tmp.path().join("images"));
    assert!(used < 20 << 20, "{used} bytes left on disk");
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let many = layer(&names.iter().map(|n| E::File(n, b"")).collect::<Vec<_>>());
    let (path, digest) = archive(tmp.path(), &[many], false);
    let limits = UnpackLimits { max_unpacked_bytes: 16 << 20, max_entries: 10 };
    let err = unpack(&tmp.path().join("images"), &path, &digest, &limits).unwrap_err();
    assert!(
        matches!(&err, ImageError::Layer { source, .. } if matches!(**source, ImageError::TooManyEntries { limit: 10 })),
        "{err}"
    );
}

fn walk_size(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    if m.is_dir() { std::fs::read_dir(p).unwrap().flatten().map(|e| walk_size(&e.path())).sum() } else { m.len() }
}

#[test]
fn links_in_the_outer_archive_are_refused() {
    for target in ["index.json", "blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000"] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("evil.tar");
        let mut ar = tar::Builder::new(File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        ar.append_link(&mut h, target, "/dev/zero").unwrap();
        ar.finish().unwrap();
        drop(ar);
        let digest = file_sha256(&path).unwrap();
        let err = unpack(&tmp.path().join("images"), &path, &digest, &UnpackLimits::default()).unwrap_err();
        assert!(matches!(&err, ImageError::NotRegular { entry } if entry == target), "{target}: {err}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..Default::default()
    })]
    /// A stranger's layer — random bytes, or a valid layer with bytes changed, cut or added —
    /// unpacks or fails with an error; it never panics and never writes outside the root.
    #[test]
    fn arbitrary_layers_never_panic_or_escape(
        junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
        edits in proptest::collection::vec((0usize..8192, proptest::prelude::any::<u8>()), 1..12),
        cut in 512usize..8192,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = victim(tmp.path());
        let abs = outside.to_str().unwrap().to_string();
        let wh = format!("{abs}/.wh.victim");
        let mut valid = layer(&[E::Dir("a/"), E::File("a/x", b"hello"), E::Link("l", &abs), E::Raw(&wh, b""),
            E::HardLink("a/h", "a/x"), E::File("l/.wh.victim", b"")]);
        for (i, b) in edits {
            let n = valid.len();
            valid[i % n] = b;
        }
        valid.truncate(cut);
        for l in [junk, valid] {
            let _ = unpack_default(tmp.path(), &[l]);
            proptest::prop_assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"ledger".to_vec());
            proptest::prop_assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        }
    }
}
