"""Training runs side by side: the settings that differ, the best epoch, the scores and the
per-class IoU of each, as one table (Markdown and CSV), and their validation curves on one plot.

    from kit import compare
    result = compare.compare(["eval/demo", "eval/demo-sgd"], "eval/compare")
    print(result.markdown)

A run is a train.py run directory that evaluate.py has scored: config.json (the settings and
the class table), log.csv (one row per finished epoch) and metrics.json (evaluate.py's scores,
written into the run directory unless --out-dir sent it elsewhere). Runs are compared only when
they have the same class table and were scored on the same split: anything else is a
CompareError naming the runs, never a table whose rows mean different things.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kit import atomic
from kit import config
from kit import figures
from kit import tables
from kit.errors import KitError

MARKDOWN, CSV, CURVES = "compare.md", "compare.csv", "curves.png"
# Sections of the table, in order; the first column of the CSV.
SETTINGS, TRAINING, SCORES, PER_CLASS = "settings that differ", "training", "scores", "per-class IoU"
BEST_EPOCH = f"best epoch (by {config.MONITOR})"
SECONDS = "training seconds"
SCORE_KEYS = ("pixel_accuracy", "mean_accuracy", "mean_iou")
# What evaluate.py was asked (metrics.json), shown with the training settings when runs differ in it.
EVALUATION_KEYS = ("data_root", "resolution", "tta", "scales", "mode", "crop_size", "stride", "max_pixels",
                   "output_stride", "model")
# Run settings never shown: the run's own folder (the column names it) and the class table
# (the same in every compared run).
NOT_SETTINGS = ("run_dir", "classes")


class CompareError(KitError, ValueError):
    """Runs that cannot be compared as asked; the message names them and says what to do."""


@dataclass
class Run:
    """One run directory's files, as read."""

    path: Path
    name: str  # its column in the table
    config: dict  # config.json
    log: pd.DataFrame  # log.csv: one row per finished epoch
    metrics: dict  # metrics.json


@dataclass
class Comparison:
    """The table (rows: (section, item); columns: runs), its Markdown, and the files written."""

    table: pd.DataFrame
    markdown: str
    files: tuple[Path, ...]


def _names(paths: list[Path]) -> list[str]:
    """Column names: each run folder's name, or the path as given where two names collide."""
    names = [p.name or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def read_log(path: Path) -> pd.DataFrame:
    """train.py's log.csv, or a CompareError naming it: unreadable, empty, or without `epoch` and
    the monitored score."""
    try:
        log = pd.read_csv(path)
    except FileNotFoundError:
        raise CompareError(f"{path.parent} has no {path.name}: no epoch of it finished; train it first "
                           f"(python train.py --run-dir {path.parent})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CompareError(f"cannot read {path}: {err}") from None
    missing = [c for c in ("epoch", config.MONITOR) if c not in log.columns]
    if missing:
        raise CompareError(f"{path} has no column {missing[0]} (columns: {', '.join(map(str, log.columns))}); "
                           f"it is not a train.py log")
    if log[config.MONITOR].notna().sum() == 0:
        raise CompareError(f"{path} holds no finished epoch with a {config.MONITOR}")
    return log


def read_metrics(path: Path) -> dict:
    """evaluate.py's metrics.json (a JSON object), or a CompareError naming it."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CompareError(f"cannot read {path}: {err}; evaluate the run again "
                           f"(python evaluate.py --run-dir {path.parent})") from None
    missing = [k for k in (*SCORE_KEYS, "per_class_iou", "subset") if not isinstance(metrics, dict) or k not in metrics]
    if missing:
        raise CompareError(f"{path} is not evaluate.py's metrics.json (no {missing[0]}); evaluate the run again "
                           f"(python evaluate.py --run-dir {path.parent})")
    return metrics


def model_digest(path: str | Path) -> str | None:
    """SHA-256 of a model file (what evaluate.py records in metrics.json as model_sha256), None
    for a folder (a SavedModel) or a file that is gone."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def check_current(run: Run) -> None:
    """CompareError if the model metrics.json scored has changed since (training went on and saved a
    better best.keras): its scores would sit beside the new best epoch as if they were that model's."""
    recorded, model = run.metrics.get("model_sha256"), run.metrics.get("model")
    if not (recorded and model):
        return  # evaluated by an older version of the kit: nothing to check against
    # The path as evaluate.py was given it, or the file of that name in the run (compare.py run elsewhere).
    now = model_digest(model) or model_digest(run.path / Path(model).name)
    if now not in (None, recorded):
        raise CompareError(f"{run.path / config.RUN_METRICS} scores an earlier version of {model} (the run trained "
                           f"on after it was evaluated); evaluate it again (python evaluate.py --run-dir {run.path})")


def _describe_classes(run_config: dict) -> str:
    names = (run_config.get("classes") or {}).get("names", [])
    return f"{len(names)} classes: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Read and check every run: folders that are runs, one class table, every run evaluated on the
    same split. Each failure is a CompareError that names every run it concerns."""
    paths = [Path(p) for p in paths]
    seen = set()
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"no run directory {path}; give the run directories train.py wrote "
                               f"(--run-dir, e.g. eval/demo)")
        if path.resolve() in seen:
            raise CompareError(f"{path} is given twice")
        seen.add(path.resolve())
    configs = [config.load_run_config(p) for p in paths]
    # One class table: per-class rows and scores of different class lists cannot sit side by side.
    keys = [json.dumps(c.get("classes"), sort_keys=True) for c in configs]
    other = [(p, c) for p, c, key in zip(paths, configs, keys) if key != keys[0]]
    if other:
        # Same names in other colours or mask values are another table too: the masks read otherwise.
        described = "; ".join(f"{p}: {_describe_classes(c)}" for p, c in [(paths[0], configs[0]), *other])
        if all(_describe_classes(c) == _describe_classes(configs[0]) for _, c in other):
            described += "; the same names in other colours or mask values"
        raise CompareError(f"{', '.join(str(p) for p, _ in other)} use(s) another class table than {paths[0]} "
                           f"({described}); compare only runs trained on the same classes")
    missing = [p for p in paths if not (p / config.RUN_METRICS).is_file()]
    if missing:
        raise CompareError(f"{', '.join(map(str, missing))} has no {config.RUN_METRICS}: evaluate it first: "
                           + "; ".join(f"python evaluate.py --run-dir {p}" for p in missing))
    runs = [Run(p, name, c, read_log(p / config.RUN_LOG), read_metrics(p / config.RUN_METRICS))
            for p, name, c in zip(paths, _names(paths), configs)]
    names = list((configs[0].get("classes") or {}).get("names", []))
    for run in runs:
        if names and list(run.metrics["per_class_iou"]) != names:
            raise CompareError(f"{run.path / config.RUN_METRICS} scores other classes than its config.json; evaluate "
                               f"it again (python evaluate.py --run-dir {run.path})")
    for run in runs:
        check_current(run)
    subsets = {run.name: run.metrics["subset"] for run in runs}
    if len(set(subsets.values())) > 1:
        scored = ", ".join(f"{name}: {subset}" for name, subset in subsets.items())
        raise CompareError(f"the runs were scored on different splits ({scored}); evaluate each on the same one, "
                           f"e.g. python evaluate.py --run-dir RUN --subset test")
    return runs


def _show(value) -> str:
    """A setting as table text: lists joined by commas (long ones cut), None as none."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        text = ", ".join(_show(v) for v in value)
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _flatten(values: dict, prefix: str = "") -> dict:
    """{"splits": {"val": {"count": 3}}} -> {"splits.val.count": 3}: nested records become rows."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _settings(run: Run) -> dict:
    """The run's settings (config.json, nested records flattened) and what evaluate.py was asked."""
    settings = _flatten({k: v for k, v in run.config.items() if k not in NOT_SETTINGS})
    evaluation = {k: run.metrics[k] for k in EVALUATION_KEYS if k in run.metrics}
    if evaluation.get("model"):  # the file scored, relative to its run where it lies inside it
        model = Path(evaluation["model"]).resolve()
        if model.is_relative_to(run.path.resolve()):
            evaluation["model"] = str(model.relative_to(run.path.resolve()))
    settings.update({f"evaluate {k}": v for k, v in evaluation.items()})
    return settings


def table(runs: list[Run]) -> pd.DataFrame:
    """Rows (section, item), one column per run: the settings that differ, the training summary,
    the scores and each class's IoU. Numbers stay numbers (the CSV keeps full precision)."""
    columns = [run.name for run in runs]
    rows: dict[tuple[str, str], list] = {}
    settings = [_settings(run) for run in runs]
    for key in dict.fromkeys(k for s in settings for k in s):  # every key, first-seen order
        shown = [_show(s[key]) if key in s else "(not recorded)" for s in settings]
        if len(set(shown)) > 1:
            rows[(SETTINGS, key)] = shown
    best = [run.log.loc[run.log[config.MONITOR].idxmax()] for run in runs]  # first epoch of the highest score
    rows[(TRAINING, BEST_EPOCH)] = [int(b["epoch"]) for b in best]
    rows[(TRAINING, f"best {config.MONITOR}")] = [float(b[config.MONITOR]) for b in best]
    rows[(TRAINING, "val_loss at the best epoch")] = [float(b["val_loss"]) if "val_loss" in b else None
                                                     for b in best]
    rows[(TRAINING, "epochs trained")] = [int(run.log["epoch"].max()) for run in runs]
    rows[(TRAINING, SECONDS)] = [float(run.log["seconds"].sum()) if "seconds" in run.log else None for run in runs]
    subset = runs[0].metrics["subset"]
    rows[(SCORES, "subset")] = [subset] * len(runs)
    rows[(SCORES, "images")] = [run.metrics.get("num_images") for run in runs]
    for key in SCORE_KEYS:
        rows[(SCORES, key)] = [float(run.metrics[key]) for run in runs]
    for name in runs[0].metrics["per_class_iou"]:
        rows[(PER_CLASS, name)] = [run.metrics["per_class_iou"][name] for run in runs]
    index = pd.MultiIndex.from_tuples(list(rows), names=["section", "item"])
    return pd.DataFrame(list(rows.values()), index=index, columns=columns, dtype=object)


def _section_markdown(section: pd.DataFrame, bold: tuple[str, ...] = ()) -> str:
    """One section as a Markdown table: the rows named in `bold` get their highest value in bold
    (where the runs differ); sections of numbers are right-aligned; seconds are whole."""
    shown = {}  # item -> the runs' texts
    for item, row in section.iterrows():
        texts = [tables.cell(v, ".0f" if item == SECONDS else ".4f") for v in row]
        numbers = pd.to_numeric(row, errors="coerce")  # NaN where not a number (or n/a)
        if item in bold and len(row) > 1 and numbers.nunique() > 1:
            texts = [f"**{t}**" if n == numbers.max() else t for t, n in zip(texts, numbers)]
        shown[item] = texts
    values = section.apply(pd.to_numeric, errors="coerce")
    numeric = bool(values.notna().any(axis=None)) and bool((values.notna() | section.isna()).all(axis=None))
    return tables.markdown(pd.DataFrame.from_dict(shown, orient="index", columns=section.columns), right=numeric)


def to_markdown(frame: pd.DataFrame) -> str:
    """The comparison as Markdown: one table per section, under its heading. Classes with no IoU
    in any run are left out of the per-class table (the CSV keeps every class)."""
    parts = [f"# {len(frame.columns)} runs compared: {', '.join(map(str, frame.columns))}\n"]
    sections = frame.index.get_level_values("section")
    if SETTINGS in sections:
        parts.append("## Settings that differ\n\n" + _section_markdown(frame.xs(SETTINGS, level="section")))
    else:
        parts.append("## Settings that differ\n\nnone: the runs were trained and evaluated with the same settings\n")
    parts.append("## Training\n\n" + _section_markdown(frame.xs(TRAINING, level="section")))
    scores = frame.xs(SCORES, level="section")
    parts.append(f"## Scores on the {scores.loc['subset'].iloc[0]} split\n\n"
                 + _section_markdown(scores.drop(index="subset"), bold=SCORE_KEYS))
    per_class = frame.xs(PER_CLASS, level="section")
    scored = per_class[per_class.notna().any(axis=1)]
    absent = len(per_class) - len(scored)
    note = (f"; {absent} of {len(per_class)} classes are in no run's labels or predictions and are left out"
            if absent else "")
    parts.append(f"## Per-class IoU\n\nn/a: the class is in neither the labels nor the predictions of that run"
                 f"{note}.\n\n" + _section_markdown(scored, bold=tuple(scored.index)))
    return "\n".join(parts)


def compare(paths: list[str | Path], out: str | Path) -> Comparison:
    """Compare the runs at `paths`: write compare.md, compare.csv and curves.png to `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file; give a folder for {MARKDOWN}, {CSV} and {CURVES}")
    runs = load_runs(paths)
    frame = table(runs)
    text = to_markdown(frame)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / MARKDOWN, text)
    tables.write_csv(frame, out / CSV)
    best = dict(zip(frame.columns, frame.loc[(TRAINING, BEST_EPOCH)]))
    figures.run_curves({run.name: run.log for run in runs}, out / CURVES, best)
    return Comparison(frame, text, (out / MARKDOWN, out / CSV, out / CURVES))
