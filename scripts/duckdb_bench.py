#!/usr/bin/env python3
"""DuckDB side of `bdc-bench compute`: runs each query on a Parquet file, prints seconds as JSON.

usage: duckdb_bench.py FILE.parquet ROUNDS THREADS < queries.json   ({"name": "SQL", ...})
"""
import json
import sys
import time

import duckdb

path, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
queries = json.load(sys.stdin)
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
quoted = path.replace("'", "''")
con.execute(f"CREATE VIEW trades AS SELECT * FROM read_parquet('{quoted}')")
out = {"version": duckdb.__version__, "secs": {}}
for name, sql in queries.items():
    con.execute(sql).fetchall()  # warm the file cache and the plan once, as the other engines are
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    out["secs"][name] = times
print(json.dumps(out))
