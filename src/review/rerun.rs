//! Re-running a signed SQL query as the arbiter: first a static check that the query can have
//! one answer (no volatile or time-dependent function), then two runs of `bdc worker sql` in
//! child processes with different parallelism, each under a wall-time limit, a cap on the
//! result file's size (`RLIMIT_FSIZE`) and DataFusion's memory pool, spilling into the review's
//! own directory. The arbiter is not the provider: it has no sandbox to offer (no runc, maybe
//! no root), so the limits are those of a process.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bdc_core::jobs::{ResultFormat, codes};
use bdc_provider::jobs::worker::{FAILURE_EXIT, WorkerFailure, WorkerReport, session};
use datafusion::{
    common::tree_node::{TreeNode, TreeNodeRecursion},
    logical_expr::{Expr, Volatility},
    prelude::SQLOptions,
};

/// How a re-run is bounded.
#[derive(Debug, Clone)]
pub struct RerunLimits {
    /// The `bdc` binary (`bdc worker sql`).
    pub worker: PathBuf,
    pub wall_time: Duration,
    /// DataFusion's memory pool per run (it spills past it).
    pub memory_pool: usize,
    /// Largest result file a run may write.
    pub max_result_bytes: u64,
}

/// Why a query does not plan on the arbiter's copy.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the dataset's tables: {}", .0.reason)]
    Tables(WorkerFailure),
    #[error(transparent)]
    Query(#[from] datafusion::error::DataFusionError),
}

/// Functions of the query whose value is not fixed by the data (`random()`, `now()`,
/// `uuid()`…): their names, empty when there are none; an error when the query does not plan.
pub async fn unfixed_functions(data: &Path, query: &str) -> Result<Vec<String>, PlanError> {
    let ctx = session(data, 64 << 20, 1).await.map_err(PlanError::Tables)?;
    let opts = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = ctx.sql_with_options(query, opts).await?;
    let mut found = Vec::new();
    df.logical_plan().apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|x| {
                if let Expr::ScalarFunction(f) = x
                    && f.func.signature().volatility != Volatility::Immutable
                    && !found.contains(&f.name().to_string())
                {
                    found.push(f.name().to_string());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// One run: the result file and its row count, or why the query failed.
pub async fn run(
    limits: &RerunLimits,
    data: &Path,
    query_file: &Path,
    format: ResultFormat,
    threads: usize,
    out: &Path,
    spill: &Path,
) -> Result<Result<WorkerReport, WorkerFailure>, std::io::Error> {
    std::fs::create_dir_all(spill)?;
    let mut cmd = tokio::process::Command::new(&limits.worker);
    cmd.args(["worker", "sql", "--format", format.as_str(), "--engine", "datafusion"])
        .arg("--data")
        .arg(data)
        .arg("--query-file")
        .arg(query_file)
        .arg("--out")
        .arg(out)
        .args(["--memory-pool", &limits.memory_pool.to_string(), "--threads", &threads.to_string()])
        .env("TMPDIR", spill)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let fsize = limits.max_result_bytes;
    // SAFETY: between fork and exec only async-signal-safe setrlimit runs
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: fsize as libc::rlim_t, rlim_max: fsize as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // past the cap a write fails with EFBIG (the worker reports RESULT_TOO_LARGE)
            // instead of the signal killing it
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let out = match tokio::time::timeout(limits.wall_time, child.wait_with_output()).await {
        Err(_) => {
            return Ok(Err(WorkerFailure {
                code: codes::TIME_LIMIT,
                reason: format!("the re-run took longer than {} s", limits.wall_time.as_secs()),
            }));
        }
        Ok(out) => out?,
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    Ok(match out.status.code() {
        Some(0) => serde_json::from_slice(&out.stdout).map_err(|e| WorkerFailure {
            code: codes::INTERNAL,
            reason: format!("the worker's report is not readable: {e}"),
        }),
        Some(FAILURE_EXIT) => {
            Err(serde_json::from_str(last).unwrap_or(WorkerFailure { code: codes::INTERNAL, reason: last.to_string() }))
        }
        _ => Err(WorkerFailure {
            code: codes::INTERNAL,
            reason: format!("the worker ended with {}: {last}", out.status),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queries_whose_answer_the_data_does_not_fix_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trades.csv"), "side,n\nbuy,1\nsell,2\n").unwrap();
        let f = |q: &'static str| {
            let p = dir.path().to_path_buf();
            async move { unfixed_functions(&p, q).await }
        };
        assert_eq!(
            f("SELECT side, sum(n) FROM trades GROUP BY side ORDER BY side").await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(f("SELECT side FROM trades WHERE random() < 0.5").await.unwrap(), ["random"]);
        assert_eq!(f("SELECT now(), side FROM trades").await.unwrap(), ["now"]);
        // inside a subquery too
        assert_eq!(
            f("SELECT * FROM trades WHERE n IN (SELECT n FROM trades WHERE uuid() > 'a')").await.unwrap(),
            ["uuid"]
        );
        assert!(f("SELECT nope FROM trades").await.is_err());
    }
}
