//! `bdc provider serve`: its flags in groups (help headings), with human sizes and durations,
//! and a provider config file (TOML; flags override it).
//!
//! The file is `--config FILE`, else `$XDG_CONFIG_HOME/bdc/provider.toml` when it exists. Its
//! tables are the flag groups, its keys the flags' names with `_`:
//!
//! ```toml
//! [net]
//! bind = "0.0.0.0:4433"
//! metrics_addr = "127.0.0.1:9464"
//! [sell]
//! sell = true
//! price_per_gib = "1000000000000000000"
//! window = "4MiB"
//! stall_timeout = "30s"
//! arbiters = ["0x…"]
//! [listing]
//! market = "https://market.example"
//! [jobs]
//! jobs = true
//! job_memory = "2GiB"
//! [chain]
//! deployment = "/etc/bdc/deployment.json"
//! keystore = "/etc/bdc/provider.json"
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use alloy::primitives::Address;
use anyhow::Context;
use bdc_provider::{JobsConfig, PaidConfig};
use clap::Args;
use serde::Deserialize;

use super::{
    chain::ChainArgs,
    units::{Size, Span},
};

/// `bdc provider serve`.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Provider config file (TOML: tables [net], [sell], [listing], [jobs], [chain] with the
    /// flags' names); flags override it. Default: $XDG_CONFIG_HOME/bdc/provider.toml if it exists.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Network")]
    pub net: NetArgs,
    #[command(flatten, next_help_heading = "Selling (bdc/paid/1)")]
    pub sell: SellArgs,
    #[command(flatten, next_help_heading = "Market listings")]
    pub listing: ListingArgs,
    #[command(flatten, next_help_heading = "Compute jobs (bdc/jobs/1)")]
    pub jobs: JobArgs,
    #[command(flatten, next_help_heading = "Chain")]
    pub chain: ChainArgs,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetArgs {
    /// UDP address to bind [default: 0.0.0.0:0].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Use n0's public relays (off by default: direct addresses only).
    #[arg(long)]
    pub relays: bool,
    /// Cap each request's upload rate, per second (e.g. 10MiB).
    #[arg(long, value_name = "SIZE")]
    pub max_rate: Option<Size>,
    /// Serve Prometheus/OpenMetrics metrics on http://ADDR/metrics (bytes served, receipted and
    /// redeemed, gate stalls, jobs by outcome).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SellArgs {
    /// Sell every published dataset on bdc/paid/1 (needs the chain options and a keystore).
    #[arg(long)]
    pub sell: bool,
    /// Price, token base units per GiB, charged per byte rounded down [default: 10^18, 1 BDC].
    #[arg(long, value_name = "BASE_UNITS")]
    #[serde(deserialize_with = "base_units")]
    pub price_per_gib: Option<u128>,
    /// Bytes sent ahead of receipts: what this provider risks per deal [default: 4 MiB].
    #[arg(long, value_name = "SIZE")]
    pub window: Option<Size>,
    /// Redeem on chain each time this much more is receipted [default: 256 MiB].
    #[arg(long, value_name = "SIZE")]
    pub redeem_every: Option<Size>,
    /// Before a deal's expiry, from when no buyer is admitted and nothing is sent (bytes sent
    /// later might not be redeemed in time); deals are redeemed when they enter it [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub expiry_margin: Option<Span>,
    /// How long a full window waits for a receipt before the connection is closed [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub stall_timeout: Option<Span>,
    /// An arbiter this provider accepts on its deals (repeatable; at least one with --sell).
    /// Offers and listings name them; a deal naming another arbiter is refused.
    #[arg(long = "arbiter", value_name = "ADDRESS")]
    #[serde(rename = "arbiters")]
    pub arbiters: Vec<Address>,
    /// Refuse deals whose royalty is above this (basis points). Default: the royalty each
    /// dataset was registered with when this provider first saw it (a later raise is refused).
    #[arg(long, value_name = "BPS")]
    pub max_royalty_bps: Option<u16>,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListingArgs {
    /// Announce the sold datasets to this market (signed listings, refreshed before they expire).
    #[arg(long, value_name = "URL")]
    pub market: Option<String>,
    /// Region named in the listings [default: local].
    #[arg(long)]
    pub region: Option<String>,
    /// Serving capacity declared in the listings, MiB/s [default: 100].
    #[arg(long, value_name = "MIBPS")]
    pub capacity_mibps: Option<u64>,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobArgs {
    /// Run compute jobs (SQL on DataFusion, or a program in an OCI image) on bdc/jobs/1, in a runc
    /// sandbox; results are signed with the keystore's key.
    #[arg(long = "jobs")]
    #[serde(rename = "jobs")]
    pub enabled: bool,
    /// With --sell: also run jobs on the sold datasets, at this price per job (token base
    /// units), paid by a job deal the buyer opens (`bdc compute --pay`).
    #[arg(long, value_name = "BASE_UNITS")]
    #[serde(deserialize_with = "base_units")]
    pub job_price: Option<u128>,
    /// With --job-price: also run container jobs on the sold datasets. Off by default: a program
    /// can compress what it copies out, so the result cap (what the job price buys of the data,
    /// at the data's price) does not bound how much of the data leaves; SQL results are capped
    /// by the data they hold.
    #[arg(long)]
    pub container_jobs_on_sold: bool,
    /// Send Ballista SQL jobs (`bdc compute --engine ballista`) to this scheduler, df://host:port;
    /// its executors must see this provider's `jobs/datasets/` at the same path. Default: each
    /// Ballista job starts a standalone scheduler and executor inside its own sandbox.
    #[arg(long, value_name = "URL")]
    pub ballista_scheduler: Option<String>,
    /// Memory limit of one job's sandbox [default: 1GiB].
    #[arg(long, value_name = "SIZE")]
    pub job_memory: Option<Size>,
    /// CPU quota of one job, cores [default: 1].
    #[arg(long, value_name = "CORES")]
    pub job_cpus: Option<f64>,
    /// Wall-time limit of one job [default: 2m].
    #[arg(long, value_name = "DURATION", alias = "job-timeout-secs")]
    pub job_timeout: Option<Span>,
    /// Jobs run at once [default: 1].
    #[arg(long, value_name = "N")]
    pub job_concurrency: Option<usize>,
    /// The runc binary [default: runc].
    #[arg(long, value_name = "PATH")]
    pub runc: Option<String>,
    /// Largest container image archive a buyer may upload [default: 512MiB].
    #[arg(long, value_name = "SIZE")]
    pub max_image: Option<Size>,
    /// Most one image may unpack to (decompression bombs stop here) [default: 2GiB].
    #[arg(long, value_name = "SIZE")]
    pub max_unpacked_image: Option<Size>,
    /// Disk for unpacked images and uploads in flight; the least recently used idle images are
    /// evicted to stay under it [default: 8GiB].
    #[arg(long, value_name = "SIZE")]
    pub image_disk_budget: Option<Size>,
    /// Image uploads received at once (more are refused as busy) [default: 2].
    #[arg(long, value_name = "N")]
    pub max_image_uploads: Option<usize>,
}

/// A token amount in the config file: a TOML integer holds at most 2^63-1 base units (9.2 BDC),
/// so larger amounts are written as a decimal string.
fn base_units<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Units {
        Int(u64),
        Text(String),
    }
    Ok(match Option::<Units>::deserialize(d)? {
        None => None,
        Some(Units::Int(n)) => Some(n.into()),
        Some(Units::Text(t)) => Some(t.trim().parse().map_err(|_| {
            serde::de::Error::custom(format_args!("{t:?} is not an amount of base units (a whole number)"))
        })?),
    })
}

/// Each value from the command line where it gave one, else the file's. A switch (`sell`,
/// `jobs`, ...) given on the command line or in the file is on: a flag cannot turn off a switch
/// the file turns on.
macro_rules! take {
    ($a:ident, $f:ident; $($field:ident),* ; bools $($flag:ident),* ; vecs $($v:ident),*) => {
        $( if $a.$field.is_none() { $a.$field = $f.$field; } )*
        $( $a.$flag = $a.$flag || $f.$flag; )*
        $( if $a.$v.is_empty() { $a.$v = $f.$v; } )*
    };
}

impl ServeArgs {
    /// The config file to read: `--config`, else the user's `bdc/provider.toml` if it exists.
    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let p = dirs::config_dir()?.join("bdc").join("provider.toml");
            p.is_file().then_some(p)
        })
    }

    /// These flags over the config file's settings (flags win; `--config` names a file that must
    /// exist).
    pub fn with_config_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config_file() else { return Ok(self) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: ServeArgs =
            toml::from_str(&text).with_context(|| format!("{} is not a provider config file", path.display()))?;
        let (n, s, l, j, c) = (&mut self.net, &mut self.sell, &mut self.listing, &mut self.jobs, &mut self.chain);
        let (fnet, fs, fl, fj, fc) = (file.net, file.sell, file.listing, file.jobs, file.chain);
        take!(n, fnet; bind, max_rate, metrics_addr; bools relays; vecs);
        take!(s, fs; price_per_gib, window, redeem_every, expiry_margin, stall_timeout, max_royalty_bps;
            bools sell; vecs arbiters);
        take!(l, fl; market, region, capacity_mibps; bools; vecs);
        take!(j, fj; job_price, ballista_scheduler, job_memory, job_cpus, job_timeout, job_concurrency, runc,
            max_image, max_unpacked_image, image_disk_budget, max_image_uploads; bools enabled, container_jobs_on_sold;
            vecs);
        take!(c, fc; rpc_url, deployment, keystore, password_file; bools; vecs);
        Ok(self)
    }

    pub fn bind(&self) -> SocketAddr {
        self.net.bind.unwrap_or_else(|| "0.0.0.0:0".parse().expect("static address"))
    }
}

/// The price a provider sells at when none is given: 1 BDC per GiB.
pub const DEFAULT_PRICE_PER_GIB: u128 = 1_000_000_000_000_000_000;

impl SellArgs {
    /// The paid protocol's settings: what the flags say, the library's defaults elsewhere.
    pub fn paid_config(&self, max_rate: Option<u64>) -> anyhow::Result<PaidConfig> {
        let d = PaidConfig::default();
        let price_per_gib = self.price_per_gib.unwrap_or(DEFAULT_PRICE_PER_GIB);
        let cfg = PaidConfig {
            price_per_byte: bdc_core::paid::price_per_byte(price_per_gib),
            window: self.window.map_or(d.window, |s| s.0),
            redeem_every: self.redeem_every.map_or(d.redeem_every, |s| s.0),
            stall_timeout: self.stall_timeout.map_or(d.stall_timeout, |s| s.0),
            expiry_margin: self.expiry_margin.map_or(d.expiry_margin, |s| s.0),
            max_rate,
            arbiters: self.arbiters.clone(),
            max_royalty_bps: self.max_royalty_bps,
            ..d
        };
        anyhow::ensure!(
            !cfg.arbiters.is_empty(),
            "--sell needs at least one --arbiter ADDRESS: the arbiters you accept on your deals"
        );
        anyhow::ensure!(
            cfg.price_per_byte > 0,
            "--price-per-gib {price_per_gib} is below one base unit per byte (minimum {})",
            1u64 << 30
        );
        Ok(cfg)
    }
}

impl JobArgs {
    /// The job runner's settings: what the flags say, the library's defaults elsewhere.
    pub fn jobs_config(&self, worker_exe: PathBuf, signer: alloy::signers::local::PrivateKeySigner) -> JobsConfig {
        let mut jc = JobsConfig::new(worker_exe, signer);
        if let Some(r) = &self.runc {
            jc.runc = r.clone();
        }
        jc.concurrency = self.job_concurrency.unwrap_or(jc.concurrency).max(1);
        jc.limits.memory_bytes = self.job_memory.map_or(jc.limits.memory_bytes, |s| s.0);
        jc.limits.cpus = self.job_cpus.unwrap_or(jc.limits.cpus);
        jc.limits.wall_time = self.job_timeout.map_or(jc.limits.wall_time, |s| s.0).max(Duration::from_secs(1));
        // the CPU-time rlimit: the wall time at the CPU quota, and a second
        jc.limits.cpu_seconds = (jc.limits.wall_time.as_secs_f64() * jc.limits.cpus.max(0.01)).ceil() as u64 + 1;
        jc.job_price = self.job_price;
        jc.containers_on_sold = self.container_jobs_on_sold;
        jc.ballista_scheduler = self.ballista_scheduler.clone();
        jc.max_image_bytes = self.max_image.map_or(jc.max_image_bytes, |s| s.0);
        jc.images.unpack.max_unpacked_bytes =
            self.max_unpacked_image.map_or(jc.images.unpack.max_unpacked_bytes, |s| s.0);
        jc.images.disk_budget = self.image_disk_budget.map_or(jc.images.disk_budget, |s| s.0);
        jc.images.max_uploads = self.max_image_uploads.unwrap_or(jc.images.max_uploads).max(1);
        jc
    }
}

/// The config file a test or an operator can start from: every key, commented.
pub fn example_config(path: &Path) -> String {
    format!("# {}\n{}", path.display(), include_str!("provider.example.toml"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn no_flags_means_the_libraries_defaults() {
        let a = Cmd::parse_from(["serve", "--arbiter", "0x00000000000000000000000000000000000000a1"]).serve;
        let got = a.sell.paid_config(None).unwrap();
        let want = PaidConfig::default();
        assert_eq!(
            (got.window, got.redeem_every, got.stall_timeout, got.expiry_margin, got.hello_timeout),
            (want.window, want.redeem_every, want.stall_timeout, want.expiry_margin, want.hello_timeout)
        );
        assert_eq!(got.price_per_byte, bdc_core::paid::price_per_byte(DEFAULT_PRICE_PER_GIB));
        let signer = alloy::signers::local::PrivateKeySigner::random();
        let jc = a.jobs.jobs_config(PathBuf::from("bdc"), signer.clone());
        let lib = JobsConfig::new(PathBuf::from("bdc"), signer);
        assert_eq!(
            (jc.runc, jc.concurrency, jc.limits.memory_bytes, jc.limits.wall_time, jc.max_image_bytes),
            (lib.runc, lib.concurrency, lib.limits.memory_bytes, lib.limits.wall_time, lib.max_image_bytes)
        );
        assert_eq!((jc.images.disk_budget, jc.images.max_uploads), (lib.images.disk_budget, lib.images.max_uploads));
        assert_eq!(a.bind(), "0.0.0.0:0".parse().unwrap());
    }

    #[test]
    fn flags_take_human_units_and_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("provider.toml");
        std::fs::write(
            &file,
            "[net]\nbind = \"127.0.0.1:4433\"\n[sell]\nsell = true\nwindow = \"8MiB\"\nstall_timeout = 45\n\
             arbiters = [\"0x00000000000000000000000000000000000000a1\"]\n[jobs]\njob_memory = \"2GiB\"\n",
        )
        .unwrap();
        let a =
            Cmd::parse_from(["serve", "--config", file.to_str().unwrap(), "--window", "2MiB", "--job-timeout", "90s"])
                .serve
                .with_config_file()
                .unwrap();
        assert_eq!(a.bind(), "127.0.0.1:4433".parse().unwrap(), "from the file");
        assert!(a.sell.sell);
        let paid = a.sell.paid_config(None).unwrap();
        assert_eq!(paid.window, 2 << 20, "the flag wins");
        assert_eq!(paid.stall_timeout, Duration::from_secs(45), "a plain number is seconds");
        let jc = a.jobs.jobs_config(PathBuf::from("bdc"), alloy::signers::local::PrivateKeySigner::random());
        assert_eq!((jc.limits.memory_bytes, jc.limits.wall_time), (2 << 30, Duration::from_secs(90)));
        // an unknown key is named, not ignored
        std::fs::write(&file, "[sell]\nwindw = \"8MiB\"\n").unwrap();
        let err = Cmd::parse_from(["serve", "--config", file.to_str().unwrap()]).serve.with_config_file().unwrap_err();
        assert!(format!("{err:#}").contains("windw"), "{err:#}");
        // a bad size is named with an example of a good one
        let err = Cmd::try_parse_from(["serve", "--window", "four"]).unwrap_err().to_string();
        assert!(err.contains("e.g. 4MiB"), "{err}");
    }

    #[test]
    fn the_example_config_file_parses() {
        let text = example_config(Path::new("provider.toml"));
        let file: ServeArgs = toml::from_str(&text).unwrap();
        // the switches are left to the command line: a flag cannot turn off the file's
        assert!(!file.sell.sell && !file.jobs.enabled && !file.jobs.container_jobs_on_sold);
        assert_eq!(file.sell.window, Some(Size(4 << 20)));
        assert_eq!(file.sell.price_per_gib, Some(DEFAULT_PRICE_PER_GIB));
    }

    #[test]
    fn config_amounts_are_whole_base_units_as_numbers_or_strings() {
        let read = |t: &str| toml::from_str::<ServeArgs>(t).map(|a| (a.sell.price_per_gib, a.jobs.job_price));
        assert_eq!(read("[sell]\nprice_per_gib = 5\n").unwrap(), (Some(5), None));
        // 1000 BDC does not fit a TOML integer
        let big = read("[sell]\nprice_per_gib = \"1000000000000000000000\"\n[jobs]\njob_price = \"7\"\n").unwrap();
        assert_eq!(big, (Some(1_000_000_000_000_000_000_000), Some(7)));
        let err = read("[jobs]\njob_price = \"1.5\"\n").unwrap_err().to_string();
        assert!(err.contains("\"1.5\" is not an amount of base units"), "{err}");
        assert!(read("[sell]\nprice_per_gib = -1\n").is_err(), "a negative price");
    }
}
