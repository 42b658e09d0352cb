//! `bdc devnet`

use std::path::Path;

use bdc_contracts::{Devnet, DevnetConfig};
use clap::Args;

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// RPC port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8545)]
    pub port: u16,
    /// Seconds redeemed funds wait before withdrawal.
    #[arg(long, default_value_t = 60)]
    pub dispute_window: u64,
    /// Mine a block every N seconds (default: one per transaction).
    #[arg(long)]
    pub block_time: Option<u64>,
    /// Print the JSON record only.
    #[arg(long)]
    pub json: bool,
    /// Fund this many more buyer accounts (roles `buyer3`, `buyer4`, …), for load tests.
    #[arg(long, default_value_t = 0)]
    pub extra_buyers: usize,
}

/// Roles the demo and docs give anvil's first accounts.
const ROLES: [&str; 5] = ["deployer/arbiter", "vendor", "buyer", "provider", "buyer2"];

pub async fn run(a: DevnetArgs, root: &Path) -> anyhow::Result<()> {
    let cfg = DevnetConfig {
        port: a.port,
        dispute_window: a.dispute_window,
        block_time: a.block_time,
        funded_accounts: ROLES.len() + a.extra_buyers,
        ..Default::default()
    };
    let devnet = Devnet::spawn_with(cfg).await?;
    let roles = ROLES.iter().map(|r| r.to_string()).chain((0..a.extra_buyers).map(|k| format!("buyer{}", k + 3)));
    let accounts: Vec<serde_json::Value> = roles
        .enumerate()
        .map(|(i, role)| {
            serde_json::json!({
                "role": role,
                "address": devnet.address(i),
                "private_key": format!("0x{}", alloy_hex(devnet.signer(i).to_bytes().as_slice())),
            })
        })
        .collect();
    let info = serde_json::json!({
        "rpc_url": devnet.rpc_url().to_string(),
        "deployment": devnet.deployment,
        "accounts": accounts,
    });
    let text = serde_json::to_string_pretty(&info)?;
    let file = root.join("devnet.json");
    bdc_core::keys::write_private(&file, text.as_bytes())?;
    println!("{text}");
    if !a.json {
        eprintln!("devnet running at {} (written to {}); Ctrl-C stops it", devnet.rpc_url(), file.display());
    }
    super::wait_for_signal().await?;
    drop(devnet);
    let _ = std::fs::remove_file(&file);
    Ok(())
}

fn alloy_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
