//! A job's OCI bundle: `config.json` built with the `oci-spec` crate's typed runtime spec (every
//! security-relevant field set explicitly: the crate's defaults are a general container's, not a
//! stranger's job's), and the root file system's mount points.

use std::{collections::HashSet, path::Path};

use oci_spec::{
    OciSpecError,
    runtime::{
        Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemory,
        LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
        LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
        RootBuilder, Spec, SpecBuilder, UserBuilder,
    },
};

use super::{Bind, JOB_UID, Limits, SandboxError, seccomp::seccomp_profile};

/// Paths of `/proc` and `/sys` hidden from the job, and those it may only read (runc's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY_PATHS: &[&str] =
    &["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Writes `bundle/config.json`, and `bundle/rootfs` unless `image_root` names an image's
/// unpacked root file system (a container job); without one the root is built from the host's
/// `/usr` (the SQL worker).
pub fn write_bundle(
    bundle: &Path,
    image_root: Option<&Path>,
    args: &[String],
    env: &[String],
    cwd: &str,
    binds: &[Bind],
    limits: &Limits,
) -> Result<(), SandboxError> {
    let err = |source| SandboxError::Bundle { path: bundle.to_path_buf(), source };
    let rootfs = match image_root {
        Some(r) => r.to_path_buf(),
        None => bundle.join("rootfs"),
    };
    std::fs::create_dir_all(&rootfs).map_err(err)?;
    std::fs::create_dir_all(bundle).map_err(err)?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &[]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777", &format!("size={}", limits.tmp_bytes)]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ];
    // the host's /usr, and the top-level lib/bin dirs as the host has them (symlinks or dirs)
    let host_dirs: &[&str] = if image_root.is_some() { &[] } else { &["usr", "lib", "lib64", "lib32", "bin", "sbin"] };
    for dir in host_dirs {
        let host = Path::new("/").join(dir);
        let inside = rootfs.join(dir);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host).map_err(err)?;
                if std::fs::symlink_metadata(&inside).is_err() {
                    std::os::unix::fs::symlink(target, &inside).map_err(err)?;
                }
            }
            Ok(m) if m.is_dir() => {
                std::fs::create_dir_all(&inside).map_err(err)?;
                mounts.push(bind_mount(&host, &format!("/{dir}"), false, true));
            }
            _ => {}
        }
    }
    for b in binds {
        let inside = rootfs.join(b.container.trim_start_matches('/'));
        if b.host.is_dir() {
            std::fs::create_dir_all(&inside).map_err(err)?;
        } else {
            if let Some(p) = inside.parent() {
                std::fs::create_dir_all(p).map_err(err)?;
            }
            if !inside.exists() {
                std::fs::File::create(&inside).map_err(err)?;
            }
        }
        mounts.push(bind_mount(&b.host, &b.container, b.writable, b.exec));
    }
    for d in ["proc", "dev", "tmp", "sys"] {
        if std::fs::symlink_metadata(rootfs.join(d)).is_err() {
            std::fs::create_dir_all(rootfs.join(d)).map_err(err)?;
        }
    }
    // runc gives a tmpfs the mode of its mount point, whatever the mount options say
    std::fs::set_permissions(rootfs.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).map_err(err)?;
    let spec = job_spec(&rootfs, args, env, cwd, mounts, limits, memory_limits(limits.memory_bytes))
        .map_err(|e| err(std::io::Error::other(e)))?;
    spec.save(bundle.join("config.json")).map_err(|e| err(std::io::Error::other(e)))?;
    Ok(())
}

/// The runtime spec of one job: nobody, no capabilities, no new privileges, read-only root, the
/// limits, fresh namespaces (network too, unless the job must reach a host scheduler), the
/// seccomp allow-list.
fn job_spec(
    rootfs: &Path,
    args: &[String],
    env: &[String],
    cwd: &str,
    mounts: Vec<Mount>,
    limits: &Limits,
    memory: LinuxMemory,
) -> Result<Spec, OciSpecError> {
    let none: HashSet<Capability> = HashSet::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(none.clone())
        .effective(none.clone())
        .permitted(none.clone())
        .inheritable(none.clone())
        .ambient(none)
        .build()?;
    let mut rlimits = vec![
        rlimit(PosixRlimitType::RlimitNofile, 1024, 1024)?,
        rlimit(PosixRlimitType::RlimitCpu, limits.cpu_seconds, limits.cpu_seconds + 1)?,
        rlimit(PosixRlimitType::RlimitCore, 0, 0)?,
    ];
    if let Some(n) = limits.file_bytes {
        rlimits.push(rlimit(PosixRlimitType::RlimitFsize, n, n)?);
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(JOB_UID).gid(JOB_UID).build()?)
        .args(args.to_vec())
        .env(env.to_vec())
        .cwd(cwd)
        .no_new_privileges(true)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .build()?;
    let mut kinds =
        vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount];
    if !limits.host_network {
        // a fresh network namespace: loopback only
        kinds.push(LinuxNamespaceType::Network);
    }
    let namespaces: Vec<LinuxNamespace> =
        kinds.into_iter().map(|t| LinuxNamespaceBuilder::default().typ(t).build()).collect::<Result<_, _>>()?;
    let period: u64 = 100_000;
    let quota = (limits.cpus.max(0.01) * period as f64) as i64;
    let resources = LinuxResourcesBuilder::default()
        .memory(memory)
        .cpu(LinuxCpuBuilder::default().quota(quota).period(period).build()?)
        .pids(LinuxPidsBuilder::default().limit(i64::from(limits.pids)).build()?)
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
        .build()?;
    let linux = LinuxBuilder::default()
        .resources(resources)
        .namespaces(namespaces)
        .seccomp(seccomp_profile())
        .masked_paths(MASKED_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .build()?;
    SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path(rootfs).readonly(true).build()?)
        .hostname("bdc-job")
        .mounts(mounts)
        .linux(linux)
        .build()
}

fn rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> Result<PosixRlimit, OciSpecError> {
    PosixRlimitBuilder::default().typ(typ).soft(soft).hard(hard).build()
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = MountBuilder::default().destination(destination).typ(typ).source(source);
    if !options.is_empty() {
        m = m.options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>());
    }
    m.build().expect("a mount's destination is set")
}

fn bind_mount(host: &Path, container: &str, writable: bool, exec: bool) -> Mount {
    let mut opts = vec!["rbind", if writable { "rw" } else { "ro" }, "nosuid", "nodev"];
    if !exec {
        opts.push("noexec");
    }
    let opts: Vec<String> = opts.into_iter().map(str::to_string).collect();
    MountBuilder::default()
        .destination(container)
        .typ("bind")
        .source(host)
        .options(opts)
        .build()
        .expect("a mount's destination is set")
}

/// The memory limit and no swap, as far as the host's cgroups can say it.
fn memory_limits(bytes: u64) -> LinuxMemory {
    let cg = Path::new("/sys/fs/cgroup");
    let v2 = cg.join("cgroup.controllers").exists();
    let swap_accounted = if v2 {
        std::fs::read_dir(cg).map(|d| d.flatten().any(|e| e.path().join("memory.swap.max").exists())).unwrap_or(false)
    } else {
        cg.join("memory/memory.memsw.limit_in_bytes").exists()
    };
    let limit = i64::try_from(bytes).unwrap_or(i64::MAX);
    let m = LinuxMemoryBuilder::default().limit(limit);
    let m = match (swap_accounted, v2) {
        (true, _) => m.swap(limit),
        (false, false) => m.swappiness(0u64),
        (false, true) => m,
    };
    m.build().expect("every memory field is optional")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_gives_a_job_nothing_it_was_not_given() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("bundle");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let binds = [Bind { host: data.clone(), container: "/data".into(), writable: false, exec: false }];
        let limits = Limits { file_bytes: Some(1 << 20), ..Limits::default() };
        write_bundle(&bundle, None, &["/usr/bin/true".into()], &[], "/", &binds, &limits).unwrap();
        let spec = Spec::load(bundle.join("config.json")).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (JOB_UID, JOB_UID));
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted(), caps.inheritable(), caps.ambient()] {
            assert!(set.as_ref().is_none_or(|s| s.is_empty()), "no capability at all: {caps:?}");
        }
        let rl = p.rlimits().as_ref().unwrap();
        assert!(rl.iter().any(|r| r.typ() == PosixRlimitType::RlimitFsize && r.hard() == 1 << 20));
        assert!(rl.iter().any(|r| r.typ() == PosixRlimitType::RlimitCore && r.hard() == 0));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<LinuxNamespaceType> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(ns.contains(&LinuxNamespaceType::Network) && ns.contains(&LinuxNamespaceType::Pid), "{ns:?}");
        assert!(!ns.contains(&LinuxNamespaceType::User), "no user namespace yet (SECURITY.md)");
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(1 << 30));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 128);
        assert!(!res.devices().as_ref().unwrap()[0].allow(), "no device");
        assert!(linux.seccomp().is_some());
        let data_mount =
            spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/data")).unwrap();
        let opts = data_mount.options().as_ref().unwrap();
        assert!(opts.contains(&"ro".to_string()) && opts.contains(&"noexec".to_string()), "{opts:?}");
        // a job that must reach the provider's own scheduler shares the host's network only
        let host = Limits { host_network: true, ..Limits::default() };
        write_bundle(&bundle, None, &["/usr/bin/true".into()], &[], "/", &[], &host).unwrap();
        let spec = Spec::load(bundle.join("config.json")).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    }
}
