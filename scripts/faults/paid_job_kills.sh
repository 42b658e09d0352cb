#!/usr/bin/env bash
# paid_job_kills.sh BDC ROUNDS [ROWS]: fault injection on paid SQL jobs. A devnet, a sample of
# ROWS (5000) trades (`bdc dataset sample-trades`, one Parquet file) registered by its vendor and sold by a
# provider that also runs jobs on it (`serve --sell --jobs --job-price JOB_PRICE`, runc sandboxes:
# needs root and runc, see scripts/ensure_sandbox.sh). Round 0 is a clean paid job (`bdc compute
# --pay`): its CSV is the expected result, its duration T0. Each round a fresh buyer data dir runs
# the same paid job and one process is killed with SIGKILL, in turn (KILL=done|buyer|provider for
# one kind only):
#   done      the provider, 0–DONE_DELAY (0.3) s after it logs the job done: before, during or
#             after the result fetch, the receipt and its redeem;
#   buyer     the buyer, after a random MIN_DELAY–MAX_DELAY (0.1–T0) s: opening its job deal,
#             queued, running, fetching the result or paying;
#   provider  the provider, after the same random delay: mostly while the job is queued or running.
# A killed provider is restarted at once (a killed buyer's job fails by itself once its QUIC
# connection times out, up to BUYER_WAIT s). Then the buyer runs the job again, up to 3 times,
# until one completes. After each round, from the buyer's `bdc deals --json`, the provider's log
# and the chain's DealOpened logs:
#   - every result file the buyer holds equals the clean run's, and a rerun completed;
#   - no job deal is paid without a verified result: the buyer signed no more job deals than it
#     holds results, each for exactly the job's price, and none is redeemed beyond what it signed;
#   - the finished job's deal, and every deal whose receipt the provider logged as stored, are
#     redeemed to what was signed within REDEEM_WAIT (30) s;
#   - the kill left at most one deal unredeemed (counting deals opened on chain that the buyer's
#     book does not know, reported apart), and such a deal is open with its whole escrow
#     refundable after expiry.
# At the end the chain's clock moves past every deal's expiry, every unredeemed deal is refunded
# with `bdc deal refund`, and the buyer's balance must rise by exactly their escrow. Also reported:
# job containers left in runc's state by killed providers (not counted as violations).
# Prints one line per round and a summary; exits 1 on any violation. KEEP=1 keeps the work dir.
set -euo pipefail
BDC=$(realpath "$1") ROUNDS=$2 ROWS=${3:-5000}
JOB_PRICE=${JOB_PRICE:-1000000000000000}   # 0.001 BDC a job: a result of up to ~1 MB at 1 BDC/GiB
DEAL_SECS=${DEAL_SECS:-3600}
MIN_DELAY=${MIN_DELAY:-0.01} DONE_DELAY=${DONE_DELAY:-0.3}
BUYER_WAIT=${BUYER_WAIT:-60} REDEEM_WAIT=${REDEEM_WAIT:-30}
SQL="SELECT symbol, side, count(*) AS n, round(sum(qty), 3) AS volume, min(price) AS low, max(price) AS high
     FROM trades GROUP BY symbol, side ORDER BY symbol, side"
RUNC=$(command -v runc || true)
if [ "$(id -u)" != 0 ] || [ -z "$RUNC" ]; then
  echo "paid_job_kills.sh: jobs run in runc sandboxes, which need root and runc (bash scripts/ensure_sandbox.sh)"
  exit 1
fi
. "$(dirname "$0")/../lib/devnet.sh"
bdc_work bdc-job-faults
bdc_devnet
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
done
mkdir -p "$WORK/data"
"$BDC" dataset sample-trades --rows "$ROWS" -o "$WORK/data/trades.parquet" >/dev/null
ROOT=$("$BDC" --data-dir "$WORK/p" provider publish "$WORK/data" --name trades --vendor "$VENDOR" 2>/dev/null)
"$BDC" --data-dir "$WORK/p" dataset register "$ROOT" --royalty-bps 1000 --keystore "$WORK/keys/vendor.json" >/dev/null
runc_jobs() { "$RUNC" list -q 2>/dev/null | grep '^bdc-job-' | sort || true; }
runc_jobs > "$WORK/runc.before"
serve() { # (re)starts the provider; sets SERVE and TICKET (the address changes with each start)
  # the provider's log (appended over restarts) says when a job is done and a receipt stored
  NO_COLOR=1 BDC_LOG=warn,bdc_provider=info "$BDC" --data-dir "$WORK/p" provider serve --bind 127.0.0.1:0 \
    --sell --arbiter "$ARBITER" --price-per-gib 1000000000000000000 --keystore "$WORK/keys/provider.json" \
    --jobs --job-price "$JOB_PRICE" --runc "$RUNC" --job-memory 512MiB --job-timeout 60s \
    > "$WORK/serve.out" 2>> "$WORK/serve.err" &
  SERVE=$!
  for _ in $(seq 1 400); do grep -q bdcoffer "$WORK/serve.out" 2>/dev/null && break; sleep 0.05; done
  grep -q bdcoffer "$WORK/serve.out" || { echo "serve printed no offer"; tail "$WORK/serve.err"; exit 1; }
  # a job names the dataset by its ticket (`bdc provider ticket` reads the running serve's address)
  TICKET=$("$BDC" --data-dir "$WORK/p" provider ticket "$ROOT" 2>/dev/null)
  [ -n "$TICKET" ] || { echo "no ticket for $ROOT"; tail "$WORK/serve.err"; exit 1; }
}
job() { # round attempt: the command of one paid job, into JOB; its result r<round>/out<attempt>.csv
  JOB=("$BDC" --quiet --data-dir "$WORK/b$1" compute "$TICKET" --pay --arbiter "$ARBITER"
    --provider-address "$PROVIDER" --keystore "$WORK/keys/buyer.json" --max-price "$JOB_PRICE"
    --deal-secs "$DEAL_SECS" --sql "$SQL" -o "$WORK/r$1/out$2.csv" --json)
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
head_block() { bdc_rpc eth_blockNumber | python3 -c 'import json,sys; print(int(json.load(sys.stdin), 16))'; }
jobs_done() { grep -c "job done" "$WORK/serve.err" 2>/dev/null || true; }

# ---- the checks after a round (see the header); appends the deals left to refund to refund.list
cat > "$WORK/check.py" <<'PY'
import glob, json, os, re, subprocess, sys, time, urllib.request
bdc, work, r, price, buyer, from_block, wait, final, rc1, victim, done_at_kill, prefix = sys.argv[1:13]
r, price, from_block, wait, final, rc1 = int(r), int(price), int(from_block), float(wait), int(final), int(rc1)
dep = json.load(open(os.environ["BDC_DEPLOYMENT"]))

def rpc(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(dep["rpc_url"], body, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["result"]

def book():
    p = subprocess.run([bdc, "--data-dir", f"{work}/b{r}", "deals", "--json"], capture_output=True, text=True)
    if p.returncode:
        print(f"{prefix}: VIOLATION\n  violation: bdc deals failed: {p.stderr.strip()[-300:]}")
        sys.exit(1)
    return json.loads(p.stdout)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
def stored():  # deals whose job receipt the provider logged as stored (in its ledger, for the redeemer)
    out = set()
    for line in open(f"{work}/serve.err", errors="replace"):
        line = ANSI.sub("", line)
        m = re.search(r"deal=(0x[0-9a-fA-F]{64})", line)
        if m and "job receipt stored" in line:
            out.add(m.group(1).lower())
    return out

redeemed = lambda d: int(d["redeemed"] or 0)
deadline = time.time() + wait
while True:
    ds, st = book(), stored()
    owed = [d for i, d in enumerate(ds) if d["id"].lower() in st or (final and i == len(ds) - 1)]
    if all(redeemed(d) >= int(d["signed"]) for d in owed) or time.time() > deadline:
        break
    time.sleep(0.5)

errs = []
expected = open(f"{work}/expected.csv", "rb").read()
outs = sorted(glob.glob(f"{work}/r{r}/out*.csv"))  # final names only: exports go to a hidden temp first
held = [o for o in outs if open(o, "rb").read() == expected]
for o in outs:
    if o not in held:
        errs.append(f"{os.path.basename(o)} differs from the clean run's result")
if not final:
    errs.append("no rerun completed the job")
elif f"{work}/r{r}/out{final}.csv" not in outs:
    errs.append(f"attempt {final} completed but wrote no out{final}.csv")
paid = [d for d in ds if int(d["signed"]) > 0]
if len(paid) > len(held):
    errs.append(f"{len(paid)} job deals signed, {len(held)} verified results held")
for d in ds:
    s, red, short = int(d["signed"]), redeemed(d), d["id"][:10]
    if s not in (0, price):
        errs.append(f"deal {short} signed {s}, the job costs {price}")
    if red > s:
        errs.append(f"deal {short} redeemed {red} > signed {s}")
    if d["id"].lower() in st and red != s:
        errs.append(f"deal {short}: the provider stored its receipt, redeemed {red} of {s} after {wait:.0f} s")
if final:
    last = ds[-1] if ds else None
    if last is None:
        errs.append("the finished job has no deal")
    elif int(last["signed"]) != price or redeemed(last) != price:
        errs.append(f"the finished job's deal {last['id'][:10]}: signed {last['signed']}, redeemed {redeemed(last)}, "
                    f"price {price}")

# the chain's record of this round's job deals for the buyer (DealOpened: id, buyer, provider indexed)
topic = "0x" + "00" * 12 + buyer[2:].lower()
logs = rpc("eth_getLogs", [{"fromBlock": hex(from_block), "toBlock": "latest",
                            "address": dep["deployment"]["escrow"], "topics": [None, None, topic]}])
opened = {}
for l in logs:
    if len(l["topics"]) == 4:
        words = [l["data"][2 + 64 * i: 66 + 64 * i] for i in range(14)]
        opened[l["topics"][1].lower()] = int(words[9], 16)  # datasetRoot, then Terms: maxAmount is its 9th
ids = {d["id"].lower() for d in ds}
for i in sorted(ids - set(opened)):
    errs.append(f"deal {i[:10]} is in the buyer's book but was not opened on chain this round")
orphans = sorted(set(opened) - ids)
unsettled = [d for d in ds if redeemed(d) == 0]
for d in unsettled:
    if d["status"] != "open" or int(d["refundable_after_expiry"]) != int(d["escrowed"]):
        errs.append(f"unredeemed deal {d['id'][:10]}: status {d['status']}, refundable "
                    f"{d['refundable_after_expiry']} of {d['escrowed']}")
left = len(unsettled) + len(orphans)
if left > (0 if victim == "none" else 1):
    errs.append(f"{left} deals left to refund for one kill")
with open(f"{work}/refund.list", "a") as f:
    for d in unsettled:
        f.write(f"{r} {d['id']} book\n")
    for o in orphans:
        f.write(f"{r} {o} chain {opened[o]}\n")

# how far the killed attempt had come: its deal as the book held it when it ended
phase = ""
if victim != "none":
    p = f"{work}/r{r}/deals.after1.json"
    after1 = json.load(open(p)) if os.path.exists(p) else []
    if rc1 == 0:
        phase = "the job had ended"
    elif not after1:
        phase = "opening its job deal" if orphans else "before its job deal"
    elif int(after1[0]["paid"]) > 0:
        phase = "receipt stored" if str(after1[0]["id"]).lower() in st else "receipt signed, not stored"
    elif os.path.exists(f"{work}/r{r}/out1.csv"):
        phase = "result held, unpaid"
    elif done_at_kill == "1":
        phase = "after Done, before the result"
    else:
        phase = "queued or running"
    phase = f" ({phase})"
extra = f", {len(orphans)} opened on chain outside the buyer's book" if orphans else ""
print(f"{prefix}{phase}: {len(ds)} deal(s), {len(paid)} paid, {len(unsettled)} to refund{extra}, "
      f"{len(held)} result(s) held {'VIOLATION' if errs else 'ok'}")
for e in errs:
    print("  violation:", e)
sys.exit(1 if errs else 0)
PY
check() { python3 "$WORK/check.py" "$BDC" "$WORK" "$@"; }

serve
# round 0: a clean paid job, the expected result and the time a job takes (T0)
mkdir -p "$WORK/r0"
from=$(($(head_block) + 1))
t0=$(now)
job 0 1
"${JOB[@]}" > "$WORK/r0/out1.json" 2> "$WORK/r0/err1" || { echo "the clean paid job failed:"; cat "$WORK/r0/err1"; exit 1; }
T0=$(since "$t0")
cp "$WORK/r0/out1.csv" "$WORK/expected.csv"
check 0 "$JOB_PRICE" "$BUYER" "$from" "$REDEEM_WAIT" 1 0 none 0 "round   0: clean paid job in $T0 s" || exit 1
MAX_DELAY=${MAX_DELAY:-$(awk -v t="$T0" 'BEGIN { printf "%.2f", (t < 0.05 ? 0.05 : t) }')}
echo "result: $(($(wc -l < "$WORK/expected.csv") - 1)) rows; kills after $MIN_DELAY–$MAX_DELAY s, or 0–$DONE_DELAY s after Done"

violations=0 late=0
for r in $(seq 1 "$ROUNDS"); do
  mkdir -p "$WORK/r$r"
  case ${KILL:-} in
    done|buyer|provider) kind=$KILL ;;
    "") kinds=(provider done buyer); kind=${kinds[$((r % 3))]} ;;
    *) echo "KILL=$KILL: one of done, buyer, provider"; exit 1 ;;
  esac
  from=$(($(head_block) + 1))
  done0=$(jobs_done)
  job "$r" 1
  "${JOB[@]}" > "$WORK/r$r/out1.json" 2> "$WORK/r$r/err1" &
  BUYER_PID=$!   # the bdc process itself (a simple command in the background)
  if [ "$kind" = done ]; then
    for _ in $(seq 1 3000); do
      [ "$(jobs_done)" -gt "$done0" ] && break
      kill -0 "$BUYER_PID" 2>/dev/null || break
      sleep 0.02
    done
    delay=$(python3 -c "import random; print(round(random.uniform(0, $DONE_DELAY), 2))")
  else
    delay=$(python3 -c "import random; print(round(random.uniform($MIN_DELAY, $MAX_DELAY), 2))")
  fi
  sleep "$delay"
  kill -0 "$BUYER_PID" 2>/dev/null || late=$((late + 1))
  done_at_kill=0; [ "$(jobs_done)" -gt "$done0" ] && done_at_kill=1
  hung=0
  if [ "$kind" = buyer ]; then
    kill -9 "$BUYER_PID" 2>/dev/null || true
    printf -v prefix 'round %3d: killed the buyer after %s s' "$r" "$delay"
  else
    kill -9 "$SERVE" 2>/dev/null || true
    wait "$SERVE" 2>/dev/null || true
    serve
    if [ "$kind" = done ]; then
      printf -v prefix 'round %3d: killed the provider %s s after Done' "$r" "$delay"
    else
      printf -v prefix 'round %3d: killed the provider after %s s' "$r" "$delay"
    fi
    # the buyer's job fails by itself once its connection to the dead provider times out
    for _ in $(seq 1 $((BUYER_WAIT * 10))); do kill -0 "$BUYER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$BUYER_PID" 2>/dev/null; then hung=1; kill -9 "$BUYER_PID" 2>/dev/null || true; fi
  fi
  rc1=0; wait "$BUYER_PID" 2>/dev/null || rc1=$?
  [ -f "$WORK/b$r/fetcher/deals.json" ] && cp "$WORK/b$r/fetcher/deals.json" "$WORK/r$r/deals.after1.json"
  final=0
  if [ "$rc1" = 0 ]; then final=1; else
    for k in 2 3 4; do
      job "$r" "$k"
      if "${JOB[@]}" > "$WORK/r$r/out$k.json" 2> "$WORK/r$r/err$k"; then final=$k; break; fi
      sleep 1
    done
  fi
  ok=1
  check "$r" "$JOB_PRICE" "$BUYER" "$from" "$REDEEM_WAIT" "$final" "$rc1" "$kind" "$done_at_kill" "$prefix" || ok=0
  if [ "$hung" = 1 ]; then
    echo "  violation: the buyer's job was still running $BUYER_WAIT s after its provider was killed"; ok=0
  fi
  if [ "$final" = 0 ]; then
    for k in 2 3 4; do [ -s "$WORK/r$r/err$k" ] && echo "  attempt $k: $(tail -n1 "$WORK/r$r/err$k")"; done
  fi
  if ! kill -0 "$SERVE" 2>/dev/null; then
    echo "  violation: the provider exited"; tail -3 "$WORK/serve.err"; ok=0; serve
  fi
  [ $ok = 1 ] || violations=$((violations + 1))
done

# ---- after expiry: every deal left unredeemed gives the buyer its whole escrow back
bdc_rpc evm_increaseTime "[$((DEAL_SECS + 60))]" >/dev/null
bdc_rpc evm_mine >/dev/null
touch "$WORK/refund.list"
# refund.todo: the deals with escrow left (one whose receipt was redeemed since is not refunded)
owed=$(python3 - "$BDC" "$WORK" <<'PY'
import json, subprocess, sys
bdc, work = sys.argv[1:3]
books, total, todo = {}, 0, []
for line in open(f"{work}/refund.list"):
    r, id, kind, *amount = line.split()
    if kind == "chain":  # never in the buyer's book, so never signed for: all of it
        left = int(amount[0])
    else:
        if r not in books:
            out = subprocess.run([bdc, "--data-dir", f"{work}/b{r}", "deals", "--json"],
                                 capture_output=True, text=True, check=True)
            books[r] = {d["id"]: d for d in json.loads(out.stdout)}
        left = int(books[r][id]["refundable_after_expiry"])
    if left:
        total += left
        todo.append(f"{r} {id} {kind}\n")
open(f"{work}/refund.todo", "w").writelines(todo)
print(total)
PY
)
balance() { "$BDC" balance "$BUYER" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["balance"])'; }
before=$(balance)
refunds=0 orphans=0
while read -r rr id kind; do
  [ "$kind" = chain ] && orphans=$((orphans + 1))
  if "$BDC" --quiet --data-dir "$WORK/b$rr" deal refund "$id" --keystore "$WORK/keys/buyer.json" \
      </dev/null >/dev/null 2>>"$WORK/refund.err"; then
    refunds=$((refunds + 1))
  else
    echo "  violation: deal $id (round $rr) could not be refunded after expiry: $(tail -n1 "$WORK/refund.err")"
    violations=$((violations + 1))
  fi
done < "$WORK/refund.todo"
after=$(balance)
if ! python3 -c "import sys; sys.exit(0 if $after - $before == $owed else 1)"; then
  echo "  violation: the refunds returned $(python3 -c "print($after - $before)") base units, the unredeemed escrow was $owed"
  violations=$((violations + 1))
fi
leftover=$(runc_jobs | comm -13 "$WORK/runc.before" - | wc -l)
echo "paid job kills: $ROUNDS rounds ($late ended before the kill), $violations violations;" \
  "$refunds unredeemed job deals refunded after expiry ($orphans opened outside the buyer's book, $owed base units);" \
  "$leftover job container(s) left in runc's state"
[ "$violations" = 0 ]
