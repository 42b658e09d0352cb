# Sourced by the fault and load scripts: a work dir, a cleanup trap, a devnet and an RSS sampler.
#   bdc_work PREFIX         WORK=a fresh temp dir; on exit, kill PIDS, SERVE and ANVIL_PID, remove
#                           WORK (KEEP=1 keeps it)
#   bdc_devnet [ARGS...]    start `bdc devnet` in WORK/chain (extra ARGS passed on), wait for its
#                           devnet.json, export BDC_DEPLOYMENT and BDC_PASSWORD_FILE, and
#                           DEVNET_PID (the `bdc devnet` process) and ANVIL_PID (the anvil it
#                           started, its child; empty if it was not found)
#   bdc_rpc METHOD [PARAMS] one JSON-RPC call to the devnet's chain (PARAMS a JSON array, default
#                           []); prints the result as JSON, exits 1 on an RPC error
#   bdc_sell_ticks MIB VENDOR  import WORK/{vendor,buyer,provider}.key (written by the caller) into
#                           WORK/keys, publish MIB MiB of random bytes (WORK/data/ticks.bin) in WORK/p
#                           as "ticks" for VENDOR, and register it at 10% royalty: ROOT
#   bdc_serve_ticks ARBITER WINDOW  start `provider serve --sell` on WORK/p in the background
#                           (1 BDC/GiB, a redeem every 1 MiB, logs in WORK/serve.*): SERVE, OFFER
#   bdc_sample PID SECS     print "elapsed rss_kib fds" for PID every SECS until it exits
bdc_work() {
  WORK=$(mktemp -d -t "$1.XXXXXX")
  PIDS=()
  trap bdc_cleanup EXIT
}
bdc_cleanup() {
  # anvil too: killed with SIGKILL, `bdc devnet` cannot stop the anvil it started (and a stalled
  # one, see faults/chain_stalls.sh, would stay stopped)
  for p in "${PIDS[@]}" ${SERVE:-} ${ANVIL_PID:-}; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
bdc_devnet() {
  "$BDC" --data-dir "$WORK/chain" devnet --port 0 --json "$@" > "$WORK/devnet.out" 2>"$WORK/devnet.err" &
  DEVNET_PID=$!
  PIDS+=($DEVNET_PID)
  for _ in $(seq 1 300); do [ -s "$WORK/chain/devnet.json" ] && break; sleep 0.1; done
  [ -s "$WORK/chain/devnet.json" ] || { echo "devnet did not start"; cat "$WORK/devnet.err"; exit 1; }
  # anvil is the devnet's only child (through a wrapper, if BDC_ANVIL names one: its innermost child)
  ANVIL_PID=$(pgrep -P "$DEVNET_PID" | head -n1 || true)
  while [ -n "$ANVIL_PID" ]; do
    local inner
    inner=$(pgrep -P "$ANVIL_PID" | head -n1 || true)
    [ -n "$inner" ] || break
    ANVIL_PID=$inner
  done
  export DEVNET_PID ANVIL_PID
  export BDC_DEPLOYMENT="$WORK/chain/devnet.json"
  echo pass > "$WORK/pw"; export BDC_PASSWORD_FILE="$WORK/pw"
}
bdc_rpc() {
  python3 - "$BDC_DEPLOYMENT" "$1" "${2:-[]}" <<'PY'
import json, sys, urllib.request
url = json.load(open(sys.argv[1]))["rpc_url"]
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode()
req = urllib.request.Request(url, body, {"content-type": "application/json"})
r = json.load(urllib.request.urlopen(req, timeout=60))
if "error" in r:
    sys.exit(f"{sys.argv[2]}: {r['error']}")
print(json.dumps(r["result"]))
PY
}
bdc_sell_ticks() {
  for role in vendor buyer provider; do
    "$BDC" key import --keystore "$WORK/keys/$role.json" --private-key-file "$WORK/$role.key" >/dev/null
  done
  mkdir -p "$WORK/data"
  head -c $(($1 << 20)) /dev/urandom > "$WORK/data/ticks.bin"
  ROOT=$("$BDC" --data-dir "$WORK/p" provider publish "$WORK/data" --name ticks --vendor "$2" 2>/dev/null)
  "$BDC" --data-dir "$WORK/p" dataset register "$ROOT" --royalty-bps 1000 --keystore "$WORK/keys/vendor.json" >/dev/null
}
bdc_serve_ticks() {
  "$BDC" --data-dir "$WORK/p" provider serve --bind 127.0.0.1:0 --sell --arbiter "$1" \
    --price-per-gib 1000000000000000000 --window "$2" --redeem-every 1048576 \
    --keystore "$WORK/keys/provider.json" > "$WORK/serve.out" 2>> "$WORK/serve.err" &
  SERVE=$!
  for _ in $(seq 1 200); do grep -q bdcoffer "$WORK/serve.out" 2>/dev/null && break; sleep 0.05; done
  OFFER=$(grep bdcoffer "$WORK/serve.out" | cut -f2 | head -n1)
  [ -n "$OFFER" ] || { echo "serve printed no offer"; tail "$WORK/serve.err"; exit 1; }
}
bdc_sample() {
  local start=$SECONDS
  while kill -0 "$1" 2>/dev/null; do
    echo "$((SECONDS - start)) $(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0) $(ls "/proc/$1/fd" 2>/dev/null | wc -l)"
    sleep "$2"
  done
}
