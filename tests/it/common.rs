use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng, rngs::StdRng};

/// Writes `len` pseudo-random bytes (seeded) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// All files under `dir` with the given extension.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_ext(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn bdc() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_bdc"))
}

/// A buyer's chain files for the CLI: `dir/key.json` (the devnet account `who` imported with
/// `bdc key import`, password "pw" in BDC_PASSWORD) and `dir/deployment.json` (rpc + contracts).
pub fn buyer_chain_files(devnet: &bdc_contracts::Devnet, who: usize, dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("pk"), format!("{}", devnet.signer(who).to_bytes())).unwrap();
    let keystore = dir.join("key.json");
    let out = bdc()
        .args(["key", "import", "--keystore"])
        .arg(&keystore)
        .arg("--private-key-file")
        .arg(dir.join("pk"))
        .env("BDC_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deployment = dir.join("deployment.json");
    std::fs::write(
        &deployment,
        serde_json::json!({"rpc_url": devnet.rpc_url().to_string(), "deployment": devnet.deployment}).to_string(),
    )
    .unwrap();
    (keystore, deployment)
}

/// Waits (polling the chain, up to 20 s) until the provider has redeemed `amount` on `deal`: the
/// redeemer submits receipts asynchronously.
pub async fn wait_redeemed(
    devnet: &bdc_contracts::Devnet,
    deal: alloy::primitives::B256,
    amount: alloy::primitives::U256,
) {
    let c = devnet.contracts(0);
    let t = std::time::Instant::now();
    loop {
        let st = c.deal_state(deal).await.unwrap();
        if st.redeemed == amount {
            return;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "redeemed {} of {amount}", st.redeemed);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Announces the provider's listings, retrying while the market's indexer (polling every
/// 100 ms) has not seen the dataset's registration yet: the number of listings stored.
pub async fn announce_when_indexed(
    provider: &bdc_provider::Provider,
    ann: &bdc_provider::Announce,
) -> Result<usize, String> {
    let mut res = Err("not tried".to_string());
    for _ in 0..100 {
        res = bdc_provider::announce_once(provider, ann).await.map_err(|e| e.to_string());
        match &res {
            Err(e) if e.contains("not registered") => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            _ => break,
        }
    }
    res
}
