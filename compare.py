"""Compare training runs side by side: the settings that differ, the best epoch, the test scores
and each class's IoU, as a Markdown table and a CSV, and the validation curves on one plot.

    python compare.py eval/demo eval/demo-sgd                  # writes eval/compare/
    python compare.py eval/a eval/b eval/c --out eval/abc

Each RUN is a train.py run directory that evaluate.py has scored (python evaluate.py --run-dir
RUN writes its metrics.json there). Runs are compared only when they share one class table and
were scored on the same split. Writes compare.md (printed too), compare.csv and curves.png
(validation mean IoU and loss per epoch, one line per run) to --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli
from kit import compare


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (train.py --run-dir), each evaluated")
    p.add_argument("--out", default="eval/compare", metavar="DIR",
                   help=f"folder for {compare.MARKDOWN}, {compare.CSV} and {compare.CURVES} (default eval/compare)")
    cli.add_debug_flag(p)
    return p.parse_args(argv)


def main(args) -> compare.Comparison:
    result = compare.compare(args.runs, Path(args.out))
    print(result.markdown)
    print(f"wrote {', '.join(str(f) for f in result.files)}")
    return result


if __name__ == "__main__":
    cli.run(main, parse_args)
