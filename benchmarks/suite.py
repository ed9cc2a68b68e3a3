"""The transfer suite as a script: every direction and stress variant, the baselines, the
leave-one-task-out choice of method, and the Unassigned-rule figures (see screader_db.suite).

    python benchmarks/suite.py --out results/suite             # the table in the README
    python benchmarks/suite.py --hide-labels-only --out results/hidden
    python benchmarks/suite.py --hide-half-only --out results/half
    python benchmarks/suite.py --lineage-only --out results/lineage
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from screader_db.progress import SILENT
from screader_db.suite import (
    half_markdown,
    hidden_markdown,
    hide_each_label,
    hide_half,
    lineage_only,
    load_sources,
    run_suite,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-stress", action="store_true", help="directions only")
    parser.add_argument("--no-peers", action="store_true", help="leave out CellTypist and SingleR")
    parser.add_argument("--hide-labels", action="store_true", help="add the hide-each-label figures")
    parser.add_argument("--hide-labels-only", action="store_true", help="only the hide-each-label figures")
    parser.add_argument("--hide-half-only", action="store_true", help="only the figures with half the labels hidden at once")
    parser.add_argument("--lineage-only", action="store_true",
                        help="only the figures of an atlas of one lineage (Baron's endocrine types) queried with the whole tissue")
    args = parser.parse_args()
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.hide_labels_only:
        text = hidden_markdown(hide_each_label(load_sources(), reporter=SILENT))
    elif args.hide_half_only:
        text = half_markdown(hide_half(load_sources(), reporter=SILENT))
    elif args.lineage_only:
        text = half_markdown(lineage_only(load_sources(), reporter=SILENT))
    else:
        _, text = run_suite(stress=not args.no_stress, peers=not args.no_peers, hide_labels=args.hide_labels,
                            out=args.out)
    text += f"\n\n{time.perf_counter() - start:.0f} s in all\n"
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
