#!/usr/bin/env bash
# provider_fetchers.sh BDC N SIZE_MIB: one provider process serving one free raw blob of SIZE_MIB,
# N `bdc fetch` processes downloading it at once over loopback. Prints the provider's peak RSS
# (sampled every 0.2 s from /proc), its open file descriptors, the aggregate throughput, and the
# fetches that failed or whose output differs from the file (b3sum of each output).
set -euo pipefail
BDC=$1 N=$2 SIZE=$3
work=$(mktemp -d)
trap 'kill $serve 2>/dev/null || true; wait 2>/dev/null || true; cp "$work/serve.log" "${TMPDIR:-/tmp}/provider_fetchers.serve.log" 2>/dev/null; rm -rf "$work"' EXIT
head -c $((SIZE << 20)) /dev/urandom > "$work/blob.bin"
"$BDC" --quiet --data-dir "$work/p" provider publish "$work/blob.bin" --raw --free >/dev/null 2>"$work/publish.log" ||
  { cat "$work/publish.log"; exit 1; }
"$BDC" --data-dir "$work/p" provider serve --bind 127.0.0.1:0 >"$work/tickets" 2>"$work/serve.log" &
serve=$!
for _ in $(seq 1 200); do [ -s "$work/tickets" ] && break; sleep 0.1; done
ticket=$(cut -f2 "$work/tickets" | head -1)
[ -n "$ticket" ] || { cat "$work/serve.log"; exit 1; }
want=$("$BDC" --quiet --data-dir "$work/p" provider list | awk 'NR==1 {print $1}')
peak=0 fds=0
sample() { while kill -0 $serve 2>/dev/null; do
  r=$(awk '/VmRSS/ {print $2}' /proc/$serve/status 2>/dev/null || echo 0)
  f=$(ls /proc/$serve/fd 2>/dev/null | wc -l)
  echo "$r $f"; sleep 0.2; done; }
sample >"$work/samples" &
sampler=$!
t0=$(date +%s.%N)
pids=()
for i in $(seq 1 "$N"); do
  "$BDC" --quiet --data-dir "$work/f$i" fetch "$ticket" -o "$work/out$i" >/dev/null 2>"$work/fetch$i.log" &
  pids+=($!)
done
failed=0 i=0 first_err=""
for p in "${pids[@]}"; do
  i=$((i + 1))
  wait "$p" || { failed=$((failed + 1)); [ -n "$first_err" ] || first_err=$(tail -3 "$work/fetch$i.log"); }
done
t1=$(date +%s.%N)
kill $sampler 2>/dev/null || true
peak=$(sort -n "$work/samples" | tail -1 | cut -d' ' -f1)
fds=$(sort -n -k2 "$work/samples" | tail -1 | cut -d' ' -f2)
bad=0
for i in $(seq 1 "$N"); do
  out=$(find "$work/out$i" -type f 2>/dev/null | head -1 || true)
  [ -z "$out" ] || cmp -s "$out" "$work/blob.bin" || bad=$((bad + 1))
done
secs=$(echo "$t1 - $t0" | bc -l)
printf '| %3d fetchers x %5d MiB | provider peak RSS %4d MiB | peak fds %4d | %7.1f MiB/s aggregate | %5.1f s | failed %d | differing outputs %d |\n' \
  "$N" "$SIZE" $((peak / 1024)) "$fds" "$(echo "$N * $SIZE / $secs" | bc -l)" "$secs" "$failed" "$bad"
[ -z "$first_err" ] || echo "first failed fetch: $first_err"
[ "$failed" = 0 ] && [ "$bad" = 0 ]
