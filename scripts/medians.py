"""Medians of the RESULT lines in a file, per workload and parallelism, with the ratio of
each workload to its `<name>-baseline` at parallelism 1 when that was run too. Used by
scripts/bench.sh and scripts/k1-bench.sh:  python3 scripts/medians.py RESULTS_FILE"""
import re
import statistics
import sys

rates = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT"):
        continue
    m = dict(re.findall(r"(\w+)=(\S+)", line))
    rates.setdefault((m["workload"], int(m["p"])), []).append(float(m["rate"]))
med = {k: statistics.median(v) for k, v in rates.items()}
for (w, p), r in sorted(med.items()):
    base = med.get((w.split("-")[0] + "-baseline", 1))
    ratio = f"  {r / base:.2f}x the baseline loop" if base and not w.endswith("baseline") else ""
    print(f"  {w:12} p={p}  {r / 1e6:8.3f} M/s over {len(rates[(w, p)])} runs{ratio}")
if ("w3", 2) in med and ("w2", 2) in med:
    print(f"  W3/W2 at p=2 (checkpoint overhead): {med[('w3', 2)] / med[('w2', 2)]:.3f}")
