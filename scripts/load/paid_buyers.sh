#!/usr/bin/env bash
# paid_buyers.sh BDC N MIB: N buyers, each with its own funded account and data dir, buy one
# provider's sold dataset of MIB MiB at once (one deal each, receipts every 256 KiB, window
# 1 MiB) on a devnet. Prints the provider's peak RSS and open descriptors, the aggregate
# throughput, and per-buyer checks:
#   - the output is byte-identical to the vendor's file;
#   - each buyer signed for exactly the bytes a full download verifies (nothing twice, nothing
#     missing), and its deal was redeemed to that last receipt.
# Exits 1 if any fetch failed or any check did not hold.
set -euo pipefail
BDC=$(realpath "$1") N=$2 MIB=${3:-16}
WINDOW=1048576
. "$(dirname "$0")/../lib/devnet.sh"
bdc_work bdc-paid-load
bdc_devnet --extra-buyers "$N"
# keys: vendor, provider, and buyers 1..N (the devnet's `buyer`, `buyer2`, then `buyer3`…)
ARBITER=$(python3 - "$BDC_DEPLOYMENT" "$WORK" "$N" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1])); work = sys.argv[2]; n = int(sys.argv[3])
acc = {a["role"]: a for a in d["accounts"]}
open(os.path.join(work, "vendor.key"), "w").write(acc["vendor"]["private_key"])
open(os.path.join(work, "provider.key"), "w").write(acc["provider"]["private_key"])
buyers = [acc["buyer"], acc["buyer2"]] + [acc[f"buyer{k}"] for k in range(3, n + 1)]
for i, b in enumerate(buyers[:n], start=1):
    open(os.path.join(work, f"buyer{i}.key"), "w").write(b["private_key"])
print(acc["deployer/arbiter"]["address"])
PY
)
for k in vendor provider $(seq -f 'buyer%g' 1 "$N"); do
  "$BDC" key import --keystore "$WORK/keys/$k.json" --private-key-file "$WORK/$k.key" >/dev/null
done
VENDOR=$(python3 -c "import json,sys; print([a for a in json.load(open('$BDC_DEPLOYMENT'))['accounts'] if a['role']=='vendor'][0]['address'])")
mkdir -p "$WORK/data"
head -c $((MIB << 20)) /dev/urandom > "$WORK/data/ticks.bin"
ROOT=$("$BDC" --data-dir "$WORK/p" provider publish "$WORK/data" --name ticks --vendor "$VENDOR" 2>/dev/null)
"$BDC" --data-dir "$WORK/p" dataset register "$ROOT" --royalty-bps 1000 --keystore "$WORK/keys/vendor.json" >/dev/null
"$BDC" --data-dir "$WORK/p" provider serve --bind 127.0.0.1:0 --sell --arbiter "$ARBITER" \
  --price-per-gib 1000000000000000000 --window $WINDOW --redeem-every 4194304 \
  --keystore "$WORK/keys/provider.json" > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVE=$!
for _ in $(seq 1 200); do grep -q bdcoffer "$WORK/serve.out" 2>/dev/null && break; sleep 0.05; done
OFFER=$(grep bdcoffer "$WORK/serve.out" | cut -f2 | head -n1)
[ -n "$OFFER" ] || { echo "serve printed no offer"; tail "$WORK/serve.err"; exit 1; }
bdc_sample "$SERVE" 0.2 > "$WORK/samples" &
sampler=$!
t0=$(date +%s.%N)
pids=()
for i in $(seq 1 "$N"); do
  "$BDC" --quiet --data-dir "$WORK/b$i" fetch "$OFFER" -o "$WORK/out$i" --arbiter "$ARBITER" \
    --keystore "$WORK/keys/buyer$i.json" --deal-secs 3600 --receipt-every 262144 \
    >/dev/null 2> "$WORK/fetch$i.err" &
  pids+=($!)
done
failed=0 i=0 first_err=""
for p in "${pids[@]}"; do
  i=$((i + 1))
  wait "$p" || { failed=$((failed + 1)); [ -n "$first_err" ] || first_err=$(tail -3 "$WORK/fetch$i.err"); }
done
t1=$(date +%s.%N)
kill "$sampler" 2>/dev/null || true
peak=$(sort -n -k2 "$WORK/samples" | tail -1 | cut -d' ' -f2)
fds=$(sort -n -k3 "$WORK/samples" | tail -1 | cut -d' ' -f3)
# every buyer: identical output, and signed == verified bytes of one full download == redeemed
bad=0 first_bad=""
want=""
for i in $(seq 1 "$N"); do
  cmp -s "$WORK/data/ticks.bin" "$WORK/out$i/ticks.bin" || { bad=$((bad + 1)); first_bad=${first_bad:-"buyer $i: output differs"}; continue; }
  for _ in $(seq 1 150); do
    read -r n verified signed redeemed < <("$BDC" --data-dir "$WORK/b$i" deals --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(len(d), sum(x["verified_bytes"] for x in d), sum(int(x["signed"]) for x in d), sum(int(x["redeemed"] or 0) for x in d))')
    [ "$redeemed" = "$signed" ] && break
    sleep 0.2
  done
  want=${want:-$verified}
  if [ "$n" != 1 ] || [ "$verified" != "$want" ] || [ "$redeemed" != "$signed" ]; then
    bad=$((bad + 1))
    first_bad=${first_bad:-"buyer $i: $n deal(s), verified $verified (first buyer: $want), signed $signed, redeemed $redeemed"}
  fi
done
secs=$(echo "$t1 - $t0" | bc -l)
printf '| %3d paid buyers x %4d MiB | provider peak RSS %4d MiB | peak fds %4d | %7.1f MiB/s aggregate | %6.1f s | failed %d | checks failed %d |\n' \
  "$N" "$MIB" $((peak / 1024)) "$fds" "$(echo "$N * $MIB / $secs" | bc -l)" "$secs" "$failed" "$bad"
[ -z "$first_err" ] || echo "first failed fetch: $first_err"
[ -z "$first_bad" ] || echo "first failed check: $first_bad"
[ "$failed" = 0 ] && [ "$bad" = 0 ]
