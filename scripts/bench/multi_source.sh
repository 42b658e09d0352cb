#!/usr/bin/env bash
# multi_source.sh BDC [MIB] [RATES] [ROUNDS]: one download from 1 provider against the same
# download from 3 providers at once (`bdc fetch t1 t2 t3 --sources 3`), each provider behind a
# link shaped with `tc tbf` to RATES (one rate for all, default 200mbit, or three comma
# separated, e.g. 200mbit,200mbit,50mbit; the single-source fetch asks the first), in network
# namespaces this script creates
# (a fetcher namespace joined to three provider namespaces by veth pairs; nothing leaves the
# machine). Needs root (ip netns, tc).
#
# Each provider publishes the same MIB MiB file (random bytes) raw, in place, and serves it free.
# Each round runs `bdc fetch <t1> <t2> <t3> --sources 3`, the same with provider 2 killed
# (kill -9) at 30 % of that round's time, and `bdc fetch <t1>`, into empty data dirs, with every
# output compared with the source. Prints each round, a table of medians and ranges, and the
# paired ratios.
set -euo pipefail
BDC=$(realpath "$1") MIB=${2:-256} RATE=${3:-200mbit} ROUNDS=${4:-3}
IFS=, read -r -a RATES <<< "$RATE"
while [ ${#RATES[@]} -lt 3 ]; do RATES+=("${RATES[0]}"); done
W=$(mktemp -d -t bdc-multi.XXXXXX)
NS=bdcms$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # a fetch a kill round started in the background (in a subshell) has the work dir in its args
  pkill -f -- "$W/" 2>/dev/null || true
  wait 2>/dev/null || true
  for k in f 1 2 3; do ip netns del "$NS-$k" 2>/dev/null || true; done
  # a veth made before its end moved into a namespace
  for k in 1 2 3; do ip link del "$NS-f$k" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
nsx() { local ns=$1; shift; ip netns exec "$NS-$ns" "$@"; }

ip netns add "$NS-f"
nsx f ip link set lo up
for k in 1 2 3; do
  ip netns add "$NS-$k"
  nsx "$k" ip link set lo up
  ip link add "$NS-f$k" type veth peer name "$NS-p$k"
  ip link set "$NS-f$k" netns "$NS-f"
  ip link set "$NS-p$k" netns "$NS-$k"
  nsx f ip addr add "10.77.$k.1/24" dev "$NS-f$k"
  nsx f ip link set "$NS-f$k" up
  nsx "$k" ip addr add "10.77.$k.2/24" dev "$NS-p$k"
  nsx "$k" ip link set "$NS-p$k" up
  # the provider's upload: what a fetch waits on
  nsx "$k" tc qdisc add dev "$NS-p$k" root tbf rate "${RATES[$((k - 1))]}" burst 256kb latency 100ms
done

mkdir -p "$W/src"
head -c $((MIB << 20)) /dev/urandom > "$W/src/data.bin"
TICKETS=()
SERVE=()
serve() { # serve K: (re)start provider K on a fixed port (its ticket stays valid), wait for it
  local k=$1 T=""
  : > "$W/serve$k.out"
  # not through nsx: $! must be the provider itself (ip netns exec execs it), so a kill reaches it
  ip netns exec "$NS-$k" "$BDC" --data-dir "$W/p$k" provider serve --bind "10.77.$k.2:4433" \
    > "$W/serve$k.out" 2> "$W/serve$k.err" &
  SERVE[$k]=$!
  PIDS+=($!)
  for _ in $(seq 1 300); do
    T=$(cut -f2 "$W/serve$k.out" 2>/dev/null | grep -o '^blob[a-z0-9]*' | head -n1 || true)
    [ -n "$T" ] && break
    sleep 0.1
  done
  [ -n "$T" ] || { echo "provider $k printed no ticket:"; cat "$W/serve$k.err"; exit 1; }
  TICKETS[$((k - 1))]=$T
}
for k in 1 2 3; do
  "$BDC" --quiet --data-dir "$W/p$k" provider publish "$W/src/data.bin" --raw --free --in-place > /dev/null
  serve "$k"
done

now() { date +%s.%N; }
run() { # run KIND ROUND: seconds of one fetch; the output checked against the source
  local kind=$1 r=$2 d="$W/r$2-$1" t0 t1
  mkdir -p "$d"
  sync
  t0=$(now)
  case $kind in
    one) nsx f "$BDC" --quiet --data-dir "$d/dir" fetch "${TICKETS[0]}" -o "$d/out" --name data.bin > /dev/null 2>> "$W/fetch.err" ;;
    three) nsx f "$BDC" --quiet --data-dir "$d/dir" fetch "${TICKETS[@]}" --sources 3 -o "$d/out" --name data.bin --json \
      > "$d/report.json" 2>> "$W/fetch.err" ;;
    kill)
      ip netns exec "$NS-f" "$BDC" --quiet --data-dir "$d/dir" fetch "${TICKETS[@]}" --sources 3 -o "$d/out" --name data.bin --json \
        > "$d/report.json" 2>> "$W/fetch.err" &
      local f=$!
      sleep "$(python3 -c "print(0.3 * $LAST_THREE)")"
      kill -9 "${SERVE[2]}"
      wait "$f"
      wait "${SERVE[2]}" 2> /dev/null || true
      ;;
  esac
  t1=$(now)
  cmp -s "$d/out/data.bin" "$W/src/data.bin" || { echo "round $r: $kind output differs" >&2; cat "$W/fetch.err" >&2; exit 1; }
  if [ "$kind" != one ]; then
    python3 -c "import json,sys; print(' '.join(f\"{s['bytes']>>20}MiB/{s['pieces']}\" for s in json.load(open(sys.argv[1]))['sources']))" \
      "$d/report.json" >> "$W/split"
  fi
  rm -rf "$d"
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for k in three kill one; do
    secs=$(run "$k" "$r")
    echo "$k $r $secs" >> "$W/times"
    line+=" $k $secs s"
    case $k in
      three) LAST_THREE=$secs; split3=$(tail -n1 "$W/split") ;;
      kill) splitk=$(tail -n1 "$W/split"); serve 2 ;;
    esac
  done
  echo "$line (per provider, MiB/pieces: 3 sources $split3; provider 2 killed $splitk)"
done
python3 - "$MIB" "$ROUNDS" "$RATE" "$W/times" <<'PY'
import sys, statistics
mib, rounds, rate = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = {}
for line in open(sys.argv[4]):
    kind, r, secs = line.split()
    t.setdefault(kind, {})[int(r)] = float(secs)
print(f"\n{mib} MiB, {rounds} rounds, the providers' uploads shaped to {rate} (tc tbf, veth, network namespaces)\n")
print("| fetch                                  | median s | range s       | MiB/s |")
print("|----------------------------------------|---------:|---------------|------:|")
for kind, label in (("one", "bdc fetch <t1>"), ("three", "bdc fetch <t1> <t2> <t3> --sources 3"),
                    ("kill", "  the same, provider 2 killed at 30 %")):
    xs = list(t[kind].values())
    m = statistics.median(xs)
    print(f"| {label:<38} | {m:8.2f} | {min(xs):5.2f}–{max(xs):<6.2f} | {mib / m:5.0f} |")
def ratio(a, b, what):
    rs = [t[a][r] / t[b][r] for r in t[a]]
    print(f"{what} (paired, per round): median {statistics.median(rs):.2f}x (range {min(rs):.2f}–{max(rs):.2f})")
print()
ratio("one", "three", "speed-up with 3 sources")
ratio("kill", "three", "time with provider 2 killed at 30 %, over the time without")
print(f"3 sources: {8 * mib * 1.048576 / statistics.median(t['three'].values()):.0f} Mbit/s aggregate")
PY
