//! The sandbox: one OCI bundle per job, run by runc.
//!
//! The bundle's root file system is read-only and nearly empty: the host's `/usr` (and `/lib*`,
//! `/bin` when they are not symlinks into it) bound read-only, so the worker binary's shared
//! libraries resolve; the dataset bound read-only at `/data`, noexec; the job's output directory
//! at `/out` (a size-bounded tmpfs, [`BoundedDir`]), the only writable place besides a small
//! `/tmp`. The process runs as `nobody` with no capabilities and no new privileges, in fresh pid,
//! network (loopback only; the one exception is a Ballista worker sent to the provider's own
//! scheduler, [`Limits::host_network`]), ipc, uts and mount namespaces, with memory, CPU quota, pids and CPU-time limits in the runtime spec, and the
//! caller kills it at the wall-time limit. Setting limits through the spec (not cgroup files)
//! works on cgroup v1 and v2 hosts alike. No swap: where the host accounts swap the limit on
//! memory plus swap equals the memory limit, elsewhere the job's swappiness is 0.
//!
//! A seccomp allow-list ([`seccomp_profile`]) filters every system call: Docker's default profile
//! for a container without capabilities, less io_uring, ptrace and `process_vm_*`. Everything
//! else (`unshare`, `setns`, `mount`, `keyctl`, `bpf`, `userfaultfd`, `perf_event_open`, …)
//! fails with EPERM; `clone` may not create namespaces and `clone3` answers ENOSYS so libc falls
//! back to `clone`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{io::AsyncReadExt, process::Command};

/// The user a job runs as.
pub const JOB_UID: u32 = 65534;

/// Limits of one job.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU quota in cores (1.0: one core).
    pub cpus: f64,
    pub pids: u32,
    /// CPU-time limit (RLIMIT_CPU), seconds.
    pub cpu_seconds: u64,
    pub wall_time: Duration,
    /// Size of the job's `/tmp` (counts against its memory).
    pub tmp_bytes: u64,
    /// Largest file the job may write (RLIMIT_FSIZE; SIGXFSZ beyond it).
    pub file_bytes: Option<u64>,
    /// Share the host's network namespace: only for a SQL worker that must reach the provider's
    /// own Ballista scheduler. Everything else runs with no network at all.
    pub host_network: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            cpus: 1.0,
            pids: 128,
            cpu_seconds: 300,
            wall_time: Duration::from_secs(120),
            tmp_bytes: 64 << 20,
            file_bytes: None,
            host_network: false,
        }
    }
}

/// A host path bound into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub container: String,
    pub writable: bool,
    pub exec: bool,
}

/// How a sandboxed process ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Exited {
        code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// Killed by the kernel's OOM killer inside the memory limit (exit 137 we did not cause).
    OutOfMemory {
        stderr: Vec<u8>,
    },
    /// Killed by us at the wall-time limit.
    WallTime,
    /// Killed by SIGXCPU/SIGKILL at the CPU-time limit.
    CpuTime,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot prepare the job bundle in {path}: {source}")]
    Bundle { path: PathBuf, source: std::io::Error },
    #[error("cannot start {runc}: {source} (install runc: `apt-get install runc`)")]
    Spawn { runc: String, source: std::io::Error },
    #[error("cannot mount a size-bounded /out at {path} (runc jobs need root): {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("runc could not be waited for: {0}")]
    Wait(#[source] std::io::Error),
    /// runc itself failed (its own error text, from its stderr).
    #[error("runc could not start the job: {stderr}")]
    Runc { stderr: String },
}

/// Largest stdout/stderr kept from a job.
const MAX_CAPTURE: usize = 64 * 1024;

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
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={}", limits.tmp_bytes)]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
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
    let mut rlimits = vec![
        json!({"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}),
        json!({"type": "RLIMIT_CPU", "hard": limits.cpu_seconds + 1, "soft": limits.cpu_seconds}),
        json!({"type": "RLIMIT_CORE", "hard": 0, "soft": 0}),
    ];
    if let Some(n) = limits.file_bytes {
        rlimits.push(json!({"type": "RLIMIT_FSIZE", "hard": n, "soft": n}));
    }
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    if !limits.host_network {
        // a fresh network namespace: loopback only
        namespaces.push(json!({"type": "network"}));
    }
    let period: u64 = 100_000;
    let quota = (limits.cpus.max(0.01) * period as f64) as i64;
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": JOB_UID, "gid": JOB_UID},
            "args": args,
            "env": env,
            "cwd": cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
            "rlimits": rlimits
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bdc-job",
        "mounts": mounts,
        "linux": {
            "resources": {
                "memory": memory_limits(limits.memory_bytes),
                "cpu": {"quota": quota, "period": period},
                "pids": {"limit": limits.pids},
                "devices": [{"allow": false, "access": "rwm"}]
            },
            "namespaces": namespaces,
            "seccomp": seccomp_profile(),
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).expect("json")).map_err(err)?;
    Ok(())
}

/// The memory limit and no swap, as far as the host's cgroups can say it.
fn memory_limits(bytes: u64) -> Value {
    let cg = Path::new("/sys/fs/cgroup");
    let v2 = cg.join("cgroup.controllers").exists();
    let swap_accounted = if v2 {
        std::fs::read_dir(cg).map(|d| d.flatten().any(|e| e.path().join("memory.swap.max").exists())).unwrap_or(false)
    } else {
        cg.join("memory/memory.memsw.limit_in_bytes").exists()
    };
    match (swap_accounted, v2) {
        (true, _) => json!({"limit": bytes, "swap": bytes}),
        (false, false) => json!({"limit": bytes, "swappiness": 0}),
        (false, true) => json!({"limit": bytes}),
    }
}

/// System calls a job may make: Docker's default allow-list (moby `profiles/seccomp/default.json`)
/// for a process without capabilities, less `io_uring_*` (a large kernel attack surface Docker
/// itself now refuses), `ptrace`, `process_vm_readv/writev` and `personality` changes.
const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// The namespace flags of `clone` (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID
/// | NEWNET): a `clone` with any of them set is refused.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The runtime spec's `linux.seccomp`: an allow-list, EPERM for everything else.
pub fn seccomp_profile() -> Value {
    let arches: &[&str] = if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    };
    let mut syscalls = vec![
        json!({"names": ALLOWED_SYSCALLS, "action": "SCMP_ACT_ALLOW"}),
        // any socket but AF_VSOCK (40), which reaches the hypervisor
        json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}),
        // reading the personality, and the plain Linux one
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}),
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0xffff_ffffu64, "op": "SCMP_CMP_EQ"}]}),
        json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}),
        // clone3's flags live in memory seccomp cannot read: ENOSYS, and libc uses clone
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}),
    ];
    if cfg!(target_arch = "x86_64") {
        syscalls.push(json!({"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": arches,
        "syscalls": syscalls
    })
}

fn bind_mount(host: &Path, container: &str, writable: bool, exec: bool) -> Value {
    let mut opts = vec!["rbind", if writable { "rw" } else { "ro" }, "nosuid", "nodev"];
    if !exec {
        opts.push("noexec");
    }
    json!({"destination": container, "type": "bind", "source": host, "options": opts})
}

/// Runs the bundle as container `id` and waits, killing it at the wall-time limit.
pub async fn run(runc: &str, bundle: &Path, id: &str, limits: &Limits) -> Result<Outcome, SandboxError> {
    let started = Instant::now();
    let mut child = Command::new(runc)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SandboxError::Spawn { runc: runc.to_string(), source })?;
    // from here on the container exists: stop and delete it however this future ends, also
    // when it is dropped mid-run (the buyer went away)
    let mut container = ContainerGuard { runc: runc.to_string(), id: id.to_string(), armed: true };
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let read_out = tokio::spawn(async move { read_capped(&mut out).await });
    let read_err = tokio::spawn(async move { read_capped(&mut err).await });
    let status = tokio::time::timeout(limits.wall_time, child.wait()).await.ok();
    let timed_out = status.is_none();
    if timed_out {
        kill(runc, id).await;
        let _ = child.wait().await;
    }
    delete(runc, id).await;
    container.armed = false;
    let stdout = read_out.await.unwrap_or_default();
    let stderr = read_err.await.unwrap_or_default();
    if timed_out {
        return Ok(Outcome::WallTime);
    }
    let status = status.expect("not timed out").map_err(SandboxError::Wait)?;
    let code = status.code().unwrap_or(-1);
    tracing::debug!(id, code, ms = started.elapsed().as_millis() as u64, "sandboxed job ended");
    // 128 + signal: 9 (SIGKILL: the cgroup's OOM killer, as we did not kill it) or 24 (SIGXCPU)
    match code {
        137 => Ok(Outcome::OutOfMemory { stderr }),
        152 => Ok(Outcome::CpuTime),
        _ => {
            let text = String::from_utf8_lossy(&stderr);
            if code != 0 && text.contains("runc run failed") {
                return Err(SandboxError::Runc { stderr: text.trim().to_string() });
            }
            Ok(Outcome::Exited { code, stdout, stderr })
        }
    }
}

/// A size-bounded tmpfs mounted over a job's output directory on the host, so the job cannot
/// fill the provider's disk while it runs (a per-file `RLIMIT_FSIZE` bounds one file, not their
/// sum). Its pages are charged to the memory cgroup of the job that writes them, so the job's
/// memory limit bounds it too. Unmounted (lazily) on drop.
#[derive(Debug)]
pub struct BoundedDir {
    path: PathBuf,
}

/// Files a bounded output directory may hold.
pub const OUT_INODES: u32 = 16_384;

impl BoundedDir {
    /// Mounts a tmpfs of `bytes` bytes (and [`OUT_INODES`] files), owned by `uid`, at `path`.
    /// Needs CAP_SYS_ADMIN, as runc itself does.
    pub fn mount(path: &Path, bytes: u64, uid: u32) -> Result<Self, SandboxError> {
        let cpath = c_path(path).map_err(|source| SandboxError::Mount { path: path.to_path_buf(), source })?;
        let data = std::ffi::CString::new(format!("size={bytes},nr_inodes={OUT_INODES},mode=0755,uid={uid},gid={uid}"))
            .expect("no NUL in mount options");
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call
        let rc =
            unsafe { libc::mount(c"tmpfs".as_ptr(), cpath.as_ptr(), c"tmpfs".as_ptr(), flags, data.as_ptr().cast()) };
        if rc != 0 {
            return Err(SandboxError::Mount { path: path.to_path_buf(), source: std::io::Error::last_os_error() });
        }
        Ok(Self { path: path.to_path_buf() })
    }

    /// Whether the job used all of the space or all of the files: a program may ignore the
    /// ENOSPC it got and exit 0, leaving a cut-off result behind.
    pub fn is_full(&self) -> bool {
        let Ok(cpath) = c_path(&self.path) else { return true };
        // SAFETY: statvfs is plain data, filled by the call
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: cpath is NUL-terminated and st is a valid out-pointer
        if unsafe { libc::statvfs(cpath.as_ptr(), &mut st) } != 0 {
            return true;
        }
        st.f_bavail == 0 || st.f_favail == 0
    }
}

impl Drop for BoundedDir {
    fn drop(&mut self) {
        if let Err(err) = unmount(&self.path) {
            tracing::warn!(path = %self.path.display(), %err, "cannot unmount a job's /out");
        }
    }
}

/// `path` for a libc call.
fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// Detaches the mount at `path` (a job's bounded `/out`, also one left behind by a provider
/// that stopped mid-job).
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let cpath = c_path(path)?;
    // SAFETY: cpath is NUL-terminated; MNT_DETACH never blocks on busy files
    if unsafe { libc::umount2(cpath.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

async fn read_capped(r: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // keep the tail: the end of stderr says why a job failed
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_CAPTURE {
                    let cut = out.len() - MAX_CAPTURE;
                    out.drain(..cut);
                }
            }
        }
    }
    out
}

/// Kills and deletes a container whose `run` future was dropped before it ended.
struct ContainerGuard {
    runc: String,
    id: String,
    armed: bool,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (runc, id) = (std::mem::take(&mut self.runc), std::mem::take(&mut self.id));
        tracing::info!(id, "stopping an abandoned job container");
        // a thread, not a task: it also runs when the drop comes from a runtime shutting down
        std::thread::spawn(move || {
            let quiet = || Stdio::null();
            let _ = std::process::Command::new(&runc).args(["kill", "--all", &id, "KILL"]).stderr(quiet()).status();
            let _ = std::process::Command::new(&runc).args(["delete", "--force", &id]).stderr(quiet()).status();
        });
    }
}

async fn kill(runc: &str, id: &str) {
    let _ = Command::new(runc).args(["kill", "--all", id, "KILL"]).stderr(Stdio::null()).status().await;
}

async fn delete(runc: &str, id: &str) {
    let _ = Command::new(runc).args(["delete", "--force", id]).stderr(Stdio::null()).status().await;
}
