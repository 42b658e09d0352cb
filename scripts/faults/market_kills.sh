#!/usr/bin/env bash
# market_kills.sh BDC ROUNDS [EVENTS]: fault injection on the market's chain indexer. A devnet
# gets about EVENTS (150) indexed events from every contract path: datasets registered (some with
# `bdc dataset register`), updated and handed to another vendor; deals opened, redeemed with
# buyer-signed receipts, disputed, resolved or settled by default, withdrawn and refunded (some
# with `bdc deal refund`), sent as JSON-RPC from anvil's unlocked accounts. Between transactions
# empty blocks are mined (BLOCKS, 4000 in all), so the catch-up spans several of the indexer's
# 2,000-block steps. Then `bdc market serve` is started on one data dir and killed with SIGKILL
# after a random MIN_DELAY–MAX_DELAY (0.05–1.5 s), ROUNDS times; before each restart the chain
# moves on by ROUND_EVENTS (10) events over ROUND_BLOCKS (600) blocks, so every restart has a
# catch-up to do. Finally it is left to catch up. The killed market reaches the chain through a
# loopback JSON-RPC proxy that delays each request by about LATENCY_MS (100, a remote node's
# latency): against anvil directly the whole catch-up takes less than the shortest delay, and no
# kill would land inside it. A second market indexes the same chain directly from an empty
# database. After both reach the head:
#   - every table the indexer writes (events, datasets, deals, redemptions, its cursor, and the
#     migrations applied) holds the same rows in both databases, compared exactly;
#   - the events table holds exactly the chain's logs (block, log index, kind), read with
#     eth_getLogs (so two markets that both lost an event do not pass);
#   - across the kills the stored cursor never went back (no reorg happens here), and the market
#     never exited before its kill.
# Listings, reports and the descriptions and search terms listings set are not indexed from the
# chain and not compared (nobody posts any here). Prints one line per kill and a summary; exits 1
# on any difference. KEEP=1 keeps the work dir; SEED seeds the chain activity.
set -euo pipefail
BDC=$(realpath "$1") ROUNDS=$2 EVENTS=${3:-150}
BLOCKS=${BLOCKS:-4000} ROUND_EVENTS=${ROUND_EVENTS:-10} ROUND_BLOCKS=${ROUND_BLOCKS:-600}
LATENCY_MS=${LATENCY_MS:-100} MIN_DELAY=${MIN_DELAY:-0.05} MAX_DELAY=${MAX_DELAY:-1.5} SEED=${SEED:-$RANDOM}
WORK=$(mktemp -d -t bdc-market-faults.XXXXXX)
PIDS=()
MARKET=
cleanup() {
  for p in "${PIDS[@]}" $MARKET; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
t_start=$SECONDS
"$BDC" --data-dir "$WORK/chain" devnet --port 0 --json --dispute-window 120 > "$WORK/devnet.out" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 1 200); do [ -s "$WORK/chain/devnet.json" ] && break; sleep 0.1; done
[ -s "$WORK/chain/devnet.json" ] || { echo "devnet did not start"; exit 1; }
export BDC_DEPLOYMENT="$WORK/chain/devnet.json"
echo pass > "$WORK/pw"; export BDC_PASSWORD_FILE="$WORK/pw"
RPC=$(python3 - "$BDC_DEPLOYMENT" "$WORK" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1]))
acc = {a["role"]: a for a in d["accounts"]}
for role in ("vendor", "buyer"):
    open(os.path.join(sys.argv[2], role + ".key"), "w").write(acc[role]["private_key"])
print(d["rpc_url"])
PY
)
for role in vendor buyer; do
  "$BDC" key import --keystore "$WORK/keys/$role.json" --private-key-file "$WORK/$role.key" >/dev/null
done
head_block() {
  curl -s -X POST -H 'content-type: application/json' \
    --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' "$RPC" |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["result"], 16))'
}

# ---- chain activity: every event kind the indexer follows, spread over many blocks
cat > "$WORK/gen.py" <<'PY'
import json, os, random, subprocess, sys, time, urllib.request

# gen.py grow EVENTS BLOCKS SEED: about EVENTS more events, BLOCKS more empty blocks between them
# gen.py truth: the chain's indexed logs into chain_events.json, and a summary
# (BDC_DEPLOYMENT, BDC and WORK from the environment; the model of roots and deals persists in
# WORK/gen.state.json between calls)
mode = sys.argv[1]
dep_path, bdc, work = os.environ["BDC_DEPLOYMENT"], os.environ["BDC"], os.environ["WORK"]

def keccak256(data):
    RC, R = [], 1
    for _ in range(24):
        c = 0
        for j in range(7):
            R = ((R << 1) ^ ((R >> 7) * 0x71)) % 256
            if R & 2: c ^= 1 << ((1 << j) - 1)
        RC.append(c)
    ROT = [[0, 36, 3, 41, 18], [1, 44, 10, 45, 2], [62, 6, 43, 15, 61], [28, 55, 25, 21, 56], [27, 20, 39, 8, 14]]
    M = (1 << 64) - 1
    rol = lambda v, n: ((v << n) | (v >> (64 - n))) & M if n else v
    rate = 136
    msg = bytearray(data) + b"\x01" + b"\x00" * ((-len(data) - 1) % rate)
    msg[-1] |= 0x80
    A = [0] * 25
    for off in range(0, len(msg), rate):
        for i in range(rate // 8):
            A[i] ^= int.from_bytes(msg[off + 8 * i: off + 8 * i + 8], "little")
        for rnd in range(24):
            C = [A[x] ^ A[x + 5] ^ A[x + 10] ^ A[x + 15] ^ A[x + 20] for x in range(5)]
            D = [C[(x - 1) % 5] ^ rol(C[(x + 1) % 5], 1) for x in range(5)]
            A = [A[i] ^ D[i % 5] for i in range(25)]
            B = [0] * 25
            for x in range(5):
                for y in range(5):
                    B[y + 5 * ((2 * x + 3 * y) % 5)] = rol(A[x + 5 * y], ROT[x][y])
            A = [B[i] ^ (~B[(i + 1) % 5 + 5 * (i // 5)] & B[(i + 2) % 5 + 5 * (i // 5)]) for i in range(25)]
            A[0] ^= RC[rnd]
    return b"".join(A[i].to_bytes(8, "little") for i in range(4))

assert keccak256(b"transfer(address,uint256)")[:4].hex() == "a9059cbb"
d = json.load(open(dep_path))
url, dep = d["rpc_url"], d["deployment"]
REG, ESC, TOK = dep["registry"].lower(), dep["escrow"].lower(), dep["token"].lower()
acc = {a["role"]: a["address"].lower() for a in d["accounts"]}
VENDORS, BUYERS = [acc["vendor"], acc["buyer2"]], [acc["buyer"], acc["buyer2"]]
PROVIDER, ARBITER = acc["provider"], acc["deployer/arbiter"]
TERMS = "(address,address,address,address,uint16,bytes32,bytes32,uint128,uint96,uint64,uint64,uint64,uint64)"
KINDS = {
    "DatasetRegistered(bytes32,address,uint16,bytes32,uint128)": "dataset_registered",
    "DatasetUpdated(bytes32,uint16,bytes32,uint128)": "dataset_updated",
    "VendorTransferred(bytes32,address,address)": "vendor_transferred",
    f"DealOpened(bytes32,address,address,bytes32,{TERMS})": "deal_opened",
    "Redeemed(bytes32,uint256,uint256,uint40)": "redeemed",
    "Withdrawn(bytes32,uint256,uint256)": "withdrawn",
    "Refunded(bytes32,uint256)": "refunded",
    "Disputed(bytes32,uint256,uint256,bytes32,uint40)": "disputed",
    "Resolved(bytes32,uint256,uint256,uint256,bool,bool)": "resolved",
    "RedeemFailed(bytes32,bytes4)": None,  # not indexed
}
TOPIC = {"0x" + keccak256(s.encode()).hex(): k for s, k in KINDS.items()}

def rpc(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    r = json.load(urllib.request.urlopen(req, timeout=120))
    if "error" in r:
        raise RuntimeError(f"{method}: {r['error']}")
    return r["result"]

def w(v): return (int(v, 16) if isinstance(v, str) else v).to_bytes(32, "big").hex()
def data(sig, *words): return "0x" + keccak256(sig.encode())[:4].hex() + "".join(words)
def rand32(): return "0x" + rng.getrandbits(256).to_bytes(32, "big").hex()

events = 0
def send(frm, to, calldata):
    global events
    try:
        h = rpc("eth_sendTransaction", [{"from": frm, "to": to, "data": calldata}])
    except RuntimeError:
        return None  # reverts (the model guessed wrong): no event
    for _ in range(600):
        rc = rpc("eth_getTransactionReceipt", [h])
        if rc is not None: break
        time.sleep(0.01)
    if rc is None or int(rc["status"], 16) != 1:
        return None
    logs = [l for l in rc["logs"] if l["address"].lower() in (REG, ESC) and TOPIC.get(l["topics"][0])]
    events += len(logs)
    return logs

def cli(*args):
    global events
    r = subprocess.run([bdc, "-q", "--data-dir", os.path.join(work, "v"), *args],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode == 0: events += 1
    else: print("  cli failed:", " ".join(args[:2]), r.stderr.strip()[-200:], file=sys.stderr)
    return r.returncode == 0

def now(): return int(rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

STATE = os.path.join(work, "gen.state.json")
st = json.load(open(STATE)) if os.path.exists(STATE) else None
roots = st["roots"] if st else {}   # root -> vendor
deals = st["deals"] if st else {}   # id -> model
cli_regs, cli_refunds, cli_tries, mined = (st["cli_regs"], st["cli_refunds"], st["cli_tries"], st["mined"]) if st else (0, 0, [0, 0], 0)

def register():
    global cli_regs
    vendor, root = rng.choice(VENDORS), rand32()
    bps, mh, hint = rng.randrange(0, 2001), rng.choice([rand32(), "0x" + "00" * 32]), rng.randrange(0, 10**21)
    if vendor == acc["vendor"] and cli_tries[0] < 12 and rng.random() < 0.3:
        cli_tries[0] += 1
        args = ["dataset", "register", root[2:], "--royalty-bps", str(bps), "--price-hint", str(hint),
                "--keystore", os.path.join(work, "keys", "vendor.json")]
        if int(mh, 16): args += ["--manifest-hash", mh[2:]]
        ok = cli(*args)
        cli_regs += ok
    else:
        ok = send(vendor, REG, data("register(bytes32,uint16,bytes32,uint128)", w(root), w(bps), w(mh), w(hint))) is not None
    if ok: roots[root] = vendor

def update():
    root = rng.choice(list(roots))
    send(roots[root], REG, data("update(bytes32,uint16,bytes32,uint128)", w(root), w(rng.randrange(0, 2001)),
                                w(rand32()), w(rng.randrange(0, 10**21))))

def transfer():
    root = rng.choice(list(roots))
    to = [v for v in VENDORS if v != roots[root]][0]
    if send(roots[root], REG, data("transferVendor(bytes32,address)", w(root), w(to))) is not None:
        roots[root] = to

def open_deal():
    buyer, root = rng.choice(BUYERS), rng.choice(list(roots))
    mx = rng.randrange(10**15, 10**20)
    logs = send(buyer, ESC, data("openDeal(address,bytes32,bytes32,uint128,uint256,uint64,uint64,address)",
                                 w(PROVIDER), w(rand32()), w(root), w(rng.randrange(1, 10**9)), w(mx),
                                 w(1 << 20), w(now() + rng.choice([150, 600, 3600])), w(ARBITER)))
    for l in logs or []:
        if TOPIC[l["topics"][0]] == "deal_opened":
            words = [l["data"][2 + 64 * i: 66 + 64 * i] for i in range(14)]
            deals[l["topics"][1]] = dict(terms="".join(words[1:]), buyer=buyer, max=int(words[9], 16),
                                         expiry=int(words[11], 16), cum=0, paid=0, release=0,
                                         disputed=False, refunded=False)

def live(pred):
    t = now()
    return [k for k, v in deals.items() if pred(v, t)]

def redeem():
    i = rng.choice(live(lambda v, t: not v["refunded"] and t + 5 < v["expiry"]))
    v = deals[i]
    cum = v["cum"] + rng.randrange(1, v["max"] // 2 + 2)
    typed = {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                   {"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}],
                  "Receipt": [{"name": "dealId", "type": "bytes32"}, {"name": "cumulativeAmount", "type": "uint256"}]},
        "primaryType": "Receipt",
        "domain": {"name": "BDC TransferEscrow", "version": "1", "chainId": dep["chain_id"], "verifyingContract": ESC},
        "message": {"dealId": i, "cumulativeAmount": str(cum)},
    }
    sig = rpc("eth_signTypedData_v4", [v["buyer"], typed])[2:]
    logs = send(PROVIDER, ESC, data(f"redeem({TERMS},uint256,bytes)", v["terms"], w(cum), w(15 * 32), w(65),
                                    sig + "00" * 31))
    for l in logs or []:
        if TOPIC[l["topics"][0]] == "redeemed":
            v["cum"], v["release"] = int(l["data"][66:130], 16), int(l["data"][130:194], 16)

def dispute():
    i = rng.choice(live(lambda v, t: v["cum"] > v["paid"] and not v["disputed"] and t + 3 < v["release"]))
    logs = send(deals[i]["buyer"], ESC, data(f"dispute({TERMS},bytes32)", deals[i]["terms"], w(rand32())))
    for l in logs or []:
        if TOPIC[l["topics"][0]] == "disputed":
            deals[i]["disputed"], deals[i]["release"] = True, int(l["data"][194:258], 16)

def resolve():
    i = rng.choice(live(lambda v, t: v["disputed"] and t + 3 < v["release"]))
    v = deals[i]
    if send(ARBITER, ESC, data(f"resolve({TERMS},uint256,bool)", v["terms"], w(rng.randrange(0, v["cum"] - v["paid"] + 1)),
                               w(rng.randrange(2)))) is not None:
        v["disputed"], v["paid"] = False, v["cum"]

def settle():
    i = rng.choice(live(lambda v, t: v["disputed"] and t >= v["release"]))
    if send(rng.choice(BUYERS), ESC, data(f"settleDispute({TERMS})", deals[i]["terms"])) is not None:
        deals[i]["disputed"], deals[i]["paid"] = False, deals[i]["cum"]

def withdraw():
    i = rng.choice(live(lambda v, t: not v["disputed"] and v["cum"] > v["paid"] and t >= v["release"]))
    if send(PROVIDER, ESC, data(f"withdraw({TERMS})", deals[i]["terms"])) is not None:
        deals[i]["paid"] = deals[i]["cum"]

def refund():
    global cli_refunds
    i = rng.choice(live(lambda v, t: not v["refunded"] and t >= v["expiry"]))
    if cli_tries[1] < 3 and rng.random() < 0.3:
        cli_tries[1] += 1
        ok = cli("deal", "refund", i, "--keystore", os.path.join(work, "keys", "buyer.json"))
        cli_refunds += ok
    else:
        ok = send(rng.choice(BUYERS), ESC, data(f"refund({TERMS})", deals[i]["terms"])) is not None
    if ok: deals[i]["refunded"] = True

def advance():
    rpc("evm_increaseTime", [rng.randrange(30, 400)])
    rpc("evm_mine", [])

actions = [
    (register, 4, lambda t: True),
    (update, 2, lambda t: roots),
    (transfer, 1, lambda t: roots),
    (open_deal, 3, lambda t: roots),
    (redeem, 3, lambda t: any(not v["refunded"] and t + 5 < v["expiry"] for v in deals.values())),
    (dispute, 2, lambda t: any(v["cum"] > v["paid"] and not v["disputed"] and t + 3 < v["release"] for v in deals.values())),
    (resolve, 1, lambda t: any(v["disputed"] and t + 3 < v["release"] for v in deals.values())),
    (settle, 1, lambda t: any(v["disputed"] and t >= v["release"] for v in deals.values())),
    (withdraw, 2, lambda t: any(not v["disputed"] and v["cum"] > v["paid"] and t >= v["release"] for v in deals.values())),
    (refund, 2, lambda t: any(not v["refunded"] and t >= v["expiry"] for v in deals.values())),
    (advance, 1, lambda t: deals),
]
if mode == "grow":
    target, blocks, rng = int(sys.argv[2]), int(sys.argv[3]), random.Random(int(sys.argv[4]))
    gap = blocks // max(target, 1)  # empty blocks mined after each transaction, on average
    if st is None:
        for b in BUYERS:
            send(b, TOK, data("approve(address,uint256)", w(ESC), w((1 << 256) - 1)))
    events = 0
    while events < target:
        t = now()
        ok = [(f, wt) for f, wt, can in actions if can(t)]
        f = rng.choices([f for f, _ in ok], [wt for _, wt in ok])[0]
        f()
        if gap:
            n = rng.randrange(0, 2 * gap + 1)
            if n:
                rpc("anvil_mine", [hex(n)])
                mined += n
    json.dump(dict(roots=roots, deals=deals, cli_regs=cli_regs, cli_refunds=cli_refunds, cli_tries=cli_tries,
                   mined=mined), open(STATE, "w"))
    sys.exit()

# the chain's own record, which the markets are checked against
logs = rpc("eth_getLogs", [{"fromBlock": hex(dep["deploy_block"]), "toBlock": "latest", "address": [REG, ESC]}])
truth = sorted([int(l["blockNumber"], 16), int(l["logIndex"], 16), TOPIC[l["topics"][0]]]
               for l in logs if TOPIC.get(l["topics"][0]))
json.dump(truth, open(os.path.join(work, "chain_events.json"), "w"))
kinds = {}
for _, _, k in truth: kinds[k] = kinds.get(k, 0) + 1
head = int(rpc("eth_blockNumber", []), 16)
print(f"chain at the end: {len(truth)} indexed events in blocks {dep['deploy_block']}..{head} ({mined} empty blocks mined, "
      f"{cli_regs} registrations and {cli_refunds} refunds through the CLI)")
print("  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
PY
export BDC WORK
grow() { python3 "$WORK/gen.py" grow "$@"; }
t0=$SECONDS
grow "$EVENTS" "$BLOCKS" "$SEED"
HEAD=$(head_block)
echo "chain activity: $EVENTS events over $BLOCKS empty blocks to block $HEAD in $((SECONDS - t0)) s (seed $SEED); then" \
  "$ROUND_EVENTS events over $ROUND_BLOCKS blocks before each restart; market RPC latency ${LATENCY_MS} ms"

# ---- a slow link to the chain for the market that is killed: each JSON-RPC request waits
# 0.5–1.5 x LATENCY_MS before it is forwarded
python3 - "$RPC" "$LATENCY_MS" "$WORK/proxy.port" <<'PY' 2>>"$WORK/proxy.err" &
import http.server, os, random, sys, time, urllib.request
upstream, latency = sys.argv[1], int(sys.argv[2]) / 1000
class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(latency * random.uniform(0.5, 1.5))
        req = urllib.request.Request(upstream, body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = r.read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
srv.daemon_threads = True
open(sys.argv[3] + ".tmp", "w").write(str(srv.server_address[1]))
os.rename(sys.argv[3] + ".tmp", sys.argv[3])
srv.serve_forever()
PY
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/proxy.port" ] && break; sleep 0.05; done
SLOW_RPC="http://127.0.0.1:$(cat "$WORK/proxy.port")"

# ---- markets
DB1="$WORK/m1/market/market.db" DB2="$WORK/m2/market/market.db"
start_market() { # data dir name, RPC URL; sets MARKET
  : > "$WORK/$1.out"
  # the background job is the bdc process itself (not a subshell), so kill -9 $MARKET hits it
  "$BDC" --data-dir "$WORK/$1" market serve --bind 127.0.0.1:0 --rpc-url "$2" \
    > "$WORK/$1.out" 2>> "$WORK/$1.err" &
  MARKET=$!
}
cursor_of() { # db path: the stored cursor block, "none" before the first step; read only (no checkpoint)
  python3 - "$1" <<'PY'
import sqlite3, sys, os
if not os.path.exists(sys.argv[1]): print("none"); sys.exit()
try:
    c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)
    r = c.execute("SELECT block FROM cursor WHERE name = 'chain'").fetchone()
    print(r[0] if r else "none")
except sqlite3.Error as e:
    print("none" if "no such table" in str(e) else f"unreadable({e})")
PY
}
wait_caught_up() { # data dir name: waits for the serving line, then /status at the head
  local port="" st="" i
  for i in $(seq 1 1200); do
    kill -0 "$MARKET" 2>/dev/null || { echo "market $1 exited:"; tail -5 "$WORK/$1.err"; return 1; }
    port=$(sed -n 's|^market serving on http://127.0.0.1:\([0-9]*\).*|\1|p' "$WORK/$1.out")
    if [ -n "$port" ]; then
      st=$(curl -s "http://127.0.0.1:$port/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["indexed"])' 2>/dev/null || true)
      [ "$st" = "$HEAD" ] && return 0
    fi
    sleep 0.1
  done
  echo "market $1 did not catch up to $HEAD (status: ${st:-none})"; tail -5 "$WORK/$1.err"; return 1
}
stop_market() { # SIGINT: the market's own shutdown, so SQLite checkpoints and closes cleanly
  kill -INT "$MARKET" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$MARKET" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$MARKET" 2>/dev/null || true
  wait "$MARKET" 2>/dev/null || true
  MARKET=
}

violations=0 mid=0 last=-1
for r in $(seq 1 "$ROUNDS"); do
  # the chain moved on while the market was down: every restart has a catch-up to do
  [ "$r" = 1 ] || { grow "$ROUND_EVENTS" "$ROUND_BLOCKS" "$((SEED + r))"; HEAD=$(head_block); }
  before=$(cursor_of "$DB1")
  start_market m1 "$SLOW_RPC"
  delay=$(python3 -c "import random; print(round(random.uniform($MIN_DELAY, $MAX_DELAY), 2))")
  sleep "$delay"
  alive=1; kill -0 "$MARKET" 2>/dev/null || alive=0
  serving=0; grep -q "^market serving on" "$WORK/m1.out" && serving=1
  kill -9 "$MARKET" 2>/dev/null || true
  wait "$MARKET" 2>/dev/null || true
  MARKET=
  cursor=$(cursor_of "$DB1")
  if [ $alive = 0 ]; then
    phase="EXITED before the kill"; violations=$((violations + 1)); tail -3 "$WORK/m1.err"
  elif [ $serving = 1 ]; then phase="serving (caught up)"
  elif [ "$cursor" = none ]; then phase="starting (no cursor yet)"; mid=$((mid + 1))
  elif [ "$cursor" = "$HEAD" ]; then phase="caught up, not yet serving"; mid=$((mid + 1))
  else phase="mid catch-up"; mid=$((mid + 1)); fi
  note=""
  case $cursor in
    none) ;;
    unreadable*) note=" VIOLATION (database unreadable)"; violations=$((violations + 1)) ;;
    *) if [ "$cursor" -lt "$last" ]; then note=" VIOLATION (cursor went back from $last)"; violations=$((violations + 1)); fi
       last=$cursor ;;
  esac
  printf 'round %3d: killed the market after %4s s: %-26s cursor %5s -> %5s of %5s%s\n' \
    "$r" "$delay" "$phase" "$before" "$cursor" "$HEAD" "$note"
done
python3 "$WORK/gen.py" truth
t0=$SECONDS
start_market m1 "$SLOW_RPC"
wait_caught_up m1 || exit 1
echo "restarted market caught up to block $HEAD in $((SECONDS - t0)) s"
stop_market
t0=$SECONDS
start_market m2 "$RPC"
wait_caught_up m2 || exit 1
echo "fresh market re-indexed to block $HEAD in $((SECONDS - t0)) s"
stop_market

# ---- compare: every table the indexer writes, row by row
same=yes
python3 - "$DB1" "$DB2" "$WORK/chain_events.json" <<'PY' || same=no
import json, sqlite3, sys
killed, fresh = (sqlite3.connect(f"file:{p}?mode=ro", uri=True) for p in sys.argv[1:3])
truth = [tuple(e) for e in json.load(open(sys.argv[3]))]
# written by listing intake and buyers' reports, not from the chain (and empty here)
NOT_INDEXED = {"listings", "reports", "dataset_meta", "terms"}
# _sqlx_migrations: installed_on and execution_time are wall-clock facts of each database
COLUMNS = {"_sqlx_migrations": ["version", "description", "success", "checksum"]}
def tables(c):
    return sorted(r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
def rows(c, t):
    cols = COLUMNS.get(t) or [r[1] for r in c.execute(f'PRAGMA table_info("{t}")')]
    return cols, sorted(c.execute(f'SELECT {", ".join(cols)} FROM "{t}"').fetchall(), key=repr)
ok = True
ta, tb = tables(killed), tables(fresh)
if ta != tb:
    print(f"tables differ: killed {ta}, fresh {tb}"); ok = False
counts = []
for t in sorted(set(ta) & set(tb)):
    if t in NOT_INDEXED:
        continue
    (ca, ra), (cb, rb) = rows(killed, t), rows(fresh, t)
    counts.append(f"{t} {len(ra)}")
    if ca != cb:
        print(f"table {t}: columns differ: killed {ca}, fresh {cb}"); ok = False; continue
    if ra != rb:
        ok = False
        sa, sb = set(ra), set(rb)
        print(f"table {t} differs: {len(ra)} rows in the killed market's, {len(rb)} in the fresh one's; columns {ca}")
        for label, only in (("only in the killed market's", sorted(sa - sb, key=repr)), ("only in the fresh one's", sorted(sb - sa, key=repr))):
            for row in only[:5]:
                print(f"  {label}: {row}")
            if len(only) > 5: print(f"  … {len(only) - 5} more {label}")
        if sa == sb: print("  same rows, different multiplicities")
for name, c in (("killed", killed), ("fresh", fresh)):
    got = sorted(c.execute("SELECT block, log_index, kind FROM events").fetchall())
    if got != truth:
        ok = False
        print(f"the {name} market's events differ from the chain's logs: {len(got)} stored, {len(truth)} on chain")
        for e in sorted(set(truth) - set(got))[:5]: print(f"  missing: {e}")
        for e in sorted(set(got) - set(truth))[:5]: print(f"  not on chain: {e}")
print("compared: " + ", ".join(counts) + f"; chain logs {len(truth)}")
sys.exit(0 if ok else 1)
PY
echo "market kills: $ROUNDS rounds ($mid mid catch-up, $violations violations), indexed tables identical to a fresh re-index: $same ($((SECONDS - t_start)) s)"
[ "$same" = yes ] && [ "$violations" = 0 ]
