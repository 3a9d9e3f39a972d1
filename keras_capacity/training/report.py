"""The capacity report of a finished training run.

    keras-capacity-report RUN_DIR        (or python -m keras_capacity.training.report RUN_DIR)

Reads the run's ``flags.txt``, ``summary.json`` and ``model_final.keras``,
measures the bounds' quantities on its training data, and writes into
``RUN_DIR``: ``report.md``, ``report.json`` and the figures
``constraints.png`` (per-layer Lipschitz constant and distance against
their bounds), ``bounds.png`` (every bound as a function of the margin
``gamma``, log scale) and ``margins.png`` (train and test margins). It adds
certified robustness, which the reference does not offer: with the network's
Lipschitz bound ``L``, a test point with margin ``m > 0`` keeps its class
within the l2 radius ``m / (sqrt(2) L)``. ``train_main.py`` runs it at the
end of every run; ``report.md`` is written last, so a run whose report was
interrupted gets it written when the same command runs again. Matplotlib is
imported here only, never by the library.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from keras_capacity import bounds, measure
from keras_capacity.training import runs

# What the report reads from summary.json.
SUMMARY_KEYS = ("flags", "layers", "network_lipschitz", "train_accuracy", "test_accuracy",
                "all_constraints_hold")

RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
MARGIN_RANGE = tuple(np.geomspace(0.1, 100, 25))


def certified_accuracy(margins, lipschitz, radii=RADII):
    """``{radius: fraction of points whose certified radius m/(sqrt(2) L)
    is at least it}``; a misclassified point (``m <= 0``) is never certified."""
    margins = np.asarray(margins, np.float64)
    radius = np.where(margins > 0, margins / (math.sqrt(2) * lipschitz), -1.0)
    return {float(r): float(np.mean(radius >= r)) if len(margins) else 0.0 for r in radii}


def _number(value):
    """A bound or value; ``None`` (how JSON stores ``inf``) is ``inf``."""
    return "inf" if value is None or value == math.inf else f"{value:.4g}"


def _holds(row):
    """``(Lipschitz, distance)`` each ``"yes"``, ``"NO"`` or ``"-"`` (no constraint)."""
    status = measure.constraint_status(row["lipschitz"], row["lip_constraint"],
                                       row["distance"], row["dist_constraint"])
    return tuple("-" if ok is None else ("yes" if ok else "NO") for ok in status)


def _figures(run_dir, rows, curves, train_margins, test_margins):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for axis, value, bound, title in ((axes[0], "lipschitz", "lip_constraint", "Lipschitz constant"),
                                      (axes[1], "distance", "dist_constraint", "distance to K0")):
        positions = np.arange(len(rows))
        axis.bar(positions, [r[value] or 0.0 for r in rows], label="actual")
        limits = [r[bound] if r[bound] not in (None, math.inf) else np.nan for r in rows]
        axis.scatter(positions, limits, color="red", marker="_", s=300, label="constraint")
        axis.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(run_dir, "constraints.png"), dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 5))
    for name, values in curves.items():
        finite = [v if 0 < v < math.inf else np.nan for v in values]
        axis.plot(MARGIN_RANGE, finite, label=name, linewidth=2.5 if name.startswith("ours") else 1)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("margin gamma")
    axis.set_ylabel("bound on the Rademacher complexity")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(run_dir, "bounds.png"), dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist([train_margins, test_margins], bins=40, label=["train", "test"])
    axis.set_xlabel("margin v_y - max_{i != y} v_i")
    axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(run_dir, "margins.png"), dpi=100)
    plt.close(figure)


def _markdown(summary, rows, values, quantities, certified):
    lines = ["# Capacity report", "",
             f"train accuracy {summary['train_accuracy']:.4f}, test accuracy "
             f"{summary['test_accuracy']:.4f}, network Lipschitz bound "
             f"{summary['network_lipschitz']:.4g}, every constraint holds: "
             f"{'yes' if summary['all_constraints_hold'] else 'NO'}", "",
             "## Layers", "",
             "| layer | kind | Lipschitz bound | Lipschitz | holds | distance bound | distance |"
             " holds | parameters |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lip_holds, dist_holds = _holds(r)
        lines.append(f"| {r['name']} | {r['kind']} | {_number(r['lip_constraint'])} | "
                     f"{_number(r['lipschitz'])} | {lip_holds} | "
                     f"{_number(r['dist_constraint'])} | "
                     f"{'-' if r['distance'] is None else _number(r['distance'])} | "
                     f"{dist_holds} | {r['params']} |")
    lines += ["", f"## Bounds (at the smallest training margin gamma = {quantities.margin:.4g})", "",
              "| bound | value |", "|---|---|"]
    lines += [f"| {name} | {_number(value)} |" for name, value in values.items()]
    lines += ["", f"Driven by: n = {quantities.n}, ||X|| = {quantities.data_norm:.4g}, "
              f"prod s_i = {np.prod(quantities.lipschitz):.4g}, sum of (2,1) distances = "
              f"{sum(quantities.dist21):.4g}, W = {max(quantities.params)}.", "",
              "## Certified robustness (l2)", "", "| radius | certified test accuracy |",
              "|---|---|"]
    lines += [f"| {radius:g} | {share:.4f} |" for radius, share in certified.items()]
    lines += ["", "![constraints](constraints.png)", "![bounds](bounds.png)",
              "![margins](margins.png)", ""]
    return "\n".join(lines)


def _load_summary(run_dir):
    summary = runs.read_summary(run_dir)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise runs.RunError(f"{os.path.join(run_dir, runs.SUMMARY_FILE)} lacks {missing}; is it "
                            "the summary of a finished run of train_main.py?")
    return summary


def _load_final_model(run_dir):
    import keras

    path = os.path.join(run_dir, runs.FINAL_MODEL)
    if not os.path.exists(path):
        raise runs.RunError(f"{path} is missing: the report measures the trained model.")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001  any unreadable file
        raise runs.RunError(f"{path} is damaged ({type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); "
                            "the report needs the trained model.") from None


def _load_data(summary):
    from keras_capacity.training import data as datasets

    flags = summary["flags"]
    try:
        return datasets.load(flags["dataset"], flags.get("data_dir") or None, flags["bs"],
                             flags["limit_to"], flags["rand"], False, flags["seed"])
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise runs.RunError(f"the run's data cannot be loaded: {error}") from None


def write_report(run_dir, model=None, data=None):
    """Writes the report of the finished run in ``run_dir``; ``model`` and
    ``data`` (a :class:`keras_capacity.training.data.Data`) default to the
    run's final model and the data its flags name. Returns the report's
    dict; a missing or damaged file is a
    :class:`~keras_capacity.training.runs.RunError`."""
    summary = _load_summary(run_dir)
    model = _load_final_model(run_dir) if model is None else model
    data = _load_data(summary) if data is None else data
    rows = summary["layers"]
    quantities = bounds.measure_quantities(model, data.train, num_classes=data.num_classes)
    values = bounds.all_bounds(quantities)
    curves = bounds.bounds_over_margins(quantities, MARGIN_RANGE)
    train_margins = measure.margins(model, data.train)
    test_margins = measure.margins(model, data.test)
    certified = certified_accuracy(test_margins, summary["network_lipschitz"])
    report = {
        "layers": rows,
        "bounds": {k: (None if not math.isfinite(v) else v) for k, v in values.items()},
        "quantities": {k: v for k, v in quantities.__dict__.items()},
        "certified_accuracy": {str(k): v for k, v in certified.items()},
    }
    _figures(run_dir, rows, curves, train_margins, test_margins)
    runs.write_atomic(os.path.join(run_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    # Last: its presence marks a complete report.
    runs.write_atomic(os.path.join(run_dir, runs.REPORT_FILE),
                      _markdown(summary, rows, values, quantities, certified))
    return report


def main(argv=None):
    """``keras-capacity-report RUN_DIR``: one-line errors, exit status 2."""
    parser = argparse.ArgumentParser(
        prog="keras-capacity-report",
        description="Write the capacity report (report.md, report.json, figures) of a "
                    "finished run of train_main.py into its run directory.")
    parser.add_argument("run_dir", help="the run directory (with summary.json and "
                                        "model_final.keras)")
    arguments = parser.parse_args(argv)
    from keras_capacity.training.cli import quiet_tensorflow

    quiet_tensorflow()
    try:
        write_report(arguments.run_dir)
    except runs.RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(arguments.run_dir, runs.REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
