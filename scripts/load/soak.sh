#!/usr/bin/env bash
# soak.sh BDC SECS [MIB]: one provider serves a free dataset and sells another (both MIB MiB) on a
# devnet for SECS seconds under a steady mixed load: in each round two free fetches and one paid
# fetch (a fresh buyer data dir each, the paid ones alternating between two funded accounts) run
# at once. The provider's RSS and open descriptors are sampled every 5 s.
# Prints one line a minute and a summary (first minute's average against the last's); exits 1 if
# any fetch failed, any output differed, or RSS or descriptors grew by more than SOAK_GROWTH
# (default 1.5x) from the first minute to the last.
set -euo pipefail
BDC=$(realpath "$1") SECS=$2 MIB=${3:-8}
GROWTH=${SOAK_GROWTH:-1.5}
. "$(dirname "$0")/../lib/devnet.sh"
bdc_work bdc-soak
bdc_devnet
read -r ARBITER VENDOR < <(python3 - "$BDC_DEPLOYMENT" "$WORK" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1]))
acc = {a["role"]: a for a in d["accounts"]}
for role in ("vendor", "buyer", "buyer2", "provider"):
    open(os.path.join(sys.argv[2], role + ".key"), "w").write(acc[role]["private_key"])
print(acc["deployer/arbiter"]["address"], acc["vendor"]["address"])
PY
)
for role in vendor buyer buyer2 provider; do
  "$BDC" key import --keystore "$WORK/keys/$role.json" --private-key-file "$WORK/$role.key" >/dev/null
done
mkdir -p "$WORK/sold" "$WORK/free"
head -c $((MIB << 20)) /dev/urandom > "$WORK/sold/ticks.bin"
head -c $((MIB << 20)) /dev/urandom > "$WORK/free/ref.bin"
ROOT=$("$BDC" --data-dir "$WORK/p" provider publish "$WORK/sold" --name ticks --vendor "$VENDOR" 2>/dev/null)
"$BDC" --data-dir "$WORK/p" provider publish "$WORK/free" --name ref --free >/dev/null 2>&1
"$BDC" --data-dir "$WORK/p" dataset register "$ROOT" --royalty-bps 1000 --keystore "$WORK/keys/vendor.json" >/dev/null
"$BDC" --data-dir "$WORK/p" provider serve --bind 127.0.0.1:0 --sell --arbiter "$ARBITER" \
  --price-per-gib 1000000000000000000 --window 1048576 --redeem-every 4194304 \
  --keystore "$WORK/keys/provider.json" > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVE=$!
offer_of() { awk -F'\t' -v n="$1" -v p="$2" '$1 == n && index($2, p) == 1 {print $2; exit}' "$WORK/serve.out"; }
for _ in $(seq 1 200); do [ -n "$(offer_of ticks bdcoffer)" ] && [ -n "$(offer_of ref blob)" ] && break; sleep 0.05; done
OFFER=$(offer_of ticks bdcoffer)
TICKET=$(offer_of ref blob)
[ -n "$OFFER" ] && [ -n "$TICKET" ] || { echo "serve printed no offer or ticket"; cat "$WORK/serve.out"; tail "$WORK/serve.err"; exit 1; }
SECONDS=0
bdc_sample "$SERVE" 5 > "$WORK/samples" &
sampler=$!
round=0 failed=0 bad=0 next_report=60
while [ "$SECONDS" -lt "$SECS" ]; do
  round=$((round + 1))
  who=$([ $((round % 2)) = 0 ] && echo buyer || echo buyer2)
  "$BDC" --quiet --data-dir "$WORK/r/f1" fetch "$TICKET" -o "$WORK/r/o1" >/dev/null 2>>"$WORK/fetch.err" & a=$!
  "$BDC" --quiet --data-dir "$WORK/r/f2" fetch "$TICKET" -o "$WORK/r/o2" >/dev/null 2>>"$WORK/fetch.err" & b=$!
  "$BDC" --quiet --data-dir "$WORK/r/b" fetch "$OFFER" -o "$WORK/r/o3" --arbiter "$ARBITER" \
    --keystore "$WORK/keys/$who.json" --deal-secs 3600 --receipt-every 262144 >/dev/null 2>>"$WORK/fetch.err" & c=$!
  for p in $a $b $c; do wait "$p" || failed=$((failed + 1)); done
  cmp -s "$WORK/free/ref.bin" "$WORK/r/o1/ref.bin" || bad=$((bad + 1))
  cmp -s "$WORK/free/ref.bin" "$WORK/r/o2/ref.bin" || bad=$((bad + 1))
  cmp -s "$WORK/sold/ticks.bin" "$WORK/r/o3/ticks.bin" || bad=$((bad + 1))
  rm -rf "$WORK/r"
  if [ "$SECONDS" -ge "$next_report" ]; then
    last=$(tail -1 "$WORK/samples")
    echo "t=${SECONDS}s rounds=$round failed=$failed differing=$bad rss_kib=$(echo "$last" | cut -d' ' -f2) fds=$(echo "$last" | cut -d' ' -f3)"
    next_report=$((next_report + 60))
  fi
done
kill "$sampler" 2>/dev/null || true
python3 - "$WORK/samples" "$SECS" "$GROWTH" "$round" "$failed" "$bad" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 3]
secs, growth, rounds, failed, bad = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
first = [r for r in rows if r[0] <= 60] or rows[:1]
last = [r for r in rows if r[0] >= rows[-1][0] - 60] or rows[-1:]
avg = lambda xs, i: sum(x[i] for x in xs) / len(xs)
r0, r1, f0, f1 = avg(first, 1), avg(last, 1), avg(first, 2), avg(last, 2)
peak = max(r[1] for r in rows)
print(f"| soak {secs} s | {rounds} rounds ({3 * rounds} fetches, {rounds} paid) | RSS first minute {r0 / 1024:.0f} MiB, last {r1 / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB | fds {f0:.0f} -> {f1:.0f} | failed {failed} | differing {bad} |")
ok = failed == 0 and bad == 0 and r1 <= r0 * growth and f1 <= f0 * growth + 8
sys.exit(0 if ok else 1)
PY
