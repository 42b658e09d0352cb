#!/usr/bin/env python3
"""Fails when the crate graph breaks the layering of docs/ARCHITECTURE.md.

Ground floor: bdc-core, bdc-contracts, bdc-market-api (the market's wire types and client).
Beside each other, never depending on one another:
bdc-provider, bdc-fetcher, bdc-market. On top: the bdc binary.
"""
import json
import subprocess
import sys

GROUND = {"bdc-core", "bdc-contracts", "bdc-market-api"}
MIDDLE = {"bdc-provider", "bdc-fetcher", "bdc-market"}

meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"]))
bad = []
for pkg in meta["packages"]:
    name = pkg["name"]
    deps = {d["name"] for d in pkg["dependencies"] if d["name"].startswith("bdc")}
    if name in GROUND:
        above = deps - GROUND
        if above:
            bad.append(f"{name} (ground floor) depends on {sorted(above)}")
    elif name in MIDDLE:
        side = deps & (MIDDLE - {name})
        if side:
            bad.append(f"{name} depends on its sibling(s) {sorted(side)}")
        if "bdc" in deps:
            bad.append(f"{name} depends on the bdc binary")
if bad:
    print("crate layering violated:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("crate layering ok")
