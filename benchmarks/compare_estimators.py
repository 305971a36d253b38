"""Two ``frx analyze --two-stage`` runs of one model that differ only in stage 2's estimator, side by side.

    python benchmarks/compare_estimators.py A/analysis.json B/analysis.json

Prints, per attribute, each run's two-stage R_k and ceiling, and the Spearman correlation of the two
runs' two-stage R_k over every attribute both measured (the decoders are the same: same seed, same
model), and over the attributes both estimators can read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frx_plugin.two_stage.measures import spearman


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    runs = [json.loads(Path(p).read_text(encoding="utf-8"))["recovery"] for p in (args.first, args.second)]
    a, b = (run["attributes"] for run in runs)
    names = [n for n in a if "two_stage" in a[n] and "two_stage" in b.get(n, {})]
    print(f"| attribute | R two-stage, {runs[0]['estimator']} | ceiling | R two-stage, {runs[1]['estimator']} | ceiling | R direct |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        print(f"| {n} | {a[n]['two_stage']['value']:.3f} | {a[n]['real_images']:.2f} | {b[n]['two_stage']['value']:.3f} | "
              f"{b[n]['real_images']:.2f}{'' if b[n]['readable'] else ' (unreadable)'} | {a[n]['direct']['value']:.3f} |")
    both = [n for n in names if a[n]["readable"] and b[n]["readable"]]
    rho = spearman([a[n]["two_stage"]["value"] for n in names], [b[n]["two_stage"]["value"] for n in names])
    rho_readable = spearman([a[n]["two_stage"]["value"] for n in both], [b[n]["two_stage"]["value"] for n in both])
    print(f"\nSpearman of the two-stage R_k over {len(names)} attributes: {rho:.3f}; "
          f"over the {len(both)} both estimators read: {rho_readable:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
