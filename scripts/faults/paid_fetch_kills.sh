#!/usr/bin/env bash
# paid_fetch_kills.sh BDC ROUNDS [MIB]: fault injection on the paid path. A devnet, a vendor's
# dataset of MIB MiB (random bytes) registered and sold by a provider; each round a fresh buyer
# starts a paid fetch and, after a random delay, the provider or the buyer is killed with
# SIGKILL (alternating; KILL=provider or KILL=buyer for one side only); the killed side restarts
# and the buyer runs the fetch again to the end.
# After each round:
#   - the output is byte-identical to the vendor's files (no unverified byte);
#   - over its deals (a second one when the provider says the first's window is spent), the buyer
#     verified (and so signed for) no more bytes than an uninterrupted download (round 0) plus
#     the window (no buyer pays twice beyond the window), and no deal redeemed more than signed;
#   - the deal that finished is redeemed to the last receipt (no acknowledged receipt lost).
# Prints one line per round and a summary; exits 1 on any violation.
set -euo pipefail
BDC=$(realpath "$1") ROUNDS=$2 MIB=${3:-64}
WINDOW=1048576
. "$(dirname "$0")/../lib/devnet.sh"
bdc_work bdc-faults
bdc_devnet
read -r ARBITER VENDOR < <(python3 - "$BDC_DEPLOYMENT" "$WORK" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1]))
acc = {a["role"]: a for a in d["accounts"]}
for role in ("vendor", "buyer", "provider"):
    open(os.path.join(sys.argv[2], role + ".key"), "w").write(acc[role]["private_key"])
print(acc["deployer/arbiter"]["address"], acc["vendor"]["address"])
PY
)
bdc_sell_ticks "$MIB" "$VENDOR"
serve() { bdc_serve_ticks "$ARBITER" "$WINDOW"; }
fetch() {
  "$BDC" --quiet --data-dir "$WORK/b$1" fetch "$OFFER" -o "$WORK/out$1" --arbiter "$ARBITER" \
    --keystore "$WORK/keys/buyer.json" --deal-secs 3600 --receipt-every 262144 \
    --deposit 1000000000000000000 >/dev/null 2>> "$WORK/fetch$1.err"
}
serve
# round 0: an uninterrupted fetch, the bytes a full paid download verifies (files, index, manifest)
fetch 0
BASE=$("$BDC" --data-dir "$WORK/b0" deals --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["verified_bytes"])')
violations=0 overpaid_total=0 late=0
for r in $(seq 1 "$ROUNDS"); do
  fetch "$r" &
  buyer=$!
  delay=$(python3 -c "import random; print(round(random.uniform(0.05, ${MAX_DELAY:-2.0}), 2))")
  sleep "$delay"
  kill -0 "$buyer" 2>/dev/null || late=$((late + 1))
  # the buyer is the bdc process itself, not the subshell `fetch &` made (killing that would
  # leave the fetch running, and the rerun would find its store locked)
  side=${KILL:-both}
  if [ "$side" = provider ] || { [ "$side" = both ] && [ $((r % 2)) = 1 ]; }; then
    victim=provider; kill -9 "$SERVE" 2>/dev/null || true
  else victim=buyer; pkill -9 -f -- "--data-dir $WORK/b$r fetch" || true; fi
  wait "$buyer" 2>/dev/null || true
  [ "$victim" = provider ] && serve
  for attempt in 1 2 3; do fetch "$r" && break; sleep 0.5; done
  ok=1
  cmp -s "$WORK/data/ticks.bin" "$WORK/out$r/ticks.bin" || { echo "round $r: output differs"; ok=0; }
  # deals in the order opened: a buyer killed with its window full resumes on a second one
  summary() { "$BDC" --data-dir "$WORK/b$r" deals --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(len(d), sum(int(x["signed"]) for x in d), sum(x["verified_bytes"] for x in d),
      sum(int(x["redeemed"] or 0) for x in d), d[-1]["signed"], d[-1]["redeemed"] or 0)'; }
  read -r n signed verified redeemed last_signed last_redeemed < <(summary)
  for _ in $(seq 1 100); do
    [ "$last_redeemed" = "$last_signed" ] && break
    sleep 0.2
    read -r n signed verified redeemed last_signed last_redeemed < <(summary)
  done
  size=$BASE
  over=$(python3 -c "print(max(0, $verified - $size))")
  overpaid_total=$((overpaid_total + over))
  python3 - "$n" "$signed" "$verified" "$redeemed" "$last_signed" "$last_redeemed" "$size" "$WINDOW" <<'PY' || ok=0
import sys
n, signed, verified, redeemed, last_signed, last_redeemed, size, window = map(int, sys.argv[1:])
errs = []
if n > 2: errs.append(f"{n} deals for one kill")
# a killed buyer may have verified bytes it had not yet recorded (it then pays less, never more):
# the provider loses at most the window
if verified < size - window: errs.append(f"paid for {verified} of {size} bytes, short by more than the window")
# over all deals: no byte paid for twice beyond one window (what a kill can lose in flight)
if verified > size + window: errs.append(f"paid for {verified - size} bytes twice")
if redeemed > signed: errs.append(f"redeemed {redeemed} > signed {signed}")
# the deal that finished: its final receipt reached the provider and was redeemed
if last_redeemed != last_signed: errs.append(f"last deal redeemed {last_redeemed} != signed {last_signed}")
if errs: print("  violation:", "; ".join(errs)); sys.exit(1)
PY
  if [ $ok = 0 ]; then
    violations=$((violations + 1))
    # what the provider said about redeeming (its log spans the kills): the cause, next time
    echo "  provider log (redeems and errors):"
    grep -aiE "redeem|error|ledger" "$WORK/serve.err" | tail -15 | sed 's/^/    /'
  fi
  printf 'round %3d: killed the %-8s after %4s s: %d deal(s), verified %d B (%d B twice), signed %s, redeemed %s %s\n' \
    "$r" "$victim" "$delay" "$n" "$verified" "$over" "$signed" "$redeemed" "$([ $ok = 1 ] && echo ok || echo VIOLATION)"
  rm -rf "$WORK/out$r"
done
echo "paid fetch kills: $ROUNDS rounds ($late ended before the kill), $violations violations, $overpaid_total bytes verified twice in all"
[ "$violations" = 0 ]
