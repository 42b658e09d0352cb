//! Compute jobs: a real provider running SQL jobs in runc sandboxes (`bdc worker sql` is this
//! build's binary), a real fetcher submitting them over `bdc/jobs/1` on 127.0.0.1. Needs runc and
//! root (`make test` installs runc; CI runs as root).

use std::{path::Path, time::Duration};

use alloy::{signers::local::PrivateKeySigner, sol_types::SolValue};
use bdc_core::{
    BlobFormat,
    jobs::{Engine, JobSpec, ResultFormat, codes},
    ticket::BlobTicket,
};
use bdc_fetcher::{Fetcher, FetcherConfig, JobError};
use bdc_provider::{JobsConfig, Provider, ProviderStore, PublishOptions, ServeConfig, publish};
use datafusion::{
    arrow::util::pretty::pretty_format_batches,
    prelude::{CsvReadOptions, ParquetReadOptions, SessionContext},
};

use crate::common::files_with_ext;

mod containers;
mod paid_jobs;
mod sql;

const ROWS: u64 = 200_000;

/// A dataset dir with trades.parquet (generated) and symbols.csv.
async fn market_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    bdc_provider::jobs::worker::write_sample_trades(&dir.join("trades.parquet"), ROWS).await.unwrap();
    std::fs::write(
        dir.join("symbols.csv"),
        "symbol,base,quote\nBTC-USD,BTC,USD\nETH-USD,ETH,USD\nSOL-USD,SOL,USD\nXRP-USD,XRP,USD\nADA-USD,ADA,USD\n",
    )
    .unwrap();
}

fn jobs_config(key: &PrivateKeySigner) -> JobsConfig {
    let mut jc = JobsConfig::new(env!("CARGO_BIN_EXE_bdc").into(), key.clone());
    jc.limits.memory_bytes = 384 << 20;
    jc.limits.wall_time = Duration::from_secs(20);
    jc
}

async fn serve(tmp: &Path, data: &Path, jc: JobsConfig) -> (Provider, BlobTicket) {
    let mut store = ProviderStore::open(&tmp.join("p")).await.unwrap();
    let opts = PublishOptions { free: true, name: Some("trades".into()), ..Default::default() };
    let rec = publish(&mut store, data, &opts, |_| {}).await.unwrap();
    let cfg = ServeConfig { jobs: Some(jc), ..ServeConfig::test() };
    let provider = Provider::spawn(store, cfg).await.unwrap();
    let ticket = provider.ticket(rec.root).unwrap();
    (provider, ticket)
}

/// A provider of the generated market data with jobs on (signing with `key`), and a buyer.
struct Served {
    tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    key: PrivateKeySigner,
    provider: Provider,
    ticket: BlobTicket,
    fetcher: Fetcher,
}

async fn served() -> Served {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kaiko");
    market_data(&data).await;
    let key = PrivateKeySigner::random();
    let (provider, ticket) = serve(tmp.path(), &data, jobs_config(&key)).await;
    let fetcher = Fetcher::open(FetcherConfig::test(tmp.path().join("f"))).await.unwrap();
    Served { tmp, data, key, provider, ticket, fetcher }
}

/// The query run directly in DataFusion over the original files, pretty-printed.
async fn direct(data: &Path, sql: &str) -> String {
    let ctx = SessionContext::new();
    ctx.register_parquet("trades", data.join("trades.parquet").to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    ctx.register_csv("symbols", data.join("symbols.csv").to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
    pretty_format_batches(&ctx.sql(sql).await.unwrap().collect().await.unwrap()).unwrap().to_string()
}

/// A result file read back with DataFusion, pretty-printed.
async fn read_result(file: &Path, format: ResultFormat) -> String {
    let ctx = SessionContext::new();
    let path = file.to_str().unwrap();
    let df = match format {
        ResultFormat::Parquet => ctx.read_parquet(path, ParquetReadOptions::default()).await.unwrap(),
        ResultFormat::Csv => ctx.read_csv(path, CsvReadOptions::new()).await.unwrap(),
    };
    pretty_format_batches(&df.collect().await.unwrap()).unwrap().to_string()
}

fn sql(query: &str, format: ResultFormat) -> JobSpec {
    JobSpec::Sql { query: query.into(), format, engine: Engine::DataFusion }
}

/// An OCI archive (image layout in a tar) of Debian's static busybox: one gzip layer with
/// /bin/busybox and its applets as symlinks, `Cmd ["sh"]`. Built here so the test needs no
/// registry and no podman.
fn busybox_archive(path: &Path) {
    busybox_archive_with(path, &[]);
}

/// [`busybox_archive`] with extra files (path, bytes, mode) in its layer.
fn busybox_archive_with(path: &Path, extra: &[(&str, &[u8], u32)]) {
    use sha2::Digest;
    let hex = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = |name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        layer.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    dir("bin/", 0o755);
    dir("tmp/", 0o1777);
    let bb = std::fs::read("/bin/busybox").expect("Debian's busybox-static (make test installs it)");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    layer.append_data(&mut h, "bin/busybox", bb.as_slice()).unwrap();
    for applet in [
        "sh",
        "cat",
        "echo",
        "id",
        "ls",
        "wc",
        "nc",
        "wget",
        "sleep",
        "ln",
        "head",
        "sha256sum",
        "mkdir",
        "unshare",
        "stat",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox").unwrap();
    }
    for (name, bytes, mode) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(bytes.len() as u64);
        layer.append_data(&mut h, name, *bytes).unwrap();
    }
    let tar_bytes = layer.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
    let gz = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&tar_bytes))]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", hex(&gz)), "size": gz.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", hex(&manifest)), "size": manifest.len()}]
    }))
    .unwrap();
    let mut ar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut put = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        ar.append_data(&mut h, name, data).unwrap();
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    put("index.json", &index);
    for blob in [&config, &manifest, &gz] {
        put(&format!("blobs/sha256/{}", hex(blob)), blob);
    }
    ar.finish().unwrap();
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}
