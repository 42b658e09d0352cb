#!/usr/bin/env bash
# Runs the given test command, keeps its output, and closes with one total line over all of
# cargo's "test result:" lines, so the run ends with what it counted.
set -uo pipefail
log="$(mktemp)"
"$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
  } END { print p + 0, f + 0 }' "$log")
rm -f "$log"
echo "tests: ${passed} passed, ${failed} failed"
if [ "$passed" -eq 0 ] && [ "$rc" -eq 0 ]; then echo "no test ran" >&2; exit 1; fi
exit "$rc"
