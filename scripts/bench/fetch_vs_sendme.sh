#!/usr/bin/env bash
# fetch_vs_sendme.sh BDC SENDME [MIB] [ROUNDS]: a verified fetch end to end (dial -> verified ->
# file in the output dir), bdc beside sendme, over loopback inside a private network namespace
# (`unshare -n`: nothing leaves the machine, and sendme's relay and DNS lookups fail at once).
#
# One file of MIB MiB (random bytes) is sent by `sendme send` and served by `bdc provider serve`
# (published raw, in place). Each round runs, in an order that rotates every round:
#   sendme receive <ticket>              (into an empty dir; sendme moves the file out of its
#                                         temp store)
#   bdc fetch <ticket> -o out            (the default: copied out of the fetcher's store)
#   bdc fetch <ticket> -o out --move     (moved out of a staging store)
# with `sync` before each, every output compared with the source. Prints each round and a table
# of medians and ranges, and the paired ratio (sendme time / bdc time, per round).
set -euo pipefail
if [ -z "${BDC_IN_NETNS:-}" ]; then
  exec unshare -n env BDC_IN_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
BDC=$(realpath "$1") SENDME=$(realpath "$2") MIB=${3:-1024} ROUNDS=${4:-5}
W=$(mktemp -d -t bdc-vs-sendme.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/src" "$W/send"
head -c $((MIB << 20)) /dev/urandom > "$W/src/data.bin"

(cd "$W/send" && exec "$SENDME" send "$W/src/data.bin" --relay disabled --ticket-type addresses --no-progress) \
  > "$W/sendme.out" 2>&1 &
PIDS+=($!)
"$BDC" --quiet --data-dir "$W/p" provider publish "$W/src/data.bin" --raw --free --in-place > /dev/null
"$BDC" --data-dir "$W/p" provider serve --bind 127.0.0.1:0 > "$W/serve.out" 2> "$W/serve.err" &
PIDS+=($!)
ST="" BT=""
for _ in $(seq 1 600); do
  ST=$(grep -o 'blob[a-z0-9]\{20,\}' "$W/sendme.out" | head -n1 || true)
  BT=$(cut -f2 "$W/serve.out" 2>/dev/null | grep -o '^blob[a-z0-9]*' | head -n1 || true)
  [ -n "$ST" ] && [ -n "$BT" ] && break
  sleep 0.1
done
[ -n "$ST" ] || { echo "sendme printed no ticket:"; cat "$W/sendme.out"; exit 1; }
[ -n "$BT" ] || { echo "bdc serve printed no ticket:"; cat "$W/serve.err"; exit 1; }

now() { date +%s.%N; }
run() { # run KIND ROUND: seconds of one fetch; the output checked against the source
  local kind=$1 r=$2 d="$W/r$2-$1" t0 t1 out
  mkdir -p "$d"
  sync
  t0=$(now)
  case $kind in
    sendme) (cd "$d" && "$SENDME" receive "$ST" --relay disabled --no-progress > /dev/null 2>&1); out="$d/data.bin" ;;
    bdc) "$BDC" --quiet --data-dir "$d/dir" fetch "$BT" -o "$d/out" --name data.bin > /dev/null 2>> "$W/bdc.err"; out="$d/out/data.bin" ;;
    move) "$BDC" --quiet --data-dir "$d/dir" fetch "$BT" -o "$d/out" --name data.bin --move > /dev/null 2>> "$W/bdc.err"; out="$d/out/data.bin" ;;
  esac
  t1=$(now)
  cmp -s "$out" "$W/src/data.bin" || { echo "round $r: $kind output differs" >&2; exit 1; }
  rm -rf "$d"
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
kinds=(sendme bdc move)
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for i in 0 1 2; do
    k=${kinds[$(((i + r) % 3))]}
    secs=$(run "$k" "$r")
    echo "$k $r $secs" >> "$W/times"
    line+=" $k $secs s"
  done
  echo "$line"
done
python3 - "$MIB" "$ROUNDS" "$W/times" <<'PY'
import sys, statistics
mib, rounds = int(sys.argv[1]), int(sys.argv[2])
t = {}
for line in open(sys.argv[3]):
    kind, r, secs = line.split()
    t.setdefault(kind, {})[int(r)] = float(secs)
def row(label, xs):
    m = statistics.median(xs)
    print(f"| {label:<44} | {m:7.2f} | {min(xs):6.2f}–{max(xs):<6.2f} | {mib / m:8.0f} |")
print(f"\n{mib} MiB, {rounds} rounds, loopback in a private network namespace\n")
print(f"| {'fetch, end to end':<44} | {'median s':>7} | {'range s':>13} | {'MiB/s':>8} |")
print(f"|{'-'*46}|{'-'*9}:|{'-'*15}:|{'-'*10}:|")
row("sendme receive (peer)", list(t["sendme"].values()))
row("bdc fetch (copy out of the store)", list(t["bdc"].values()))
row("bdc fetch --move (out of a staging store)", list(t["move"].values()))
for k, label in (("bdc", "bdc fetch"), ("move", "bdc fetch --move")):
    ratios = [t["sendme"][r] / t[k][r] for r in t[k]]
    print(f"\n{label} vs sendme receive, per round (sendme s / bdc s): "
          + ", ".join(f"{x:.2f}x" for x in ratios) + f"; median {statistics.median(ratios):.2f}x")
PY
