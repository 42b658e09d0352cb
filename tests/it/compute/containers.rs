//! Container jobs in runc: results, escapes, refused system calls, cancelled jobs.

use super::*;

/// A job's bounded `/out`, left mounted by a provider that stopped mid-job, is unmounted and
/// removed when the provider starts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_job_mount_is_cleaned_at_start() {
    let mounted = |p: &Path| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().any(|l| l.split(' ').nth(1) == p.to_str())
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let stale = tmp.path().join("p/jobs/run/stale/out");
    std::fs::create_dir_all(&stale).unwrap();
    // as a killed provider leaves it: mounted, never dropped
    std::mem::forget(bdc_provider::jobs::sandbox::BoundedDir::mount(&stale, 1 << 20, 0).unwrap());
    std::fs::write(stale.join("partial.parquet"), b"cut off").unwrap();
    assert!(mounted(&stale));
    let (provider, _) = serve(tmp.path(), &data, jobs_config(&PrivateKeySigner::random())).await;
    assert!(!mounted(&stale), "the stale /out is unmounted");
    assert!(!stale.parent().unwrap().exists(), "and the stale job directory removed");
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_job_reads_data_writes_results_and_is_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let key = PrivateKeySigner::random();
    let (provider, ticket) = serve(tmp.path(), &data, jobs_config(&key)).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let script = "wc -c < /data/trades.parquet > /out/size.txt && id -u > /out/uid.txt && \
                  mkdir /out/sub && sha256sum /data/symbols.csv > /out/sub/sum.txt && \
                  cat /proc/net/dev > /out/netdev.txt";
    let mut events = Vec::new();
    let out = tmp.path().join("out1");
    let got = fetcher
        .run_container(&ticket, &image, sh(script), Some(key.address()), None, &out, |e| events.push(format!("{e:?}")))
        .await
        .unwrap();
    assert!(events.iter().any(|e| e == "UploadingImage"), "first job uploads the image: {events:?}");
    let r = &got.signed.result;
    assert_eq!((r.kind.as_str(), r.format.as_str(), r.rows), ("container", "collection", 4));
    // no network interface but its own loopback
    let netdev = std::fs::read_to_string(out.join("netdev.txt")).unwrap();
    let ifaces: Vec<&str> = netdev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(ifaces, ["lo"], "{netdev}");
    assert!(r.query.contains("sha256:") && r.query.contains("sha256sum /data/symbols.csv"), "{}", r.query);
    assert!(r.engine.starts_with("runc") && r.engine.contains("image sha256:"), "{}", r.engine);
    let size = std::fs::metadata(data.join("trades.parquet")).unwrap().len();
    assert_eq!(std::fs::read_to_string(out.join("size.txt")).unwrap().trim(), size.to_string());
    assert_eq!(std::fs::read_to_string(out.join("uid.txt")).unwrap().trim(), "65534", "runs as nobody");
    let sum = std::fs::read_to_string(out.join("sub/sum.txt")).unwrap();
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(data.join("symbols.csv")).unwrap()));
    assert!(sum.starts_with(&want), "{sum}");
    // the second job finds the image cached: no upload
    let mut events = Vec::new();
    fetcher
        .run_container(&ticket, &image, sh("echo again > /out/a.txt"), None, None, &tmp.path().join("out2"), |e| {
            events.push(format!("{e:?}"))
        })
        .await
        .unwrap();
    assert!(!events.iter().any(|e| e == "UploadingImage"), "{events:?}");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_escapes_are_stopped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let key = PrivateKeySigner::random();
    let mut jc = jobs_config(&key);
    jc.limits.memory_bytes = 64 << 20;
    jc.limits.pids = 32;
    jc.limits.wall_time = Duration::from_secs(4);
    jc.max_result_bytes = 1 << 20;
    let (provider, ticket) = serve(tmp.path(), &data, jc).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    // a host service the job must not reach
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cases = [
        // its own loopback, in its own network namespace: the host's listener is not there
        (format!("echo hi | nc -w 2 127.0.0.1 {port}"), codes::PROGRAM_FAILED, "Connection refused"),
        ("echo evil > /data/evil.txt".to_string(), codes::PROGRAM_FAILED, "Read-only file system"),
        ("ln -s /etc/shadow /out/leak".to_string(), codes::PROGRAM_FAILED, "not a regular file"),
        // the pids limit makes fork fail, and the shell gives up
        ("while true; do sleep 30 & done".to_string(), codes::PROGRAM_FAILED, "can't fork"),
        ("while true; do :; done".to_string(), codes::TIME_LIMIT, "wall-time"),
        ("a=0123456789abcdef; while true; do a=$a$a; done".to_string(), codes::MEMORY_LIMIT, "memory"),
        // files each under the per-file limit, past /out's total; the program shrugs off ENOSPC
        (
            "for i in 1 2 3 4 5 6; do head -c 300000 /dev/zero > /out/f$i; done; exit 0".to_string(),
            codes::RESULT_TOO_LARGE,
            "filled /out",
        ),
    ];
    let out = tmp.path().join("out");
    for (script, code, needle) in cases {
        let err = fetcher.run_container(&ticket, &image, sh(&script), None, None, &out, |_| {}).await.unwrap_err();
        match &err {
            JobError::Failed { code: c, reason, .. } => {
                assert_eq!(*c, code, "{script}: {err}");
                assert!(reason.contains(needle), "{script}: reason should mention {needle:?}: {reason}");
            }
            other => panic!("{script}: expected a failed job, got {other}"),
        }
    }
    assert!(listener.accept().is_err(), "the job reached a host socket");
    let materialized = tmp.path().join("p/jobs/datasets").join(&*ticket.hash().to_hex());
    assert!(materialized.join("trades.parquet").exists() && !materialized.join("evil.txt").exists());
    assert!(!out.exists(), "failed jobs write nothing");
    // and the provider still runs the next job
    let ok =
        fetcher.run_container(&ticket, &image, sh("echo fine > /out/ok.txt"), None, None, &out, |_| {}).await.unwrap();
    assert_eq!(ok.signed.result.rows, 1);
    assert_eq!(std::fs::read_to_string(out.join("ok.txt")).unwrap(), "fine\n");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// A static probe that makes the system calls a container must not (each with arguments that
/// would succeed, or fail otherwise than EPERM, without the seccomp filter) and prints
/// `name=errno` per call, 0 for success.
const SYSCALL_PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void try(const char *name, long rc) { printf("%s=%d\n", name, rc < 0 ? errno : 0); }
int main(void) {
    char params[120];
    memset(params, 0, sizeof params);
    try("io_uring_setup", syscall(SYS_io_uring_setup, 4, params));
    try("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 1));
    try("add_key", syscall(SYS_add_key, "user", "bdc", "x", 1, -3));
    try("unshare_user", syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */));
    try("unshare_net", syscall(SYS_unshare, 0x40000000 /* CLONE_NEWNET */));
    try("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    try("userfaultfd", syscall(SYS_userfaultfd, 0));
    try("bpf", syscall(SYS_bpf, 0, params, 48));
    try("perf_event_open", syscall(SYS_perf_event_open, params, 0, -1, -1, 0));
    try("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
    try("getpid", syscall(SYS_getpid));
    return 0;
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn container_jobs_cannot_make_dangerous_system_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("probe.c");
    std::fs::write(&src, SYSCALL_PROBE_C).unwrap();
    let probe = tmp.path().join("probe");
    let cc = std::process::Command::new("gcc").arg("-static").arg("-O1").arg("-o").arg(&probe).arg(&src).output();
    let cc = cc.expect("gcc (on every machine of this kind)");
    assert!(cc.status.success(), "gcc: {}", String::from_utf8_lossy(&cc.stderr));
    let probe = std::fs::read(&probe).unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("probe.oci.tar");
    // a setuid copy of busybox too: unpacking drops the bit
    let bb = std::fs::read("/bin/busybox").unwrap();
    busybox_archive_with(&image, &[("bin/probe", &probe, 0o755), ("bin/suid-busybox", &bb, 0o4755)]);
    let key = PrivateKeySigner::random();
    let (provider, ticket) = serve(tmp.path(), &data, jobs_config(&key)).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    let out = tmp.path().join("out");
    let script = "probe > /out/probe.txt; unshare -Ur id > /out/unshare.txt 2>&1; \
                  stat -c %a /bin/suid-busybox > /out/mode.txt; exit 0";
    fetcher.run_container(&ticket, &image, sh(script), None, None, &out, |_| {}).await.unwrap();
    let got = std::fs::read_to_string(out.join("probe.txt")).unwrap();
    let results: std::collections::HashMap<&str, &str> = got.lines().filter_map(|l| l.split_once('=')).collect();
    for call in [
        "io_uring_setup",
        "keyctl",
        "add_key",
        "unshare_user",
        "unshare_net",
        "ptrace",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "mount",
    ] {
        assert_eq!(results.get(call), Some(&"1"), "{call} must fail with EPERM: {got}");
    }
    assert_eq!(results.get("getpid"), Some(&"0"), "an allowed call works: {got}");
    let unshare = std::fs::read_to_string(out.join("unshare.txt")).unwrap();
    assert!(unshare.contains("Operation not permitted"), "unshare -Ur: {unshare}");
    assert_eq!(std::fs::read_to_string(out.join("mode.txt")).unwrap().trim(), "755", "setuid bit survived unpack");
    fetcher.shutdown().await;
    provider.shutdown().await;
}

/// A buyer that goes away mid-job cancels it: the provider stops the container at once (not at
/// the wall-time limit), and runs the next job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_buyer_goes_away_is_stopped() {
    // the job's process, by its command line (unique to this test)
    let sleeping = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            c.windows(9).any(|w| w == b"sleep\x00417" || w == b"sleep 417")
        })
    };
    let wait = |want: bool| async move {
        for _ in 0..150 {
            if sleeping() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let image = tmp.path().join("busybox.oci.tar");
    busybox_archive(&image);
    let mut jc = jobs_config(&PrivateKeySigner::random());
    jc.limits.wall_time = Duration::from_secs(120);
    let (provider, ticket) = serve(tmp.path(), &data, jc).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let buyer = {
        let (ticket, image, dir) = (ticket.clone(), image.clone(), tmp.path().to_path_buf());
        tokio::spawn(async move {
            let fetcher = Fetcher::open(FetcherConfig::test(dir.join("f1"))).await.unwrap();
            let out = dir.join("o1");
            let run = fetcher.run_container(&ticket, &image, sh("sleep 417"), None, None, &out, |_| {});
            tokio::select! {
                r = run => panic!("the job ended on its own: {r:?}"),
                _ = stopped => {}
            }
            // the buyer gives up (Ctrl-C): its endpoint closes, and the connection with it
            fetcher.shutdown().await;
        })
    };
    assert!(wait(true).await, "the job started");
    stop.send(()).unwrap();
    buyer.await.unwrap();
    assert!(wait(false).await, "the job's container was stopped after its buyer went away");
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f2"))).await.unwrap();
    let out = tmp.path().join("o2");
    let ok = fetcher.run_container(&ticket, &image, sh("echo next > /out/n.txt"), None, None, &out, |_| {}).await;
    assert_eq!(ok.unwrap().signed.result.rows, 1, "the next job runs");
    fetcher.shutdown().await;
    provider.shutdown().await;
}
