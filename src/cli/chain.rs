//! Chain settings shared by the commands that touch the contracts, and `bdc key`, `bdc dataset`,
//! `bdc balance`.

use std::path::{Path, PathBuf};

use alloy::{
    primitives::{Address, B256},
    providers::DynProvider,
    signers::local::PrivateKeySigner,
};
use anyhow::{Context, bail};
use bdc_contracts::{Contracts, Deployment, client::connect, devnet::BDC};
use clap::{Args, Subcommand};

/// Where the chain is and who signs.
#[derive(Debug, Clone, Default, Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainArgs {
    /// Ethereum JSON-RPC URL.
    #[arg(long, env = "BDC_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Contract addresses: a deployment JSON, or the devnet.json that `bdc devnet` writes.
    #[arg(long, env = "BDC_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// Encrypted Ethereum keystore (geth/foundry format).
    #[arg(long, env = "BDC_KEYSTORE")]
    pub keystore: Option<PathBuf>,
    /// File holding the keystore password (or set BDC_PASSWORD).
    #[arg(long, env = "BDC_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

impl ChainArgs {
    pub fn deployment(&self) -> anyhow::Result<(Deployment, Option<String>)> {
        let path = self.deployment.as_ref().context("no --deployment given (or BDC_DEPLOYMENT)")?;
        let text = std::fs::read(path).with_context(|| format!("cannot read deployment file {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("deployment file {} is not JSON", path.display()))?;
        let rpc = v.get("rpc_url").and_then(|u| u.as_str()).map(str::to_string);
        let d = v.get("deployment").cloned().unwrap_or(v);
        let d: Deployment = serde_json::from_value(d)
            .with_context(|| format!("deployment file {} lacks chain_id/token/registry/escrow", path.display()))?;
        Ok((d, rpc))
    }

    pub fn signer(&self) -> anyhow::Result<PrivateKeySigner> {
        let path = self.keystore.as_ref().context("no --keystore given (or BDC_KEYSTORE)")?;
        let password = password(self.password_file.as_deref())?;
        if !path.exists() {
            bail!("keystore {} does not exist (create one with `bdc key new`)", path.display());
        }
        PrivateKeySigner::decrypt_keystore(path, password.as_bytes()).map_err(|e| {
            anyhow::anyhow!("cannot decrypt keystore {}: wrong password or corrupt file ({e})", path.display())
        })
    }

    /// A client for reading only (no keystore needed).
    pub fn connect_readonly(&self) -> anyhow::Result<Contracts<DynProvider>> {
        let (deployment, devnet_rpc) = self.deployment()?;
        let rpc = self.rpc_url.clone().or(devnet_rpc).context("no --rpc-url given (or BDC_RPC_URL)")?;
        let url = rpc.parse().with_context(|| format!("invalid --rpc-url {rpc}"))?;
        Ok(connect(url, PrivateKeySigner::random(), deployment))
    }

    /// A client sending as the keystore's account.
    pub fn connect(&self) -> anyhow::Result<(Contracts<DynProvider>, PrivateKeySigner)> {
        let (deployment, devnet_rpc) = self.deployment()?;
        let rpc = self.rpc_url.clone().or(devnet_rpc).context("no --rpc-url given (or BDC_RPC_URL)")?;
        let url = rpc.parse().with_context(|| format!("invalid --rpc-url {rpc}"))?;
        let signer = self.signer()?;
        Ok((connect(url, signer.clone(), deployment), signer))
    }
}

fn password(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        let p = std::fs::read_to_string(f).with_context(|| format!("cannot read password file {}", f.display()))?;
        return Ok(p.trim_end_matches(['\n', '\r']).to_string());
    }
    std::env::var("BDC_PASSWORD").context("no --password-file given and BDC_PASSWORD is not set")
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a new encrypted keystore; prints its address.
    New {
        /// Where to write the keystore (it must not exist).
        #[arg(long)]
        keystore: PathBuf,
        /// File holding the password to encrypt it with (or set BDC_PASSWORD).
        #[arg(long, env = "BDC_PASSWORD_FILE")]
        password_file: Option<PathBuf>,
    },
    /// Encrypt an existing private key (hex, read from a file) into a keystore.
    Import {
        /// Where to write the keystore (it must not exist).
        #[arg(long)]
        keystore: PathBuf,
        /// File holding the private key, 32 bytes of hex.
        #[arg(long)]
        private_key_file: PathBuf,
        /// File holding the password to encrypt it with (or set BDC_PASSWORD).
        #[arg(long, env = "BDC_PASSWORD_FILE")]
        password_file: Option<PathBuf>,
    },
}

pub fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    let (keystore, pk, pw) = match cmd {
        KeyCmd::New { keystore, password_file } => (keystore, None, password_file),
        KeyCmd::Import { keystore, private_key_file, password_file } => {
            let text = std::fs::read_to_string(&private_key_file)
                .with_context(|| format!("cannot read {}", private_key_file.display()))?;
            let pk: B256 = text
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a 32-byte hex private key", private_key_file.display()))?;
            (keystore, Some(pk), password_file)
        }
    };
    if keystore.exists() {
        bail!("{} already exists; refusing to overwrite a keystore", keystore.display());
    }
    let password = password(pw.as_deref())?;
    let dir = keystore.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = keystore.file_name().and_then(|n| n.to_str()).context("keystore path has no file name")?;
    let mut rng = rand08::thread_rng();
    let (signer, _) = match pk {
        Some(pk) => PrivateKeySigner::encrypt_keystore(dir, &mut rng, pk, password.as_bytes(), Some(name)),
        None => PrivateKeySigner::new_keystore(dir, &mut rng, password.as_bytes(), Some(name)),
    }
    .map_err(|e| anyhow::anyhow!("cannot write keystore {}: {e}", keystore.display()))?;
    println!("{}", signer.address());
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum DatasetCmd {
    /// Register a dataset root on chain with the keystore's account as vendor.
    Register {
        /// The dataset's root (as `bdc provider publish` printed it).
        root: bdc_core::Hash,
        /// Royalty on every redeemed byte, basis points (1000 = 10%).
        #[arg(long, default_value_t = 0)]
        royalty_bps: u16,
        /// Suggested price per GiB, token base units.
        #[arg(long, default_value_t = 0)]
        price_hint: u128,
        /// Hash of the dataset's `bdc.json`, which markets check listings against. Default: read
        /// from this node's provider store when the dataset was published here (else none).
        #[arg(long)]
        manifest_hash: Option<bdc_core::Hash>,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Write a synthetic trades Parquet file (ts, symbol, price, qty, side): the sample data of
    /// the demo, the tests and the benchmarks; prints its path.
    SampleTrades {
        /// Rows to write.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// The Parquet file to write.
        #[arg(short, long)]
        out: std::path::PathBuf,
    },
}

pub async fn dataset(cmd: DatasetCmd, provider_dir: &std::path::Path) -> anyhow::Result<()> {
    match cmd {
        DatasetCmd::Register { root, royalty_bps, price_hint, manifest_hash, chain } => {
            if royalty_bps > 10_000 {
                bail!("--royalty-bps {royalty_bps} is above 10000 (100%)");
            }
            let (c, signer) = chain.connect()?;
            let manifest_hash = match manifest_hash {
                Some(h) => Some(h),
                None if bdc_provider::Catalog::load(provider_dir).is_ok_and(|cat| cat.get(&root).is_some()) => {
                    let store = bdc_provider::ProviderStore::open(provider_dir)
                        .await
                        .context("reading the manifest hash from this node's store (or pass --manifest-hash)")?;
                    let h = store.manifest_hash(root).await;
                    store.shutdown().await;
                    h?
                }
                None => None,
            };
            if manifest_hash.is_none() {
                eprintln!("note: no manifest hash registered; markets will show listings of {root} as unverified");
            }
            let mh = manifest_hash.map(|h| B256::from(*h.as_bytes())).unwrap_or(B256::ZERO);
            c.register_dataset(B256::from(*root.as_bytes()), royalty_bps, mh, price_hint).await?;
            eprintln!("registered {root} with vendor {} and {}% royalty", signer.address(), royalty_bps as f64 / 100.0);
            Ok(())
        }
        DatasetCmd::SampleTrades { rows, out } => {
            bdc_provider::jobs::worker::write_sample_trades(&out, rows.max(1)).await?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

/// `bdc balance <address>...`: BDC balances.
pub async fn balance(addresses: Vec<Address>, chain: ChainArgs, json: bool) -> anyhow::Result<()> {
    let c = chain.connect_readonly()?;
    let mut out = Vec::new();
    for a in addresses {
        out.push((a, c.balance(a).await?));
    }
    if json {
        let v: Vec<_> = out.iter().map(|(a, b)| serde_json::json!({"address": a, "balance": b.to_string()})).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (a, b) in out {
            println!("{a}\t{}", format_bdc(b));
        }
    }
    Ok(())
}

/// Base units as BDC with 6 decimals.
pub fn format_bdc(v: alloy::primitives::U256) -> String {
    let whole = v / BDC;
    let frac = (v % BDC) / alloy::primitives::U256::from(1_000_000_000_000u64);
    format!("{whole}.{frac:06} BDC")
}
