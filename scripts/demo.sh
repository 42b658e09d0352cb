#!/usr/bin/env bash
# The paid flow, end to end on this machine: a devnet (anvil + bdc's contracts), a vendor that
# registers a dataset with a 10% royalty, a provider that sells it, a buyer that pays with
# receipts for exactly the bytes it verified, the provider's redeem, the withdrawal and the
# buyer's refund of the rest — with balances read from the chain at each step.
set -euo pipefail
BDC="${1:?usage: demo.sh path/to/bdc}"
WORK="$(mktemp -d -t bdc-demo.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "0. devnet: anvil on 127.0.0.1 with BDCToken, DatasetRegistry and TransferEscrow deployed"
"$BDC" --data-dir "$WORK/chain" devnet --port 0 --json --dispute-window 5 > "$WORK/devnet.out" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/chain/devnet.json" ] && break; sleep 0.1; done
export BDC_DEPLOYMENT="$WORK/chain/devnet.json"
echo pass-demo > "$WORK/pw"; export BDC_PASSWORD_FILE="$WORK/pw"
read -r ARBITER VENDOR BUYER PROVIDER < <(python3 - "$BDC_DEPLOYMENT" "$WORK" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1]))
acc = {a["role"]: a for a in d["accounts"]}
for role in ("vendor", "buyer", "provider"):
    open(os.path.join(sys.argv[2], role + ".key"), "w").write(acc[role]["private_key"])
print(acc["deployer/arbiter"]["address"], acc["vendor"]["address"], acc["buyer"]["address"], acc["provider"]["address"])
PY
)
for role in vendor buyer provider; do
  "$BDC" key import --keystore "$WORK/keys/$role.json" --private-key-file "$WORK/$role.key" >/dev/null
  rm "$WORK/$role.key"
done
echo "chain: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rpc_url"])' "$BDC_DEPLOYMENT")"
echo "vendor (Kaiko) $VENDOR, provider (Stimergy) $PROVIDER, buyer (eFast) $BUYER, arbiter $ARBITER"

step "1. Kaiko's trades (CSV, one file per symbol), published on Stimergy's node"
mkdir -p "$WORK/kaiko-trades/2026-11-25"
python3 - "$WORK/kaiko-trades/2026-11-25" <<'PY'
import random, sys, os
random.seed(7)
for sym, px in (("BTC-USD", 97000.0), ("ETH-USD", 3600.0), ("SOL-USD", 240.0)):
    with open(os.path.join(sys.argv[1], f"{sym}.csv"), "w") as f:
        f.write("ts,symbol,price,qty,side\n")
        ts = 1764028800000
        for i in range(40000):
            ts += random.randint(1, 2000); px *= 1 + random.gauss(0, 0.0004)
            f.write(f"{ts},{sym},{px:.2f},{random.expovariate(3):.6f},{random.choice('bs')}\n")
PY
ROOT=$("$BDC" --data-dir "$WORK/stimergy" provider publish "$WORK/kaiko-trades" \
  --name kaiko-trades-2026-11-25 --license CC-BY-4.0 --tag crypto --tag trades --vendor "$VENDOR")
echo "root: $ROOT"

# compute jobs run in runc sandboxes, which need root (make test installs runc)
JOBS=()
if [ "$(id -u)" = 0 ] && command -v runc >/dev/null; then
  mkdir -p "$WORK/kaiko-sample"
  "$BDC" dataset sample-trades --rows 500000 -o "$WORK/kaiko-sample/trades.parquet" >/dev/null
  "$BDC" --data-dir "$WORK/stimergy" provider publish "$WORK/kaiko-sample" --free \
    --name kaiko-sample --tag crypto --vendor "$VENDOR" >/dev/null
  echo "also published a free 500k-trade sample (trades.parquet) for queries next to the data"
  JOBS=(--jobs --job-memory 512MiB)
fi

step "2. Kaiko registers the root on chain with a 10% royalty"
"$BDC" --data-dir "$WORK/stimergy" dataset register "$ROOT" --royalty-bps 1000 --keystore "$WORK/keys/vendor.json"

step "3. balances before"
"$BDC" balance "$VENDOR" "$PROVIDER" "$BUYER"

step "4. Stimergy sells it: 1000 BDC/GiB, 1 MiB window, redeem every 1 MiB"
# a 10 s expiry margin: the demo's deal lives only 40 s (the default margin is 300 s)
"$BDC" --data-dir "$WORK/stimergy" provider serve --bind 127.0.0.1:0 --sell --arbiter "$ARBITER" --expiry-margin 10 \
  --price-per-gib 1000000000000000000000 --window 1048576 --redeem-every 1048576 \
  --keystore "$WORK/keys/provider.json" "${JOBS[@]}" > "$WORK/serve.out" 2> "$WORK/serve.err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q bdcoffer "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
OFFER=$(grep bdcoffer "$WORK/serve.out" | grep '^kaiko-trades' | cut -f2 | head -n1)
[ -n "$OFFER" ] || { echo "serve printed no offer"; cat "$WORK/serve.err"; exit 1; }
echo "offer: ${OFFER:0:60}..."

step "5. eFast buys: escrows 10 BDC in a deal, fetches, verifies every 16 KiB group, signs a receipt every 256 KiB"
"$BDC" --data-dir "$WORK/efast" fetch "$OFFER" -o "$WORK/received" --arbiter "$ARBITER" \
  --keystore "$WORK/keys/buyer.json" --deal-secs 40 --receipt-every 262144 --deposit 10000000000000000000
diff -r "$WORK/kaiko-trades/2026-11-25" "$WORK/received/2026-11-25" && echo "files identical to Kaiko's"
DEAL=$("$BDC" --data-dir "$WORK/efast" deals --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

step "6. Stimergy redeems the final receipt on chain"
for _ in $(seq 1 100); do
  DONE=$("$BDC" --data-dir "$WORK/efast" deals --json | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(int(d["redeemed"] == d["signed"]))')
  [ "$DONE" = 1 ] && break; sleep 0.2
done
"$BDC" --data-dir "$WORK/efast" deals

if [ ${#JOBS[@]} -gt 0 ]; then
  step "6b. eFast asks a question next to the data instead of downloading it: SQL in a sandbox, signed result"
  SAMPLE=$(grep '^kaiko-sample' "$WORK/serve.out" | cut -f2 | head -n1)
  "$BDC" --data-dir "$WORK/efast" compute "$SAMPLE" --provider-address "$PROVIDER" \
    --sql "SELECT symbol, count(*) AS trades, round(sum(qty), 3) AS volume, round(avg(price), 2) AS vwap_proxy
           FROM trades GROUP BY symbol ORDER BY symbol"
fi

step "7. after the 5 s dispute window: the pot is paid out — 90% provider, 10% vendor royalty"
sleep 6
"$BDC" --data-dir "$WORK/efast" deal withdraw "$DEAL" --keystore "$WORK/keys/provider.json"
"$BDC" balance "$VENDOR" "$PROVIDER" "$BUYER"

step "8. after the deal expires, eFast takes back what it did not spend"
NOW=$(date +%s)
EXPIRY=$("$BDC" --data-dir "$WORK/efast" deals --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["expiry"])')
[ "$EXPIRY" -gt "$NOW" ] && sleep $((EXPIRY - NOW + 2))
"$BDC" --data-dir "$WORK/efast" deal refund "$DEAL" --keystore "$WORK/keys/buyer.json"
"$BDC" balance "$VENDOR" "$PROVIDER" "$BUYER"
echo
echo "== demo ok: eFast paid exactly for the bytes it verified; Kaiko got its royalty; the rest came back"
