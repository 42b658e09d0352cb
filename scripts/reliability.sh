#!/usr/bin/env bash
# The heavy reliability campaigns (docs/RELIABILITY.md): property fuzzing with many cases, kill -9
# on the paid path and on paid jobs, the chain stalled mid paid fetch, the market under a paced
# mixed load, and concurrent fetchers against one provider. `make test` runs a short version
# (`make reliability-short` and the unit fuzz cases).
# Every campaign runs; the exit status is 1 if any failed.
#   FUZZ_CASES (20000)  cases per decoder property
#   FAULT_ROUNDS (50) FAULT_MIB (256)
#   LOAD_SECS (60) LOAD_CONNS (10) LOAD_DELAY_MS (50) LOAD_LISTINGS (100000) BDC_PROFILE (release)
#   LOAD_FETCHERS ("20:1024 100:32": concurrent fetchers:MiB each; 2 x N x MiB of disk)
#   MARKET_KILL_ROUNDS (50) JOB_KILL_ROUNDS (20) CHAIN_STALL_ROUNDS (20) CHAIN_STALL_MIB (128)
#   PAID_BUYERS (50) PAID_MIB (16) SOAK_SECS (1800)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$HOME/.cache/bdc-target}"
export CARGO_TARGET_DIR
FEATURES=${TEST_FEATURES:---features ballista}
FUZZ_CASES=${FUZZ_CASES:-20000}
echo "== property fuzzing: $FUZZ_CASES cases per property"
# one cargo invocation over the same targets `make test` builds (other target sets resolve
# features differently and rebuild the dependency tree)
log=$(mktemp)
t0=$SECONDS
PROPTEST_CASES=$FUZZ_CASES cargo test --workspace $FEATURES --lib --test fuzz -- never_panic >"$log" 2>&1 ||
  { cat "$log"; exit 1; }
grep -E "^test .* ok$" "$log" | sed 's/^/  /'
echo "  $(grep -c '^test .* ok$' "$log") properties x $FUZZ_CASES cases, 0 failures, in $((SECONDS - t0)) s"

echo "== fault injection: kill -9 the provider or the buyer mid paid fetch (FAULT_ROUNDS, FAULT_MIB)"
PRE_BDC="$CARGO_TARGET_DIR/debug/bdc"
[ -x "$PRE_BDC" ] || cargo test --workspace $FEATURES --no-run >/dev/null
status=0
bash scripts/faults/paid_fetch_kills.sh "$PRE_BDC" "${FAULT_ROUNDS:-50}" "${FAULT_MIB:-256}" >"$log.faults" 2>&1 || status=1
grep -E "^round|violation|kills:" "$log.faults" | tail -60
rm -f "$log.faults"

echo "== fault injection: kill -9 the market mid chain catch-up (MARKET_KILL_ROUNDS), then compare with a fresh re-index"
bash scripts/faults/market_kills.sh "$PRE_BDC" "${MARKET_KILL_ROUNDS:-50}" >"$log.faults" 2>&1 || status=1
grep -E "^round|^chain|^compared|differ|kills:" "$log.faults" | tail -60
rm -f "$log.faults"

echo "== fault injection: kill -9 the provider or the buyer mid paid SQL job (JOB_KILL_ROUNDS)"
bash scripts/faults/paid_job_kills.sh "$PRE_BDC" "${JOB_KILL_ROUNDS:-20}" >"$log.faults" 2>&1 || status=1
grep -E "^round|violation|kills:|paid_job_kills" "$log.faults" | tail -60
rm -f "$log.faults"

echo "== fault injection: SIGSTOP the chain (anvil) mid paid fetch (CHAIN_STALL_ROUNDS, CHAIN_STALL_MIB)"
bash scripts/faults/chain_stalls.sh "$PRE_BDC" "${CHAIN_STALL_ROUNDS:-20}" "${CHAIN_STALL_MIB:-128}" >"$log.faults" 2>&1 || status=1
grep -E "^round|violation|note:|stalls:" "$log.faults" | tail -60
rm -f "$log.faults"

echo "== market load: wrk, mixed search/match"
bash scripts/apt_install.sh "the market load test" wrk >/dev/null 2>&1 || command -v wrk >/dev/null || {
  echo "wrk is not installed and could not be (apt-get install wrk)"; exit 1; }
# BDC_PROFILE=dev measures the debug binary the tests built (no 30-minute release build; slower)
PROFILE=${BDC_PROFILE:-release}
if [ "$PROFILE" = dev ]; then
  BDC="$CARGO_TARGET_DIR/debug/bdc"
  [ -x "$BDC" ] || cargo test --workspace $FEATURES --no-run >/dev/null
  # no test builds bdc-bench's binary: build it on its own
  [ -x "$CARGO_TARGET_DIR/debug/bdc-bench" ] || cargo build -p bdc-bench --bin bdc-bench
else
  cargo build --profile "$PROFILE" -p bdc --bin bdc $FEATURES
  cargo build --profile "$PROFILE" -p bdc-bench --bin bdc-bench
  BDC="$CARGO_TARGET_DIR/$PROFILE/bdc"
fi
BENCH="$(dirname "$BDC")/bdc-bench"
echo "binary: $BDC ($PROFILE profile)"
LISTINGS=${LOAD_LISTINGS:-100000}
SECS=${LOAD_SECS:-60}
CONNS=${LOAD_CONNS:-10}
DELAY=${LOAD_DELAY_MS:-50}
PORT=${LOAD_PORT:-18490}
"$BENCH" market --listings "$LISTINGS" --serve "127.0.0.1:$PORT" --hold $((SECS + 120)) >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do grep -q "^serving" "$log" && break; sleep 0.5; done
grep "^serving" "$log" || { cat "$log"; exit 1; }
rss() { awk '/VmRSS/ {print $2 " KiB"}' "/proc/$server/status"; }
echo "market RSS before: $(rss)"
BDC_DATASETS=$((LISTINGS / 5)) BDC_DELAY_MS=$DELAY \
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s scripts/load/market_mixed.lua "http://127.0.0.1:$PORT"
echo "market RSS after: $(rss)"
kill $server 2>/dev/null || true

# each fetcher keeps its verified store and its exported copy: 2 x N x MiB of disk
echo "== provider load: concurrent fetchers of one blob (LOAD_FETCHERS: fetchers:MiB ...)"
for run in ${LOAD_FETCHERS:-20:1024 100:32}; do
  bash scripts/load/provider_fetchers.sh "$BDC" "${run%%:*}" "${run##*:}" || status=1
done

echo "== paid load: concurrent paid buyers, one deal each (PAID_BUYERS, PAID_MIB)"
bash scripts/load/paid_buyers.sh "$BDC" "${PAID_BUYERS:-50}" "${PAID_MIB:-16}" || status=1

echo "== soak: a provider serving and selling under a steady mixed load (SOAK_SECS)"
bash scripts/load/soak.sh "$BDC" "${SOAK_SECS:-1800}" || status=1
exit $status
