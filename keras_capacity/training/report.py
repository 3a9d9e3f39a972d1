"""The capacity report of a finished training run.

    keras-capacity-report RUN_DIR [--gamma q10]
    python -m keras_capacity.training.report RUN_DIR

Reads the run's ``summary.json`` and ``model_final.keras``, measures the
bounds' quantities on its training data, and writes into ``RUN_DIR``:

* ``report.md``, which leads with what the bounds say about the test error:
  for each of the twelve bounds, at its best margin, "with probability
  0.95 the test error is at most X" (:func:`keras_capacity.bounds.error_bound`),
  *vacuous* when ``X >= 1``, beside the measured test error and the
  quantities that drive the bound; then the layers, the complexity bounds at
  a chosen margin (``--gamma``: a value, or ``qP``, the ``P``-th percentile
  of the training margins; default ``q10``), and certified robustness;
* ``report.json`` with the same numbers;
* ``bounds.png`` (every complexity bound against the margin, and every
  test-error bound against the margin with the measured test error),
  ``margins.png`` (train and test margin densities) and ``constraints.png``
  (each layer's Lipschitz constant and distance against their bounds).

Certified robustness, which the reference does not offer: with the
network's Lipschitz bound ``L``, a test point with margin ``m > 0`` keeps
its class within the l2 radius ``m / (sqrt(2) L)``. ``train_main.py`` runs
the report at the end of every run; ``report.md`` is written last, so a run
whose report was interrupted gets it when the same command runs again.
Matplotlib is imported here only, never by the library.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from keras_capacity import bounds, network
from keras_capacity.training import runs

# What the report reads from summary.json.
SUMMARY_KEYS = (
    "flags",
    "layers",
    "network_lipschitz",
    "train_accuracy",
    "test_accuracy",
    "all_constraints_hold",
)
RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_GAMMA = "q10"
# The bounds' sources, as the paper's Table 1 names them.
SOURCES = {
    "ours_norms": "Graf et al. 2022, Thm 3.5 (norms)",
    "ours_params": "Graf et al. 2022, Thm 3.5 (parameters)",
    "bartlett": "Bartlett et al. 2017, Lemma A.8",
    "ledent_main": "Ledent et al. 2021, Thm 11",
    "ledent_fixed_constraints": "Ledent et al. 2021, Sec. E",
    "lin": "Lin & Zhang 2019, Lemma 18",
    "neyshabur_1inf": "Neyshabur et al. 2015, Cor. 2 (1,inf)",
    "golowich_1inf": "Golowich et al. 2018, Thm 2",
    "gouk_1inf": "Gouk et al. 2021, Thm 1",
    "neyshabur_fro": "Neyshabur et al. 2015, Cor. 2 (Frobenius)",
    "golowich_fro": "Golowich et al. 2018, Thm 1",
    "gouk_fro": "Gouk et al. 2021, Thm 2",
}


def certified_accuracy(margins, lipschitz, radii=RADII):
    """``{radius: fraction of points whose certified radius m/(sqrt(2) L)
    is at least it}``; a misclassified point (``m <= 0``) is never certified."""
    margins = np.asarray(margins, np.float64)
    radius = np.where(margins > 0, margins / (math.sqrt(2) * lipschitz), -1.0)
    return {float(r): float(np.mean(radius >= r)) if len(margins) else 0.0 for r in radii}


def chosen_margin(spec, train_margins):
    """``(gamma, description)`` for ``--gamma``: a positive number, or
    ``qP``, the ``P``-th percentile of the training margins. A percentile
    that is not positive is taken over the positive margins instead (a
    bound at a negative margin says nothing); with no positive margin at
    all, ``gamma`` is ``None``. A bad ``spec`` is a ``ValueError``."""
    text = str(spec).strip()
    margins = np.asarray(train_margins, np.float64)
    if text.lower().startswith("q"):
        try:
            percent = float(text[1:])
        except ValueError:
            percent = math.nan
        if not 0 <= percent <= 100:
            raise ValueError(f"--gamma={spec!r}: a percentile is q0 ... q100.")
        gamma = float(np.percentile(margins, percent))
        if gamma > 0:
            return gamma, f"the {percent:g}th percentile of the training margins"
        positive = margins[margins > 0]
        if not len(positive):
            return None, "no training margin is positive"
        return float(
            np.percentile(positive, percent)
        ), f"the {percent:g}th percentile of the positive training margins"
    try:
        gamma = float(text)
    except ValueError:
        gamma = math.nan
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"--gamma={spec!r} must be a number > 0 or a percentile such as q10.")
    return gamma, "chosen"


def drivers(q, name):
    """What bound ``name`` is made of, in words and numbers."""
    product = f"prod s_i = {np.prod(q.lipschitz):.4g}"
    if name in ("ours_norms", "ours_params", "bartlett"):
        return f"{product}, sum of (2,1) distances = {sum(q.dist21):.4g}"
    if name.startswith("ledent"):
        return (
            f"{product}, sum of per-filter distances = {sum(q.filter_dist21):.4g}, "
            f"largest patch norm = {max(q.patch_norms):.4g}"
        )
    if name == "lin":
        return f"{product}, sum_i W_i^2 = {sum(w * w for w in q.params):.4g}"
    if name.endswith("_1inf"):
        return f"prod ||K_i||_(1,inf) = {np.prod(q.norm_1inf):.4g}"
    fro = np.prod(q.array("norm_fro") * q.array("input_sizes") / q.array("strides"))
    return f"prod ||K_i||_F d_i/t_i = {fro:.4g}"


def _number(value):
    """A bound or value; ``None`` (how JSON stores ``inf``) is ``inf``."""
    return "inf" if value is None or value == math.inf else f"{value:.4g}"


def _holds(row):
    """``(Lipschitz, distance)`` each ``"yes"``, ``"NO"`` or ``"-"`` (no constraint)."""
    status = network.constraint_status(
        row["lipschitz"], row["lip_constraint"], row["distance"], row["dist_constraint"]
    )
    return tuple("-" if ok is None else ("yes" if ok else "NO") for ok in status)


def line_style(name, index):
    """Twelve lines that can be told apart: the paper's two bounds black and
    thick, the others a colour and one of three dash patterns each."""
    if name == "ours_norms":
        return dict(color="black", linewidth=2.8, linestyle="-")
    if name == "ours_params":
        return dict(color="black", linewidth=2.8, linestyle="--")
    colours = (
        "tab:blue",
        "tab:orange",
        "tab:green",
        "tab:red",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:olive",
        "tab:cyan",
        "tab:gray",
    )
    return dict(
        color=colours[index % len(colours)], linewidth=1.4, linestyle=("-", "--", ":")[index % 3]
    )


def _figures(run_dir, rows, q, test_error, train_margins, test_margins):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, value, bound, title in (
        (axes[0], "lipschitz", "lip_constraint", "Lipschitz constant"),
        (axes[1], "distance", "dist_constraint", "(2,1) distance to K0"),
    ):
        positions = np.arange(len(rows))
        axis.bar(positions, [r[value] or 0.0 for r in rows], label="measured")
        limits = [r[bound] if r[bound] not in (None, math.inf) else np.nan for r in rows]
        axis.scatter(positions, limits, color="red", marker="_", s=300, label="constraint")
        axis.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
        axis.set_xlabel("layer")
        axis.set_ylabel(title)
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(run_dir, "constraints.png"), dpi=100)
    plt.close(figure)

    grid = np.asarray(bounds.MARGIN_GRID)
    confidence = 3 * math.sqrt(math.log(2 * len(grid) / bounds.DELTA) / (2 * q.n))
    ramp = np.asarray([bounds.ramp_loss(q.train_margins, g) for g in grid])
    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    with np.errstate(all="ignore"):
        for index, name in enumerate(bounds.BOUNDS):
            style = line_style(name, index)
            complexity = [bounds.BOUNDS[name](q, g) for g in grid]
            axes[0].plot(
                grid, [v if 0 < v < math.inf else np.nan for v in complexity], label=name, **style
            )
            error = (
                ramp
                + 2 * np.asarray([bounds.ramp_class_complexity(q, name, g) for g in grid])
                + confidence
            )
            axes[1].plot(grid, np.where(np.isfinite(error), error, np.nan), label=name, **style)
    axes[0].set_title("Rademacher complexity bounds R(gamma) (legend: right)")
    axes[0].set_ylabel("bound on the Rademacher complexity")
    axes[1].axhline(test_error, color="red", linewidth=2, label="measured test error")
    axes[1].axhline(1.0, color="gray", linewidth=1, linestyle="-.", label="1 (vacuous above)")
    axes[1].set_title(f"bounds on the test error (probability {1 - bounds.DELTA:g})")
    axes[1].set_ylabel("test error at most")
    for axis in axes:
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("margin gamma")
        axis.grid(True, which="major", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(os.path.join(run_dir, "bounds.png"), dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist(
        [train_margins, test_margins],
        bins=40,
        density=True,
        label=[f"train ({len(train_margins)})", f"test ({len(test_margins)})"],
    )
    axis.axvline(0.0, color="gray", linewidth=1)
    axis.set_xlabel("margin v_y - max_{i != y} v_i")
    axis.set_ylabel("density")
    axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(run_dir, "margins.png"), dpi=100)
    plt.close(figure)


def _error_table(summary, q, test_error):
    best = min(test_error.values(), key=lambda b: b.value)
    delta, count = bounds.DELTA, len(bounds.MARGIN_GRID)
    lines = [
        "## What the bounds say about the test error",
        "",
        f"With probability {1 - delta:g} over the training sample, the test error is at most "
        f"(each bound at its best margin):",
        "",
        "| bound | source | test error at most | best margin | train ramp loss | 2 R(margin) "
        "| confidence | driven by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, bound in test_error.items():
        value = _number(bound.value) + (" (vacuous)" if bound.vacuous else "")
        lines.append(
            f"| {name} | {SOURCES[name]} | **{value}** | {bound.margin:.4g} | "
            f"{bound.ramp_loss:.4f} | {_number(2 * bound.complexity)} | "
            f"{bound.confidence:.4f} | {drivers(q, name)} |"
        )
    lines += [
        "",
        f"Measured test error: **{1 - summary['test_accuracy']:.4f}** "
        f"(train error {1 - summary['train_accuracy']:.4f}). Least vacuous: {best.name} "
        f"({_number(best.value)}).",
        "",
        f"Each row is `ramp_gamma(train) + 2 R_S(F_gamma) + 3 sqrt(log(2K/delta) / (2n))` "
        f"minimized over K = {count} margins fixed in advance (2^-20 ... 2^20), delta = {delta:g} "
        f"(the union bound over the grid), n = {q.n}: the margin bound of Bartlett et al. 2017 "
        "(Lemma A.4). `R_S(F_gamma)` is each complexity bound; the six layer-peeling bounds "
        "(on the outputs, times kappa) are multiplied by 2/gamma for the ramp-loss class. "
        "A value of 1 or more is vacuous: it says nothing.",
        "",
    ]
    at_top = [name for name, bound in test_error.items() if bound.margin == bounds.MARGIN_GRID[-1]]
    if at_top:
        lines += [
            f"{', '.join(at_top)}: smallest at the largest margin of the grid, above every "
            "training margin (ramp loss about 1): vacuous at every margin.",
            "",
        ]
    return lines


def _markdown(summary, rows, q, test_error, gamma, gamma_text, values, certified):
    lines = [
        "# Capacity report",
        "",
        f"train accuracy {summary['train_accuracy']:.4f}, test accuracy "
        f"{summary['test_accuracy']:.4f}, network Lipschitz bound "
        f"{summary['network_lipschitz']:.4g}, every constraint holds: "
        f"{'yes' if summary['all_constraints_hold'] else 'NO'}",
        "",
    ]
    lines += _error_table(summary, q, test_error)
    lines += [
        "## Layers",
        "",
        "| layer | kind | Lipschitz bound | Lipschitz | holds | distance bound | distance |"
        " holds | parameters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lip_holds, dist_holds = _holds(r)
        lines.append(
            f"| {r['name']} | {r['kind']} | {_number(r['lip_constraint'])} | "
            f"{_number(r['lipschitz'])} | {lip_holds} | "
            f"{_number(r['dist_constraint'])} | "
            f"{'-' if r['distance'] is None else _number(r['distance'])} | "
            f"{dist_holds} | {r['params']} |"
        )
    heading = (
        f"## Complexity bounds at gamma = {gamma:.4g} ({gamma_text})"
        if gamma
        else f"## Complexity bounds ({gamma_text}: the margin bounds are inf)"
    )
    lines += ["", heading, "", "| bound | source | R(gamma) |", "|---|---|---|"]
    lines += [f"| {name} | {SOURCES[name]} | {_number(value)} |" for name, value in values.items()]
    lines += [
        "",
        f"Smallest training margin {q.margin:.4g}; n = {q.n}, ||X|| = "
        f"{q.data_norm:.4g}, prod s_i = {np.prod(q.lipschitz):.4g}, sum of (2,1) "
        f"distances = {sum(q.dist21):.4g}, max W_i = {max(q.params)}.",
        "",
        "## Certified robustness (l2)",
        "",
        "| radius | certified test accuracy |",
        "|---|---|",
    ]
    lines += [f"| {radius:g} | {share:.4f} |" for radius, share in certified.items()]
    lines += [
        "",
        "![bounds](bounds.png)",
        "![margins](margins.png)",
        "![constraints](constraints.png)",
        "",
    ]
    return "\n".join(lines)


def _load_summary(run_dir):
    summary = runs.read_summary(run_dir)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise runs.RunError(
            f"{os.path.join(run_dir, runs.SUMMARY_FILE)} lacks {missing}; is it "
            "the summary of a finished run of train_main.py?"
        )
    return summary


def _load_final_model(run_dir):
    import keras

    path = os.path.join(run_dir, runs.FINAL_MODEL)
    if not os.path.exists(path):
        raise runs.RunError(f"{path} is missing: the report measures the trained model.")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # any unreadable file
        raise runs.RunError(
            f"{path} is damaged ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); "
            "the report needs the trained model."
        ) from None


def _load_data(summary):
    from keras_capacity.training import data as datasets

    flags = summary["flags"]
    try:
        return datasets.load(
            flags["dataset"],
            flags.get("data_dir") or None,
            flags["bs"],
            flags["limit_to"],
            flags["rand"],
            False,
            flags["seed"],
        )
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise runs.RunError(f"the run's data cannot be loaded: {error}") from None


def write_report(
    run_dir: str, model=None, data=None, quantities=None, gamma: str | float = DEFAULT_GAMMA
) -> dict:
    """Writes the report of the finished run in ``run_dir``.

    ``model``, ``data`` (a :class:`keras_capacity.training.data.Data`) and
    ``quantities`` default to the run's final model, the data its flags
    name, and what :func:`keras_capacity.bounds.measure_quantities` measures
    there; ``gamma`` is where the complexity bounds are tabulated (see
    :func:`chosen_margin`). Returns the report's dict; a missing or damaged
    file is a :class:`~keras_capacity.training.runs.RunError`, a bad
    ``gamma`` a ``ValueError``.
    """
    summary = _load_summary(run_dir)
    model = _load_final_model(run_dir) if model is None else model
    data = _load_data(summary) if data is None else data
    q = (
        quantities
        if quantities is not None
        else bounds.measure_quantities(model, data.train, num_classes=data.num_classes)
    )
    gamma_value, gamma_text = chosen_margin(gamma, q.train_margins)
    rows = summary["layers"]
    test_error = bounds.error_bounds(q)
    values = (
        bounds.all_bounds(q, gamma_value)
        if gamma_value
        else {name: math.inf for name in bounds.BOUNDS}
    )
    test_margins = network.margins(model, data.test)
    certified = certified_accuracy(test_margins, summary["network_lipschitz"])
    quantities_json = {k: v for k, v in q.__dict__.items() if k != "train_margins"}
    report = {
        "test_error": 1 - summary["test_accuracy"],
        "test_error_bounds": {name: bound.as_dict() for name, bound in test_error.items()},
        "gamma": gamma_value,
        "gamma_chosen_as": gamma_text,
        "bounds": {k: (None if not math.isfinite(v) else v) for k, v in values.items()},
        "layers": rows,
        "quantities": quantities_json,
        "certified_accuracy": {str(k): v for k, v in certified.items()},
    }
    _figures(run_dir, rows, q, 1 - summary["test_accuracy"], q.train_margins, test_margins)
    runs.write_atomic(os.path.join(run_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    # Last: its presence marks a complete report.
    runs.write_atomic(
        os.path.join(run_dir, runs.REPORT_FILE),
        _markdown(summary, rows, q, test_error, gamma_value, gamma_text, values, certified),
    )
    return report


def main(argv=None):
    """``keras-capacity-report RUN_DIR [--gamma G]``: one-line errors, exit status 2."""
    parser = argparse.ArgumentParser(
        prog="keras-capacity-report",
        description="Write the capacity report (report.md, report.json, figures) of a "
        "finished run of train_main.py into its run directory.",
    )
    parser.add_argument(
        "run_dir", help="the run directory (with summary.json and model_final.keras)"
    )
    parser.add_argument(
        "--gamma",
        default=DEFAULT_GAMMA,
        help="the margin of the complexity-bound table: a number > 0, or qP, "
        "the P-th percentile of the training margins (default: q10)",
    )
    arguments = parser.parse_args(argv)
    from keras_capacity.training.cli import quiet_tensorflow

    quiet_tensorflow()
    try:
        chosen_margin(arguments.gamma, [1.0])  # checked before anything is loaded
        write_report(arguments.run_dir, gamma=arguments.gamma)
    except (runs.RunError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(arguments.run_dir, runs.REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
