"""The capacity report: of a finished training run, or of any trained model.

    keras-capacity-report RUN_DIR [--gamma q10]
    keras-capacity-report --model TRAINED.keras [--init INIT.keras] --data DATA --out DIR
    python -m keras_capacity.training.report ...

Measures the model (`keras_capacity.measure`: the run's
``model_final.keras`` on the data its flags name, or ``--model`` on
``--data``, which takes what ``--dataset`` of training takes) and writes
into ``RUN_DIR`` or ``--out``:

* ``report.md``, which leads with what the bounds say about the test error:
  for each of the twelve bounds, at its best margin, "with probability
  0.95 the test error is at most X" (`keras_capacity.bounds.error_bound`),
  *vacuous* when ``X >= 1``, beside the measured test error and the
  quantities that drive the bound; then the layers, the complexity bounds at
  a chosen margin (``--gamma``: a value, or ``qP``, the ``P``-th percentile
  of the training margins; default ``q10``), and certified robustness;
* ``report.json`` with the same numbers;
* ``bounds.png`` (every complexity bound against the margin, and every
  test-error bound against the margin with the measured test error; only
  where the bounds apply, see `keras_capacity.measurement`),
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
import contextlib
import json
import math
import os
import sys

import numpy as np

from keras_capacity import bounds, measurement, network
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


def _total(values):
    return "unknown" if values is None else f"{sum(values):.4g}"


def drivers(q, name):
    """What bound ``name`` is made of, in words and numbers."""
    product = f"prod s_i = {np.prod(q.lipschitz):.4g}"
    if name in ("ours_norms", "ours_params", "bartlett"):
        return f"{product}, sum of (2,1) distances = {_total(q.dist21)}"
    if name.startswith("ledent"):
        return (
            f"{product}, sum of per-filter distances = {_total(q.filter_dist21)}, "
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


def _save(figure, path):
    """Saves a figure whole or not at all: a temporary name, then a rename;
    an error on the way removes the temporary file (a killed process leaves
    it, named ``<path>.partial<pid>``, which no viewer takes for a PNG)."""
    temporary = f"{path}.partial{os.getpid()}"
    try:
        figure.savefig(temporary, dpi=100, format="png")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _constraints_figure(plt, out_dir, rows):
    names = [r["name"] for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    unknown = any(r["distance"] is None and r["kind"] != "BatchNormalization" for r in rows)
    for axis, value, bound, title in (
        (axes[0], "lipschitz", "lip_constraint", "Lipschitz constant"),
        (axes[1], "distance", "dist_constraint", "(2,1) distance to K0"),
    ):
        positions = np.arange(len(rows))
        heights = [np.nan if r[value] is None else r[value] for r in rows]
        axis.bar(positions, heights, label="measured")
        limits = [r[bound] if r[bound] not in (None, math.inf) else np.nan for r in rows]
        if not np.all(np.isnan(limits)):
            axis.scatter(positions, limits, color="red", marker="_", s=300, label="constraint")
        axis.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
        axis.set_xlabel("layer")
        axis.set_ylabel(title)
        axis.set_title(
            title
            + (" (no bar: unknown, no initial weights)" if value == "distance" and unknown else "")
        )
        axis.legend()
    figure.tight_layout()
    _save(figure, os.path.join(out_dir, "constraints.png"))
    plt.close(figure)


def _bounds_figure(plt, out_dir, q, test_error):
    grid = np.asarray(bounds.MARGIN_GRID)
    confidence = 3 * math.sqrt(math.log(2 * len(grid) / bounds.DELTA) / (2 * q.n))
    ramp = np.asarray([bounds.ramp_loss(q.train_margins, g) for g in grid])
    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    with np.errstate(all="ignore"):
        for index, name in enumerate(bounds.BOUNDS):
            try:
                complexity = [bounds.BOUNDS[name](q, g) for g in grid]
            except bounds.NotApplicable:
                continue
            style = line_style(name, index)
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
    if test_error is not None:
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
    _save(figure, os.path.join(out_dir, "bounds.png"))
    plt.close(figure)


def _margins_figure(plt, out_dir, train_margins, test_margins):
    figure, axis = plt.subplots(figsize=(7, 4))
    series = [(train_margins, f"train ({len(train_margins)})")]
    if len(test_margins):
        series.append((test_margins, f"test ({len(test_margins)})"))
    axis.hist([values for values, _ in series], bins=40, density=True, label=[n for _, n in series])
    axis.axvline(0.0, color="gray", linewidth=1)
    axis.set_xlabel("margin v_y - max_{i != y} v_i")
    axis.set_ylabel("density")
    axis.legend()
    figure.tight_layout()
    _save(figure, os.path.join(out_dir, "margins.png"))
    plt.close(figure)


def _figures(out_dir, record):
    """The figures that ``report.md`` shows (``bounds.png`` only where the
    bounds apply); each written whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _constraints_figure(plt, out_dir, record.layers)
    if record.quantities is not None:
        test_error = None if record.test_accuracy is None else 1 - record.test_accuracy
        _bounds_figure(plt, out_dir, record.quantities, test_error)
    _margins_figure(plt, out_dir, record.train_margins, record.test_margins)


def _error_table(record):
    q, test_error = record.quantities, record.test_error_bounds
    delta, count = bounds.DELTA, len(bounds.MARGIN_GRID)
    lines = ["## What the bounds say about the test error", ""]
    if q is None:
        return lines + [
            f"**Not applicable**: {record.bounds_reason}. The twelve bounds are stated for "
            "chains of convolutions on data that is not all zero; the network Lipschitz bound, the "
            "layer table and certified robustness below hold for any graph.",
            "",
        ]
    lines += [
        f"With probability {1 - delta:g} over the training sample, the test error is at most "
        f"(each bound at its best margin):",
        "",
        "| bound | source | test error at most | best margin | train ramp loss | 2 R(margin) "
        "| confidence | driven by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, bound in test_error.items():
        if bound is None:
            lines.append(
                f"| {name} | {SOURCES[name]} | not applicable | | | | | "
                f"{record.not_applicable[name]} |"
            )
            continue
        value = _number(bound.value) + (" (vacuous)" if bound.vacuous else "")
        lines.append(
            f"| {name} | {SOURCES[name]} | **{value}** | {bound.margin:.4g} | "
            f"{bound.ramp_loss:.4f} | {_number(2 * bound.complexity)} | "
            f"{bound.confidence:.4f} | {drivers(q, name)} |"
        )
    given = [b for b in test_error.values() if b is not None]
    measured = (
        "no test data" if record.test_accuracy is None else f"**{1 - record.test_accuracy:.4f}**"
    )
    least = min(given, key=lambda b: b.value) if given else None
    lines += [
        "",
        f"Measured test error: {measured} (train error {1 - record.train_accuracy:.4f})."
        + (f" Least vacuous: {least.name} ({_number(least.value)})." if least else ""),
        "",
        f"Each row is `ramp_gamma(train) + 2 R_S(F_gamma) + 3 sqrt(log(2K/delta) / (2n))` "
        f"minimized over K = {count} margins fixed in advance (2^-20 ... 2^20), delta = {delta:g} "
        f"(the union bound over the grid), n = {q.n}: the margin bound of Bartlett et al. 2017 "
        "(Lemma A.4). `R_S(F_gamma)` is each complexity bound; the six layer-peeling bounds "
        "(on the outputs, times kappa) are multiplied by 2/gamma for the ramp-loss class. "
        "A value of 1 or more is vacuous: it says nothing.",
        "",
    ]
    at_top = [b.name for b in given if b.margin == bounds.MARGIN_GRID[-1]]
    if at_top:
        lines += [
            f"{', '.join(at_top)}: smallest at the largest margin of the grid, above every "
            "training margin (ramp loss about 1): vacuous at every margin.",
            "",
        ]
    return lines


def _layer_lines(rows):
    """The layer table; a column for the folded BatchNorms where there are
    any."""
    folds = any(r.get("folded") for r in rows)
    header = (
        "| layer | kind | Lipschitz bound | Lipschitz | holds | distance bound | distance |"
        " holds | parameters |" + (" BatchNorm folded |" if folds else "")
    )
    lines = ["## Layers", "", header, "|---" * header.count(" |") + "|"]
    for r in rows:
        lip_holds, dist_holds = _holds(r)
        distance = r["distance"]
        if distance is None:
            distance = "unknown" if r["kind"] != "BatchNormalization" else "-"
        else:
            distance = _number(distance)
        lines.append(
            f"| {r['name']} | {r['kind']} | {_number(r['lip_constraint'])} | "
            f"{_number(r['lipschitz'])} | {lip_holds} | "
            f"{_number(r['dist_constraint'])} | {distance} | "
            f"{dist_holds} | {r['params']} |" + (f" {r.get('folded') or ''} |" if folds else "")
        )
    return lines


def _complexity_lines(record, gamma, gamma_text):
    q = record.quantities
    if q is None:
        return []
    heading = (
        f"## Complexity bounds at gamma = {gamma:.4g} ({gamma_text})"
        if gamma
        else f"## Complexity bounds ({gamma_text}: the margin bounds are inf)"
    )
    values = record.complexity_bounds(gamma) if gamma else {}
    lines = ["", heading, "", "| bound | source | R(gamma) |", "|---|---|---|"]
    for name in bounds.BOUNDS:
        if name in record.not_applicable:
            value = "not applicable"
        else:
            value = _number(values.get(name, math.inf))
        lines.append(f"| {name} | {SOURCES[name]} | {value} |")
    return lines + [
        "",
        f"Smallest training margin {q.margin:.4g}; n = {q.n}, ||X|| = "
        f"{q.data_norm:.4g}, prod s_i = {np.prod(q.lipschitz):.4g}, sum of (2,1) "
        f"distances = {_total(q.dist21)}, max W_i = {max(q.params)}.",
    ]


def _markdown(record, headline, gamma, gamma_text):
    lines = ["# Capacity report", "", headline, ""]
    if record.notes:
        lines += [f"- {note}" for note in record.notes] + [""]
    lines += _error_table(record)
    lines += _layer_lines(record.layers)
    lines += _complexity_lines(record, gamma, gamma_text)
    lines += ["", "## Certified robustness (l2)", ""]
    if record.test_accuracy is None:
        lines += ["No test data was given.", ""]
    else:
        lines += ["| radius | certified test accuracy |", "|---|---|"]
        lines += [f"| {r:g} | {share:.4f} |" for r, share in record.certified_accuracy.items()]
        lines += [""]
    figures = (
        ["bounds", "margins", "constraints"] if record.quantities else ["margins", "constraints"]
    )
    lines += [f"![{name}]({name}.png)" for name in figures] + [""]
    return "\n".join(lines)


def write(out_dir: str, record: measurement.CapacityRecord, headline: str, gamma=DEFAULT_GAMMA):
    """Writes ``report.md``, ``report.json`` and the figures of ``record``
    into ``out_dir`` (made if missing); ``headline`` opens ``report.md``.
    Every file is written whole or not at all, ``report.md`` last: its
    presence marks a complete report. Returns the report's dict."""
    gamma_value, gamma_text = chosen_margin(gamma, record.train_margins)
    report = record.as_dict()
    report.update(
        test_error=None if record.test_accuracy is None else 1 - record.test_accuracy,
        gamma=gamma_value,
        gamma_chosen_as=gamma_text,
        bounds={
            name: (None if value is None or not math.isfinite(value) else value)
            for name, value in (
                record.complexity_bounds(gamma_value) if gamma_value and record.quantities else {}
            ).items()
        },
    )
    os.makedirs(out_dir, exist_ok=True)
    _figures(out_dir, record)
    runs.write_atomic(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    runs.write_atomic(
        os.path.join(out_dir, runs.REPORT_FILE),
        _markdown(record, headline, gamma_value, gamma_text),
    )
    return report


def _load_summary(run_dir):
    if not os.path.isdir(run_dir):
        raise runs.RunError(f"{run_dir} does not exist.")
    if not os.path.exists(os.path.join(run_dir, runs.FLAGS_FILE)):
        raise runs.RunError(
            f"{run_dir} is not a run directory of train_main.py (it holds no {runs.FLAGS_FILE})."
        )
    summary = runs.read_summary(run_dir)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise runs.RunError(
            f"{os.path.join(run_dir, runs.SUMMARY_FILE)} lacks {missing}; is it "
            "the summary of a finished run of train_main.py?"
        )
    return summary


def load_model(path, what="the trained model"):
    """A ``.keras`` model, or a `RunError`
    that says it is missing or damaged."""
    import keras

    if not os.path.exists(path):
        raise runs.RunError(f"{path} is missing: the report measures {what}.")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # any unreadable file
        raise runs.RunError(
            f"{path} is damaged ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); "
            f"the report needs {what}."
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


def run_headline(summary):
    """The first line of a training run's report."""
    return (
        f"train accuracy {summary['train_accuracy']:.4f}, test accuracy "
        f"{summary['test_accuracy']:.4f}, network Lipschitz bound "
        f"{summary['network_lipschitz']:.4g}, every constraint holds: "
        f"{'yes' if summary['all_constraints_hold'] else 'NO'}"
    )


def write_report(
    run_dir: str, model=None, data=None, record=None, gamma: str | float = DEFAULT_GAMMA
) -> dict:
    """Writes the report of the finished run in ``run_dir``.

    ``model``, ``data`` (a `keras_capacity.training.data.Data`) and
    ``record`` default to the run's final model, the data its flags name,
    and what `keras_capacity.measure` measures there; ``gamma`` is
    where the complexity bounds are tabulated (see `chosen_margin`).
    Returns the report's dict; a missing or damaged file is a
    `RunError`, a bad ``gamma`` a
    ``ValueError``.
    """
    summary = _load_summary(run_dir)
    if record is None:
        model = load_model(os.path.join(run_dir, runs.FINAL_MODEL)) if model is None else model
        data = _load_data(summary) if data is None else data
        record = measurement.measure(model, data.train, data.test, num_classes=data.num_classes)
    return write(run_dir, record, run_headline(summary), gamma)


def measure_model(
    model_path,
    data_name,
    out_dir,
    init=None,
    data_dir=None,
    gamma=DEFAULT_GAMMA,
    inputs="standardized",
):
    """``keras-capacity-report --model``: the report of a model trained
    anywhere, on a dataset that `keras_capacity.training.data.load`
    reads (``inputs``: see there), into ``out_dir``. Everything is measured
    before anything is written, so a bad input leaves no file behind."""
    from keras_capacity.training import data as datasets

    chosen_margin(gamma, [1.0])  # checked before anything is loaded
    model = load_model(model_path)
    try:
        data = datasets.load(data_name, data_dir, inputs=inputs)
    except (FileNotFoundError, ValueError) as error:
        raise runs.RunError(f"--data={data_name}: {error}") from None
    outputs = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if outputs is not None and data.num_classes > outputs:
        raise ValueError(
            f"--data={data_name} has {data.num_classes} classes, but the model gives "
            f"{outputs} scores."
        )
    record = measurement.measure(
        model, data.train, data.test, init=init, num_classes=outputs or data.num_classes
    )
    test = "-" if record.test_accuracy is None else f"{record.test_accuracy:.4f}"
    headline = (
        f"{os.path.basename(model_path)} on {data_name} ({data.num_train} training, "
        f"{data.num_test} test examples), initial weights: "
        f"{'none given (distances unknown)' if init is None else os.path.basename(str(init))}. "
        f"train accuracy {record.train_accuracy:.4f}, test accuracy {test}, network "
        f"Lipschitz bound {record.network_lipschitz:.4g}"
    )
    return write(out_dir, record, headline, gamma)


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-capacity-report",
        description="Write a capacity report (report.md, report.json, figures): of a finished "
        "run of train_main.py into its run directory, or of any trained Keras model "
        "(--model, --data, --out).",
    )
    parser.add_argument(
        "run_dir", nargs="?", help="the run directory (with summary.json and model_final.keras)"
    )
    parser.add_argument("--model", help="a trained .keras model, instead of a run directory")
    parser.add_argument(
        "--init", help="its initial weights (.keras or weights file); without: distances unknown"
    )
    parser.add_argument(
        "--data", help="its data: a name, tfds:NAME, a folder or an .npz, as --dataset of training"
    )
    parser.add_argument("--data_dir", help="where TFDS data (or the Tiny-ImageNet folder) is")
    parser.add_argument(
        "--inputs",
        default="standardized",
        choices=("standardized", "unit", "raw"),
        help="what the model takes: images standardized per channel as train_main.py feeds "
        "them (default), divided by 255, or as stored (a model with its own Rescaling)",
    )
    parser.add_argument("--out", help="the folder to write the report of --model into")
    parser.add_argument(
        "--gamma",
        default=DEFAULT_GAMMA,
        help="the margin of the complexity-bound table: a number > 0, or qP, "
        "the P-th percentile of the training margins (default: q10)",
    )
    return parser


def main(argv=None):
    """``keras-capacity-report RUN_DIR`` or ``--model M --data D --out DIR``:
    one-line errors, exit status 2."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    by_model = arguments.model is not None
    if by_model == (arguments.run_dir is not None):
        parser.error("give a run directory, or --model with --data and --out")
    if by_model and not (arguments.data and arguments.out):
        parser.error("--model needs --data and --out")
    if not by_model and (arguments.init or arguments.data or arguments.out):
        parser.error("--init, --data and --out go with --model")
    from keras_capacity._startup import quiet_tensorflow

    quiet_tensorflow()
    try:
        chosen_margin(arguments.gamma, [1.0])  # checked before anything is loaded
        if by_model:
            if arguments.init and not os.path.isfile(arguments.init):
                raise runs.RunError(f"--init={arguments.init} does not exist.")
            measure_model(
                arguments.model,
                arguments.data,
                arguments.out,
                arguments.init,
                arguments.data_dir,
                arguments.gamma,
                arguments.inputs,
            )
        else:
            write_report(arguments.run_dir, gamma=arguments.gamma)
    except (runs.RunError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    where = arguments.out if by_model else arguments.run_dir
    print(f"wrote {os.path.join(where, runs.REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
