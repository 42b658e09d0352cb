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
//! The runtime spec is built with the `oci-spec` crate (`spec`). A seccomp allow-list
//! ([`seccomp_profile`]) filters every system call: Docker's default profile
//! for a container without capabilities, less io_uring, ptrace and `process_vm_*`. Everything
//! else (`unshare`, `setns`, `mount`, `keyctl`, `bpf`, `userfaultfd`, `perf_event_open`, …)
//! fails with EPERM; `clone` may not create namespaces and `clone3` answers ENOSYS so libc falls
//! back to `clone`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, process::Command};

mod seccomp;
mod spec;

pub use seccomp::seccomp_profile;
pub use spec::write_bundle;

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
