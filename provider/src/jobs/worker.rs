//! The SQL worker: what runs inside the sandbox (`bdc worker sql`).
//!
//! It registers the dataset's tabular files (mounted read-only) as DataFusion tables named by
//! file stem, plans the query with DDL, DML and statements refused (and no path-as-table: URL
//! tables are not enabled), runs it under a DataFusion memory pool (a soft limit; the sandbox's
//! cgroup is the hard one) on DataFusion, or on Ballista (`--engine ballista`, built with the
//! `ballista` feature), and streams the batches into one Parquet or CSV file. It reports on
//! stdout (`WorkerReport`, JSON) or, on failure, on the last stderr line (`WorkerFailure`, JSON)
//! with exit status [`FAILURE_EXIT`].

use std::{path::Path, sync::Arc};

use bdc_core::jobs::{Engine, ResultFormat, codes, table_kind, table_names};
use datafusion::{
    arrow::{csv::Writer as CsvWriter, record_batch::RecordBatch},
    common::TableReference,
    error::DataFusionError,
    execution::{
        SessionStateBuilder,
        memory_pool::FairSpillPool,
        runtime_env::{RuntimeEnv, RuntimeEnvBuilder},
    },
    parquet::arrow::ArrowWriter,
    prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SQLOptions, SessionConfig, SessionContext},
};
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};

use super::conjunction::WholeBatchConjunctions;

/// Exit status of a worker that reports a [`WorkerFailure`].
pub const FAILURE_EXIT: i32 = 3;

/// The engine named in result manifests: its name (what buyers check) and version.
pub fn engine_name(engine: Engine) -> String {
    match engine {
        Engine::DataFusion => format!("datafusion {}", datafusion::DATAFUSION_VERSION),
        Engine::Ballista => format!("ballista {} (datafusion {})", BALLISTA_VERSION, datafusion::DATAFUSION_VERSION),
    }
}

#[cfg(feature = "ballista")]
const BALLISTA_VERSION: &str = ballista_core::BALLISTA_VERSION;
#[cfg(not(feature = "ballista"))]
const BALLISTA_VERSION: &str = "(not built)";

/// What the worker is asked to do.
#[derive(Debug, Clone)]
pub struct WorkerArgs<'a> {
    /// The dataset's files, at their relative names.
    pub data: &'a Path,
    pub query: &'a str,
    pub out: &'a Path,
    pub format: ResultFormat,
    /// DataFusion's memory pool, bytes.
    pub memory_pool: usize,
    pub threads: usize,
    pub engine: Engine,
    /// A remote Ballista scheduler (`df://host:port`); None: a standalone in-process cluster.
    pub scheduler: Option<&'a str>,
}

/// A successful run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerReport {
    pub rows: u64,
    /// Bytes of data the result holds in memory (Arrow buffers of its rows), whatever the file
    /// format compresses them to: what a result on a sold dataset is capped by.
    pub data_bytes: u64,
    pub engine: String,
}

/// A failed run, with a code from [`bdc_core::jobs::codes`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerFailure {
    pub code: u32,
    pub reason: String,
}

impl WorkerFailure {
    fn new(code: u32, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

/// Every file under `dir`, as `/`-separated relative names, sorted.
fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Registers the tables of `data` in a new DataFusion session with the given memory pool and
/// threads.
pub async fn session(data: &Path, memory_pool: usize, threads: usize) -> Result<SessionContext, WorkerFailure> {
    let (config, runtime) = session_parts(memory_pool, threads)?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(WholeBatchConjunctions))
        .build();
    let ctx = SessionContext::new_with_state(state);
    register_tables(&ctx, data).await?;
    Ok(ctx)
}

fn session_parts(memory_pool: usize, threads: usize) -> Result<(SessionConfig, Arc<RuntimeEnv>), WorkerFailure> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_pool)))
        .build_arc()
        .map_err(|e| WorkerFailure::new(codes::INTERNAL, format!("cannot build the runtime: {e}")))?;
    Ok((SessionConfig::new().with_target_partitions(threads.max(1)), runtime))
}

/// A Ballista session: planned here, run by the scheduler at `scheduler`, or by a standalone
/// scheduler and executor started in this process (loopback gRPC) when there is none.
#[cfg(feature = "ballista")]
async fn ballista_session(
    data: &Path,
    memory_pool: usize,
    threads: usize,
    scheduler: Option<&str>,
) -> Result<SessionContext, WorkerFailure> {
    use ballista::prelude::{SessionConfigExt, SessionContextExt};
    let (config, runtime) = session_parts(memory_pool, threads)?;
    let config = config
        .upgrade_for_ballista()
        .with_target_partitions(threads.max(1))
        .with_ballista_standalone_parallelism(threads.max(1));
    let state =
        SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
    let ctx = match scheduler {
        Some(url) => SessionContext::remote_with_state(url, state).await,
        None => SessionContext::standalone_with_state(state).await,
    }
    .map_err(|e| WorkerFailure::new(codes::INTERNAL, format!("cannot start Ballista: {}", e.find_root())))?;
    register_tables(&ctx, data).await?;
    Ok(ctx)
}

/// Registers every tabular file under `data` as a table named by file stem.
async fn register_tables(ctx: &SessionContext, data: &Path) -> Result<(), WorkerFailure> {
    let files = list_files(data)
        .map_err(|e| WorkerFailure::new(codes::INTERNAL, format!("cannot list the dataset files: {e}")))?;
    for (table, file) in table_names(&files) {
        let path = data.join(&file);
        let path = path.to_string_lossy();
        let ext = file.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        let ext = format!(".{ext}");
        let name = TableReference::bare(table.as_str());
        let res = match table_kind(&file) {
            Some("parquet") => {
                ctx.register_parquet(name, path.as_ref(), ParquetReadOptions::default().file_extension(&ext)).await
            }
            Some("csv") => ctx.register_csv(name, path.as_ref(), CsvReadOptions::new().file_extension(&ext)).await,
            Some("json") => {
                ctx.register_json(name, path.as_ref(), JsonReadOptions::default().file_extension(&ext)).await
            }
            _ => continue,
        };
        res.map_err(|e| WorkerFailure::new(codes::QUERY_FAILED, format!("cannot read {file} as table {table}: {e}")))?;
    }
    Ok(())
}

/// Maps a DataFusion error to a failure code: refused before running, out of memory, or failed.
fn classify(e: &DataFusionError, planning: bool) -> WorkerFailure {
    let root = e.find_root();
    let code = match root {
        DataFusionError::ResourcesExhausted(_) => codes::MEMORY_LIMIT,
        _ if planning => codes::QUERY_REFUSED,
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::NotImplemented(_) => {
            codes::QUERY_REFUSED
        }
        _ => codes::QUERY_FAILED,
    };
    WorkerFailure::new(code, root.to_string())
}

/// Plans and runs the query, writing the result file.
pub async fn run_sql(args: &WorkerArgs<'_>) -> Result<WorkerReport, WorkerFailure> {
    let ctx = match args.engine {
        Engine::DataFusion => session(args.data, args.memory_pool, args.threads).await?,
        #[cfg(feature = "ballista")]
        Engine::Ballista => ballista_session(args.data, args.memory_pool, args.threads, args.scheduler).await?,
        #[cfg(not(feature = "ballista"))]
        Engine::Ballista => {
            return Err(WorkerFailure::new(
                codes::UNSUPPORTED_JOB,
                "this worker was built without Ballista (cargo feature `ballista`)",
            ));
        }
    };
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = ctx.sql_with_options(args.query, options).await.map_err(|e| classify(&e, true))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(|e| classify(&e, false))?;
    let file = std::fs::File::create(args.out)
        .map_err(|e| WorkerFailure::new(codes::INTERNAL, format!("cannot create {}: {e}", args.out.display())))?;
    let write_err = |e: &(dyn std::error::Error + 'static)| {
        // the result cap (RLIMIT_FSIZE, the /out tmpfs) is the provider's limit, not a bad query
        let code = if hit_size_limit(e) { codes::RESULT_TOO_LARGE } else { codes::QUERY_FAILED };
        WorkerFailure::new(code, format!("cannot write the result: {e}"))
    };
    let mut rows = 0u64;
    let mut data_bytes = 0u64;
    enum Sink {
        Parquet(ArrowWriter<std::fs::File>),
        Csv(CsvWriter<std::io::BufWriter<std::fs::File>>),
    }
    let mut sink = match args.format {
        ResultFormat::Parquet => Sink::Parquet(ArrowWriter::try_new(file, schema, None).map_err(|e| write_err(&e))?),
        ResultFormat::Csv => Sink::Csv(CsvWriter::new(std::io::BufWriter::new(file))),
    };
    let write = |sink: &mut Sink, b: &RecordBatch| -> Result<(), WorkerFailure> {
        match sink {
            Sink::Parquet(w) => w.write(b).map_err(|e| write_err(&e)),
            Sink::Csv(w) => w.write(b).map_err(|e| write_err(&e)),
        }
    };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| classify(&e, false))?;
        rows += batch.num_rows() as u64;
        data_bytes = data_bytes.saturating_add(batch_data_bytes(&batch));
        write(&mut sink, &batch)?;
    }
    match sink {
        Sink::Parquet(w) => {
            w.close().map_err(|e| write_err(&e))?;
        }
        Sink::Csv(w) => {
            let mut inner = w.into_inner();
            std::io::Write::flush(&mut inner).map_err(|e| write_err(&e))?;
        }
    }
    Ok(WorkerReport { rows, data_bytes, engine: engine_name(args.engine) })
}

/// The bytes of data a batch's rows hold, as plain Arrow arrays (a slice counts its own rows,
/// not its parent buffer). Encodings that store a value once for many rows — dictionaries, run
/// ends, string views — are counted by the values each row holds (cast to the plain type), so
/// a query cannot shrink what it takes out of a sold dataset by choosing its encoding. A column
/// whose type nests such an encoding, or that does not cast, counts as unbounded: a sold
/// dataset's job refuses it (a free one ignores the count).
fn batch_data_bytes(batch: &RecordBatch) -> u64 {
    batch.columns().iter().map(|c| column_data_bytes(c.as_ref())).fold(0, u64::saturating_add)
}

fn column_data_bytes(c: &dyn datafusion::arrow::array::Array) -> u64 {
    use datafusion::arrow::{compute::cast, datatypes::DataType as T};
    let plain = match c.data_type() {
        T::Dictionary(_, v) => cast(c, v),
        T::RunEndEncoded(_, v) => cast(c, v.data_type()),
        T::Utf8View => cast(c, &T::LargeUtf8),
        T::BinaryView => cast(c, &T::LargeBinary),
        _ => return if encodes_compactly(c.data_type()) { u64::MAX } else { slice_bytes(c) },
    };
    match plain {
        Ok(p) if !encodes_compactly(p.data_type()) => slice_bytes(p.as_ref()),
        _ => u64::MAX,
    }
}

fn slice_bytes(c: &dyn datafusion::arrow::array::Array) -> u64 {
    c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64
}

/// Whether `t` is, or nests, a type that stores one value for many rows.
fn encodes_compactly(t: &datafusion::arrow::datatypes::DataType) -> bool {
    use datafusion::arrow::datatypes::DataType as T;
    match t {
        T::Dictionary(..)
        | T::RunEndEncoded(..)
        | T::Utf8View
        | T::BinaryView
        | T::ListView(_)
        | T::LargeListView(_) => true,
        T::List(f) | T::LargeList(f) | T::FixedSizeList(f, _) | T::Map(f, _) => encodes_compactly(f.data_type()),
        T::Struct(fs) => fs.iter().any(|f| encodes_compactly(f.data_type())),
        T::Union(fs, _) => fs.iter().any(|(_, f)| encodes_compactly(f.data_type())),
        _ => false,
    }
}

/// Whether an error, or one of its sources, is the file-size limit or a full file system.
fn hit_size_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EFBIG) | Some(libc::ENOSPC))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Writes `rows` synthetic trades (ts, symbol, price, qty, side) to one Parquet file at `path`,
/// deterministic for a given `rows` (one trade every 50 ms, so 20M rows span 1M seconds): the
/// market-data set of the tests, benchmarks and demo.
pub async fn write_sample_trades(path: &Path, rows: u64) -> Result<(), DataFusionError> {
    let ctx = SessionContext::new();
    let sql = format!(
        "COPY (SELECT to_timestamp_millis(1735689600000 + value * 50) AS ts, \
           CASE value % 5 WHEN 0 THEN 'BTC-USD' WHEN 1 THEN 'ETH-USD' WHEN 2 THEN 'SOL-USD' \
             WHEN 3 THEN 'XRP-USD' ELSE 'ADA-USD' END AS symbol, \
           CAST(20000 + (value * 7919) % 50000 AS DOUBLE) / 100.0 AS price, \
           CAST(1 + (value * 104729) % 1000 AS DOUBLE) / 1000.0 AS qty, \
           CASE WHEN (value / 3) % 2 = 0 THEN 'buy' ELSE 'sell' END AS side \
         FROM generate_series(1, {rows})) TO '{}' STORED AS PARQUET",
        path.display().to_string().replace('\'', "''")
    );
    ctx.sql(&sql).await?.collect().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::{
        array::{
            Array, ArrayRef, DictionaryArray, Int8Array, Int32Array, ListArray, RunArray, StringArray, StringViewArray,
        },
        datatypes::{Int8Type, Int32Type},
    };

    use super::*;

    #[test]
    fn compact_encodings_count_the_values_each_row_holds() {
        let long = "x".repeat(1_000);
        let rows = 500;
        let plain: ArrayRef = Arc::new(StringArray::from(vec![long.as_str(); rows]));
        let floor = (rows * long.len()) as u64;
        // one dictionary value, one run, or views over one buffer: the same data as 500 strings
        let dict: ArrayRef = Arc::new(DictionaryArray::<Int8Type>::new(
            Int8Array::from(vec![0i8; rows]),
            Arc::new(StringArray::from(vec![long.as_str()])),
        ));
        let runs: ArrayRef = Arc::new(
            RunArray::<Int32Type>::try_new(
                &Int32Array::from(vec![rows as i32]),
                &StringArray::from(vec![long.as_str()]),
            )
            .unwrap(),
        );
        let views: ArrayRef = Arc::new(StringViewArray::from(vec![long.as_str(); rows]));
        for (what, a) in [("plain", &plain), ("dictionary", &dict), ("run ends", &runs), ("views", &views)] {
            let n = column_data_bytes(a.as_ref());
            assert!(n >= floor && n < floor * 2, "{what}: {n} bytes counted for {floor} bytes of strings");
        }
        // a dictionary nested in a list cannot be counted: unbounded (a sold dataset refuses it)
        let values =
            DictionaryArray::<Int8Type>::new(Int8Array::from(vec![0i8; 4]), Arc::new(StringArray::from(vec!["a"])));
        let field = Arc::new(datafusion::arrow::datatypes::Field::new("item", values.data_type().clone(), true));
        let offsets = datafusion::arrow::buffer::OffsetBuffer::new(vec![0i32, 2, 4].into());
        let nested: ArrayRef = Arc::new(ListArray::new(field, offsets, Arc::new(values), None));
        assert_eq!(column_data_bytes(nested.as_ref()), u64::MAX);
        // a slice counts its own rows
        assert!(column_data_bytes(plain.slice(0, 10).as_ref()) < floor / 10);
    }
}
