#!/usr/bin/env bash
# The free flow, end to end on loopback: a vendor publishes a folder of market data, a provider
# serves it, a buyer fetches it with verification, and the files are compared byte for byte.
set -euo pipefail
BDC="${1:?usage: demo.sh path/to/bdc}"
WORK="$(mktemp -d -t bdc-demo.XXXXXX)"
SERVE_PID=""
cleanup() {
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== 1. Kaiko generates a day of synthetic trades (CSV, one file per symbol)"
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
du -sh "$WORK/kaiko-trades"

echo "== 2. publish it as a free dataset"
ROOT=$("$BDC" --data-dir "$WORK/vendor" provider publish "$WORK/kaiko-trades" --free \
  --name kaiko-trades-2026-11-25 --license CC-BY-4.0 --tag crypto --tag trades)
echo "root: $ROOT"

echo "== 3. serve it on 127.0.0.1 (relays and discovery off)"
"$BDC" --data-dir "$WORK/vendor" provider serve --bind 127.0.0.1:0 > "$WORK/serve.out" &
SERVE_PID=$!
for _ in $(seq 1 100); do grep -q blob "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
TICKET=$(cut -f2 "$WORK/serve.out" | head -n1)
[ -n "$TICKET" ] || { echo "serve printed no ticket"; exit 1; }
echo "ticket: ${TICKET:0:60}..."

echo "== 4. eFast fetches it, verifying every 16 KiB chunk group"
"$BDC" --data-dir "$WORK/buyer" fetch "$TICKET" -o "$WORK/received"

echo "== 5. compare"
diff -r "$WORK/kaiko-trades/2026-11-25" "$WORK/received/2026-11-25"
echo "manifest (bdc.json):"; head -n 12 "$WORK/received/bdc.json"
echo "== demo ok: every byte verified against root $ROOT"
