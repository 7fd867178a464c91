"""Print an A/B table for the overhead benchmarks: runs and medians of a baseline and a
variant, and the variant/baseline ratio with each side's min/max spread.

    python3 tests/bench/ab_table.py LABEL UNIT "OFF RUNS" "ON RUNS"
"""
import statistics
import sys

label, unit, off_s, on_s = sys.argv[1:5]
off = [float(x) for x in off_s.split()]
on = [float(x) for x in on_s.split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"| {label} | runs ({unit}) | median |")
print("|---|---|---|")
print(f"| off | {', '.join(f'{x:.1f}' for x in off)} | {mo:.1f} |")
print(f"| on | {', '.join(f'{x:.1f}' for x in on)} | {mn:.1f} |")
print(f"\non/off = {mn / mo:.3f}; spread within off runs {min(off) / max(off):.3f}..1, "
      f"within on runs {min(on) / max(on):.3f}..1")
