#!/usr/bin/env bash
# chain_stalls.sh BDC ROUNDS [MIB]: fault injection on the chain under the paid path. A devnet, a
# vendor's dataset of MIB (32) MiB of random bytes registered and sold by a provider (window
# 1 MiB, a redeem every 1 MiB receipted, so it sends transactions all through a download); round 0
# is an uninterrupted paid fetch, the baseline of bytes a full download verifies, and its
# duration T0. Each round a fresh buyer starts a paid fetch and, after a random MIN_DELAY–MAX_DELAY
# (0.05–T0) s, the chain stops answering: anvil gets SIGSTOP for a random MIN_STALL–MAX_STALL
# (2–8) s, then SIGCONT. The stall can land on the buyer opening its deal, the provider checking
# the deal at the Hello, or its redeems. A stopped anvil is a node that hangs: the kernel still
# accepts TCP connections (the listen backlog) but nothing is answered until it resumes.
# Killing anvil instead would not be meaningful: the devnet's chain lives only in anvil's memory
# (no state file), so a killed anvil takes the contracts, the balances and every deal with it, and
# a restarted one is another, empty chain; nothing could recover.
# After each round:
#   - the fetch completed with output identical to the vendor's file, or failed with a clear
#     error (exactly one `error: ` line, the last, and no panic) and a rerun completed with
#     identical output; a fetch still running FETCH_WAIT (120) s after the chain is back is a hang;
#   - over its deals the buyer verified (and so signed for) no more than the baseline plus the
#     window, and no less than the baseline minus the window; at most two deals;
#   - once the chain is back, every deal is redeemed to what the buyer signed within REDEEM_WAIT
#     (60) s (nothing signed is left unredeemed), and the provider is still running;
#   - deals opened on chain for the buyer that its deal book does not know (an openDeal that went
#     through after the buyer gave up) are reported, not counted as violations: they are
#     refundable after expiry with `bdc deal refund ID`.
# Prints one line per round and a summary; exits 1 on any violation. KEEP=1 keeps the work dir.
set -euo pipefail
BDC=$(realpath "$1") ROUNDS=$2 MIB=${3:-32}
WINDOW=1048576
MIN_DELAY=${MIN_DELAY:-0.05} MIN_STALL=${MIN_STALL:-2} MAX_STALL=${MAX_STALL:-8}
FETCH_WAIT=${FETCH_WAIT:-120} REDEEM_WAIT=${REDEEM_WAIT:-60}
. "$(dirname "$0")/../lib/devnet.sh"
bdc_work bdc-chain-stalls
bdc_devnet
[ -n "${ANVIL_PID:-}" ] && kill -0 "$ANVIL_PID" 2>/dev/null ||
  { echo "cannot find the devnet's anvil process (a child of bdc devnet $DEVNET_PID)"; exit 1; }
read -r ARBITER VENDOR BUYER < <(python3 - "$BDC_DEPLOYMENT" "$WORK" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1]))
acc = {a["role"]: a for a in d["accounts"]}
for role in ("vendor", "buyer", "provider"):
    open(os.path.join(sys.argv[2], role + ".key"), "w").write(acc[role]["private_key"])
print(acc["deployer/arbiter"]["address"], acc["vendor"]["address"], acc["buyer"]["address"])
PY
)
bdc_sell_ticks "$MIB" "$VENDOR"
serve() { bdc_serve_ticks "$ARBITER" "$WINDOW"; }
fetch() { # round attempt [bg]: one paid fetch into out<round>; with bg, in the background (FETCH=its pid)
  local cmd=("$BDC" --quiet --data-dir "$WORK/b$1" fetch "$OFFER" --pay -o "$WORK/out$1" --arbiter "$ARBITER"
    --keystore "$WORK/keys/buyer.json" --deal-secs 3600 --receipt-every 262144 --deposit 1000000000000000000)
  if [ "${3:-}" = bg ]; then
    "${cmd[@]}" >/dev/null 2> "$WORK/fetch$1.$2.err" &
    FETCH=$!   # the bdc process itself
  else
    "${cmd[@]}" >/dev/null 2> "$WORK/fetch$1.$2.err"
  fi
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
head_block() { bdc_rpc eth_blockNumber | python3 -c 'import json,sys; print(int(json.load(sys.stdin), 16))'; }

# ---- the deal checks after a round: waits until every deal is redeemed to what was signed
cat > "$WORK/check.py" <<'PY'
import json, os, subprocess, sys, time, urllib.request
bdc, work, r, buyer, from_block, base, window, wait = sys.argv[1:9]
r, from_block, base, window, wait = int(r), int(from_block), int(base), int(window), float(wait)
dep = json.load(open(os.environ["BDC_DEPLOYMENT"]))

def rpc(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(dep["rpc_url"], body, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["result"]

def book():
    p = subprocess.run([bdc, "--data-dir", f"{work}/b{r}", "deals", "--json"], capture_output=True, text=True)
    if p.returncode:
        print(f"0 0 0 0 0 0 - bdc deals failed: {p.stderr.strip()[-300:]}")
        sys.exit(1)
    return json.loads(p.stdout)

red = lambda d: int(d["redeemed"] or 0)
t0 = time.time()
while True:
    ds = book()
    if all(red(d) >= int(d["signed"]) for d in ds) or time.time() - t0 > wait:
        break
    time.sleep(0.5)
secs = time.time() - t0
n, signed, redeemed = len(ds), sum(int(d["signed"]) for d in ds), sum(red(d) for d in ds)
verified = sum(d["verified_bytes"] for d in ds)
topic = "0x" + "00" * 12 + buyer[2:].lower()
logs = rpc("eth_getLogs", [{"fromBlock": hex(from_block), "toBlock": "latest",
                            "address": dep["deployment"]["escrow"], "topics": [None, None, topic]}])
opened = {l["topics"][1].lower() for l in logs if len(l["topics"]) == 4}
ids = {d["id"].lower() for d in ds}
orphans = sorted(opened - ids)
errs = []
if n == 0: errs.append("no deal")
if n > 2: errs.append(f"{n} deals for one stall")
if verified > base + window: errs.append(f"paid for {verified - base} bytes beyond a full download")
if verified < base - window: errs.append(f"paid for {verified} of {base} bytes, short by more than the window")
for d in ds:
    if red(d) > int(d["signed"]): errs.append(f"deal {d['id'][:10]} redeemed {red(d)} > signed {d['signed']}")
    elif red(d) < int(d["signed"]): errs.append(f"deal {d['id'][:10]} redeemed {red(d)} of {d['signed']} signed after {wait:.0f} s")
for i in sorted(ids - opened): errs.append(f"deal {i[:10]} is in the buyer's book but was not opened on chain this round")
# the line: deals, signed, redeemed, verified, seconds to redeemed, orphans, then the violations
print(n, signed, redeemed, verified, f"{secs:.1f}", len(orphans), "; ".join(errs) or "-")
for o in orphans:
    print(f"  note: deal {o} was opened on chain but is not in the buyer's book (refundable after expiry)",
          file=sys.stderr)
sys.exit(1 if errs else 0)
PY

serve
# round 0: an uninterrupted paid fetch, the bytes a full download verifies and the time it takes
t0=$(now)
fetch 0 1 || { echo "the clean paid fetch failed:"; cat "$WORK/fetch0.1.err"; exit 1; }
T0=$(since "$t0")
BASE=$("$BDC" --data-dir "$WORK/b0" deals --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["verified_bytes"])')
MAX_DELAY=${MAX_DELAY:-$(awk -v t="$T0" 'BEGIN { printf "%.2f", (t / 2 < 0.1 ? 0.1 : t / 2) }')}
echo "clean paid fetch: $BASE B verified in $T0 s; stalls of $MIN_STALL–$MAX_STALL s after $MIN_DELAY–$MAX_DELAY s"
violations=0 landed=0 failed=0 hung=0 orphans_total=0
for r in $(seq 1 "$ROUNDS"); do
  from=$(($(head_block) + 1))
  fetch "$r" 1 bg
  delay=$(python3 -c "import random; print(round(random.uniform($MIN_DELAY, $MAX_DELAY), 2))")
  stall=$(python3 -c "import random; print(round(random.uniform($MIN_STALL, $MAX_STALL), 1))")
  sleep "$delay"
  at_stop=0; kill -0 "$FETCH" 2>/dev/null && at_stop=1
  # an interrupted run does not leave anvil stopped: the cleanup kills it, stopped or not
  kill -STOP "$ANVIL_PID"
  sleep "$stall"
  kill -CONT "$ANVIL_PID"
  at_cont=0; kill -0 "$FETCH" 2>/dev/null && at_cont=1
  [ $at_stop = 1 ] && landed=$((landed + 1))
  if [ $at_stop = 0 ]; then when="the fetch had ended"
  elif [ $at_cont = 1 ]; then when="the fetch ran through it"
  else when="the fetch ended during it"; fi
  ok=1 why=""
  for _ in $(seq 1 $((FETCH_WAIT * 10))); do kill -0 "$FETCH" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$FETCH" 2>/dev/null; then
    kill -9 "$FETCH" 2>/dev/null || true
    hung=$((hung + 1)); ok=0; why="; violation: the fetch still ran $FETCH_WAIT s after the chain was back"
  fi
  rc=0; wait "$FETCH" 2>/dev/null || rc=$?
  outcome=completed
  if [ "$rc" != 0 ]; then
    failed=$((failed + 1))
    err="$WORK/fetch$r.1.err"
    last=$(grep -v '^[[:space:]]*$' "$err" | tail -n1 || true)
    n_err=$(grep -c '^error: ' "$err" || true)
    outcome="failed (exit $rc): ${last:0:160}"
    if grep -q 'panicked' "$err" || [ "$n_err" != 1 ] || [ "${last#error: }" = "$last" ]; then
      ok=0; why="$why; violation: not one clear error line ($n_err 'error:' lines, last: ${last:0:120})"
    fi
    done_rerun=0
    for k in 2 3 4; do fetch "$r" "$k" && { done_rerun=1; break; }; sleep 0.5; done
    if [ $done_rerun = 1 ]; then outcome="$outcome; rerun completed"
    else ok=0; why="$why; violation: no rerun completed ($(tail -n1 "$WORK/fetch$r.4.err"))"; fi
  fi
  cmp -s "$WORK/data/ticks.bin" "$WORK/out$r/ticks.bin" || { ok=0; why="$why; violation: output differs"; }
  read -r n signed redeemed verified secs orphans errs < <(python3 "$WORK/check.py" "$BDC" "$WORK" "$r" "$BUYER" \
    "$from" "$BASE" "$WINDOW" "$REDEEM_WAIT" 2>> "$WORK/notes" || true) || true
  [ -n "${errs:-}" ] || { n=0 signed=? redeemed=? verified=0 secs=? orphans=0 errs="the deal checker failed (see below)"; }
  [ "$errs" = - ] || { ok=0; why="$why; violation: $errs"; }
  orphans_total=$((orphans_total + orphans))
  if ! kill -0 "$SERVE" 2>/dev/null; then
    ok=0; why="$why; violation: the provider exited"; tail -3 "$WORK/serve.err"; serve
  fi
  [ $ok = 1 ] || violations=$((violations + 1))
  printf 'round %3d: chain stopped %4s s after %4s s (%s): %s; %d deal(s), verified %d B, signed %s, redeemed %s (%s s after the fetch)%s %s\n' \
    "$r" "$stall" "$delay" "$when" "$outcome" "$n" "$verified" "$signed" "$redeemed" "$secs" \
    "$([ "$orphans" = 0 ] || echo ", $orphans deal(s) on chain outside the buyer's book")" "$([ $ok = 1 ] && echo ok || echo VIOLATION)"
  [ -z "$why" ] || echo "  ${why#; }" | sed 's/; violation/\n  violation/g'
  rm -rf "$WORK/out$r"
done
[ -s "$WORK/notes" ] && sed 's/^/  /' "$WORK/notes"
echo "chain stalls: $ROUNDS rounds ($landed stalls during a fetch, $failed fetches failed and were rerun, $hung hung)," \
  "$violations violations, $orphans_total deals on chain outside the buyer's book"
[ "$violations" = 0 ]
