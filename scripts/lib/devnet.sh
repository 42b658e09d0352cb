# Sourced by the fault and load scripts: a work dir, a cleanup trap, a devnet and an RSS sampler.
#   bdc_work PREFIX         WORK=a fresh temp dir; on exit, kill PIDS and SERVE, remove WORK
#                           (KEEP=1 keeps it)
#   bdc_devnet [ARGS...]    start `bdc devnet` in WORK/chain (extra ARGS passed on), wait for its
#                           devnet.json, export BDC_DEPLOYMENT and BDC_PASSWORD_FILE
#   bdc_sample PID SECS     print "elapsed rss_kib fds" for PID every SECS until it exits
bdc_work() {
  WORK=$(mktemp -d -t "$1.XXXXXX")
  PIDS=()
  trap bdc_cleanup EXIT
}
bdc_cleanup() {
  for p in "${PIDS[@]}" ${SERVE:-}; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
bdc_devnet() {
  "$BDC" --data-dir "$WORK/chain" devnet --port 0 --json "$@" > "$WORK/devnet.out" 2>"$WORK/devnet.err" &
  PIDS+=($!)
  for _ in $(seq 1 300); do [ -s "$WORK/chain/devnet.json" ] && break; sleep 0.1; done
  [ -s "$WORK/chain/devnet.json" ] || { echo "devnet did not start"; cat "$WORK/devnet.err"; exit 1; }
  export BDC_DEPLOYMENT="$WORK/chain/devnet.json"
  echo pass > "$WORK/pw"; export BDC_PASSWORD_FILE="$WORK/pw"
}
bdc_sample() {
  local start=$SECONDS
  while kill -0 "$1" 2>/dev/null; do
    echo "$((SECONDS - start)) $(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0) $(ls "/proc/$1/fd" 2>/dev/null | wc -l)"
    sleep "$2"
  done
}
