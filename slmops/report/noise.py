"""`slmops noise`: how far runs of the same params land apart, so that `slmops report` can tell a change from it.

    slmops noise REV REV [REV ...] [--out reports/noise.json]

Each REV is a git revision or DVC experiment whose pipeline ran with the same params but its `seed` (e.g.
`dvc exp run -S seed=1`), or on another machine. Their shipped model's answers give each share (exact match,
schema-valid, JSON-valid, each field) and accuracy kept per run; the mean square difference over every pair of
runs is the training noise that `slmops report` adds to its paired test (slmops.report.paired). The file is kept
in git beside the metrics and read at the base revision.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmops.core.errors import InputError
from slmops.core.files import parse_json_object
from slmops.report.compare import changed_params, read_predictions, read_revision
from slmops.report.paired import TrainingNoise, measure_noise, shares_of

NOISE_FILE = "reports/noise.json"
UNSTABLE = 0.05  # exact match: two runs of a stable recipe land within a few points (300 records: SE ~1.7 pt)
FREE = ("seed", "gates.")  # what runs of one recipe may differ in: the seed, and gates (read by no stage)


def measure_runs(revs: list[str], task, repo: str | Path = ".") -> dict:
    """The noise.json document of runs `revs` (git revisions, DVC experiments, or "workspace"): {"runs": [{"rev",
    "seed", "hardware", "figures"}], "mean_square_difference": {figure: fraction²}, "rms_difference": {figure:
    fraction}}.

    Raises InputError for fewer than two runs, a run without the shipped model's answers, runs whose params differ
    in anything but `seed` (naming the key and both runs), or runs scored on different eval records."""
    if len(set(revs)) < 2:
        raise InputError("slmops noise: give at least two different runs of the same params (e.g. two seeds)")
    runs, first = [], None
    for rev in revs:
        at = None if rev == "workspace" else rev
        metrics, params, _ = read_revision(at, repo)
        predictions = read_predictions(at, repo)
        figures = shares_of(task, predictions)
        if not figures:
            raise InputError(f"slmops noise: {rev} has no answers of the shipped model (reports/predictions)")
        ids = sorted(str(r.get("id") or r["message"]) for r in predictions["quantized"])
        if first is None:
            first = (rev, params, ids)
        else:
            differ = [key for key, _, _ in changed_params(first[1], params) if not key.startswith(FREE)]
            if differ:
                raise InputError(
                    f"slmops noise: {rev} and {first[0]} differ in params {', '.join(differ)}: noise is measured "
                    "between runs of the same params (seed and gates aside)"
                )
            if ids != first[2]:
                raise InputError(f"slmops noise: {rev} and {first[0]} were scored on different eval records")
        hardware = metrics.get("hardware") or {}
        runs.append(
            {
                "rev": rev,
                "seed": params.get("seed"),
                "hardware": {key: hardware.get(key) for key in ("cpu", "cores", "gpu")},
                "figures": figures,
            }
        )
    noise = measure_noise([run["figures"] for run in runs])
    return {
        "runs": runs,
        "mean_square_difference": noise.mean_square_difference,
        "rms_difference": {name: noise.rms(name) for name in noise.mean_square_difference},
    }


def instability(document: dict) -> str | None:
    """A warning when runs differ so much that the recipe, not noise, is the matter: RMS exact-match difference above
    UNSTABLE. Names the pair furthest apart. None when the runs agree within it."""
    rms = document["rms_difference"].get("exact_match")
    if rms is None or rms <= UNSTABLE:
        return None
    runs = document["runs"]
    far = max(
        ((a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]),
        key=lambda pair: abs(pair[0]["figures"]["exact_match"] - pair[1]["figures"]["exact_match"]),
    )
    a, b = (run["figures"]["exact_match"] for run in far)
    return (
        f"runs of the same params differ by {rms * 100:.1f} pt of exact match (RMS; {far[0]['rev']} {a:.1%} against "
        f"{far[1]['rev']} {b:.1%}): a run that failed to learn the task is a failure of the recipe, not noise, and "
        f"with this file `slmops report` would let almost any regression pass"
    )


def read_noise(text: str | None, where: str) -> TrainingNoise | None:
    """TrainingNoise from noise.json's text (None: no file). Raises InputError naming the file for a document
    that is not measure_runs' shape."""
    if text is None:
        return None
    source = f"{NOISE_FILE} at {where}"
    document = parse_json_object(text, source)
    msd, runs = document.get("mean_square_difference"), document.get("runs")
    valid = isinstance(msd, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in msd.values()
    )
    if not valid or not isinstance(runs, list) or len(runs) < 2:
        raise InputError(
            f"{source}: expected `runs` (two or more) and `mean_square_difference` (figure: a number ≥ 0), "
            "as `slmops noise` writes"
        )
    return TrainingNoise(len(runs), {k: float(v) for k, v in msd.items()}, source)


def runs_table(document: dict) -> str:
    """Markdown: one row per run (seed, CPU, teacher and shipped exact match, accuracy kept), then the RMS
    difference between runs."""
    lines = [
        "| run | seed | CPU | teacher exact match | shipped exact match | accuracy kept |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for run in document["runs"]:
        f = run["figures"]
        teacher = f.get("teacher.exact_match")
        kept = f.get("accuracy_kept")
        lines.append(
            f"| `{run['rev']}` | {run['seed']} | {run['hardware'].get('cpu') or '?'} | "
            f"{'—' if teacher is None else f'{teacher:.1%}'} | {f['exact_match']:.1%} | "
            f"{'—' if kept is None else f'{kept:.1%}'} |"
        )
    rms = document["rms_difference"]
    kept_rms = f", accuracy kept {rms['accuracy_kept'] * 100:.1f} pt" if "accuracy_kept" in rms else ""
    lines += [
        "",
        f"RMS difference between two runs: exact match {rms['exact_match'] * 100:.1f} pt{kept_rms} "
        f"({len(document['runs'])} runs).",
    ]
    return "\n".join(lines) + "\n"


def write_noise(document: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
