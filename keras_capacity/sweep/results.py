"""What a sweep found: ``sweep.json``, the excess-capacity estimate,
``sweep.md`` and ``sweep.png``.

**Excess capacity** (Graf et al. 2022): how far the capacity-driving terms
can be constrained before the test error rises above the unconstrained
network's. For each swept axis, the estimate is the *tightest* value of the
axis (the smallest bound or scale factor) at which some grid point's mean
test error over its seeds is at most the baseline's mean test error plus
the tolerance. The capacity it removes is measured on the trained networks:
``1 - L / L_0`` for the network Lipschitz bound ``L`` of that point against
the baseline's ``L_0``, and ``1 - D / D_0`` for the sum of the layers'
(2,1) distances to initialization.

**Tolerance.** By default one standard error of the baseline's mean test
error: the binomial ``sqrt(e (1 - e) / (n_test seeds))``, or, with several
seeds, the seeds' standard error ``std / sqrt(seeds)`` when it is larger.
"""

import json
import math
import os

import numpy as np

from keras_capacity.training import runs

FIGURE, MARKDOWN, RESULTS = "sweep.png", "sweep.md", "sweep.json"
# The bounds the figure shows on its second axis (the paper's two).
FIGURE_BOUNDS = ("ours_norms", "ours_params")


def trial_record(trial, summary=None, error=None, run_dir=None):
    """One trial's entry of ``sweep.json``: its settings and final metrics,
    or its error."""
    record = {
        "name": trial.name,
        "settings": trial.settings(),
        "seed": trial.seed,
        "baseline": trial.is_baseline,
        "run_dir": run_dir,
    }
    if summary is None:
        record.update(status="failed" if error else "pending", error=error)
        return record
    bounds = summary.get("test_error_bounds") or {}
    record.update(
        status="done",
        train_error=1 - summary["train_accuracy"],
        test_error=1 - summary["test_accuracy"],
        train_loss=summary["train_loss"],
        test_loss=summary["test_loss"],
        loss_gap=summary["loss_gap"],
        accuracy_gap=summary["accuracy_gap"],
        network_lipschitz=summary["network_lipschitz"],
        sum_of_distances=summary.get("sum_of_distances"),
        test_error_bounds={name: b["value"] for name, b in bounds.items()},
        train_time_s=summary.get("train_time_s"),
        num_test=summary.get("num_test"),
    )
    return record


def _mean_and_spread(values):
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def points(records):
    """The trials grouped by grid point, with the mean and spread (standard
    deviation) of their metrics over the seeds that finished."""
    grouped = {}
    for record in records:
        key = json.dumps(record["settings"], sort_keys=True)
        grouped.setdefault(key, []).append(record)
    found = []
    for group in grouped.values():
        done = [r for r in group if r["status"] == "done"]
        point = {
            "settings": group[0]["settings"],
            "baseline": group[0]["baseline"],
            "seeds": len(group),
            "finished": len(done),
        }
        for metric in ("test_error", "train_error", "network_lipschitz", "sum_of_distances"):
            point[metric], point[f"{metric}_spread"] = _mean_and_spread(r[metric] for r in done)
        kinds = sorted({k for r in done for k in r["test_error_bounds"]})
        point["test_error_bounds"] = {
            kind: _mean_and_spread(r["test_error_bounds"][kind] for r in done)[0] for kind in kinds
        }
        found.append(point)
    return found


def default_tolerance(baseline_records):
    """One standard error of the baseline's mean test error (see the module
    docstring); ``None`` before the baseline finished."""
    errors = [r["test_error"] for r in baseline_records if r["status"] == "done"]
    if not errors:
        return None
    mean = float(np.mean(errors))
    count = baseline_records[0].get("num_test") or 0
    binomial = math.sqrt(mean * (1 - mean) / (count * len(errors))) if count else 0.0
    seeds = float(np.std(errors, ddof=1) / math.sqrt(len(errors))) if len(errors) > 1 else 0.0
    return max(binomial, seeds)


def excess_capacity(axes, found, tolerance):
    """``{axis: estimate}``: the tightest value of each axis within the
    tolerance, and what it removes (module docstring); ``None`` values
    where no point is within it, or nothing finished yet."""
    baseline = next((p for p in found if p["baseline"]), None)
    estimates = {}
    for name in axes:
        estimate = {"tightest": None}
        estimates[name] = estimate
        if baseline is None or baseline["test_error"] is None or tolerance is None:
            continue
        limit = baseline["test_error"] + tolerance
        within = [
            p
            for p in found
            if not p["baseline"] and p["test_error"] is not None and p["test_error"] <= limit
        ]
        if not within:
            continue
        tightest = min(p["settings"][name] for p in within)
        point = min(
            (p for p in within if p["settings"][name] == tightest), key=lambda p: p["test_error"]
        )
        estimate.update(
            tightest=tightest,
            settings=point["settings"],
            test_error=point["test_error"],
            limit=limit,
        )
        for metric, key in (("network_lipschitz", "lipschitz"), ("sum_of_distances", "distance")):
            value, reference = point[metric], baseline[metric]
            estimate[metric] = value
            estimate[f"baseline_{metric}"] = reference
            estimate[f"removed_{key}"] = (
                (1 - value / reference) if value is not None and reference else None
            )
    return estimates


def summarize(definition, axes, records, tolerance=None):
    """The contents of ``sweep.json``."""
    found = points(records)
    baseline_records = [r for r in records if r["baseline"]]
    chosen = "given" if tolerance is not None else "one standard error of the baseline"
    tolerance = tolerance if tolerance is not None else default_tolerance(baseline_records)
    baseline = next((p for p in found if p["baseline"]), None)
    return {
        "definition": definition,
        "tolerance": tolerance,
        "tolerance_is": chosen,
        "baseline": baseline,
        "points": found,
        "excess_capacity": excess_capacity([a.name for a in axes], found, tolerance),
        "trials": records,
        "failed": [r["name"] for r in records if r["status"] == "failed"],
        "pending": [r["name"] for r in records if r["status"] == "pending"],
    }


def _number(value, digits=4):
    return "-" if value is None else ("inf" if value == math.inf else f"{value:.{digits}g}")


def markdown(sweep, axes):
    """``sweep.md``: the estimate first, then every point and trial."""
    baseline, tolerance = sweep["baseline"], sweep["tolerance"]
    lines = ["# Excess capacity", ""]
    if baseline and baseline["test_error"] is not None:
        lines += [
            f"Unconstrained baseline: test error {_number(baseline['test_error'])} "
            f"(over {baseline['finished']} seed(s)), network Lipschitz bound "
            f"{_number(baseline['network_lipschitz'])}, sum of distances "
            f"{_number(baseline['sum_of_distances'])}. Tolerance "
            f"{_number(tolerance)} ({sweep['tolerance_is']}).",
            "",
        ]
    lines += [
        "| axis | tightest value within tolerance | its test error | network Lipschitz "
        "bound (removed) | sum of distances (removed) |",
        "|---|---|---|---|---|",
    ]
    for axis in axes:
        est = sweep["excess_capacity"][axis.name]
        if est["tightest"] is None:
            lines.append(
                f"| {axis.name} | none: every value raised the test error (or the "
                "baseline has not finished) | | | |"
            )
            continue
        lines.append(
            f"| {axis.name} | {axis.label(est['tightest'])} | {_number(est['test_error'])} | "
            f"{_number(est['network_lipschitz'])} ({_percent(est['removed_lipschitz'])}) | "
            f"{_number(est['sum_of_distances'])} ({_percent(est['removed_distance'])}) |"
        )
    lines += [
        "",
        "The tightest value of an axis at which some grid point's mean test error "
        "stays within the baseline's plus the tolerance; what it removes is measured on "
        "the trained networks: 1 - L/L0 for the network Lipschitz bound and 1 - D/D0 for "
        "the sum of (2,1) distances to initialization, against the baseline's.",
        "",
        "## Points",
        "",
        "| settings | seeds | test error (spread) | train error | network Lipschitz | "
        "sum of distances | best test-error bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in sweep["points"]:
        bounds = {k: v for k, v in point["test_error_bounds"].items() if v is not None}
        best = min(bounds.items(), key=lambda item: item[1]) if bounds else None
        settings = (
            ", ".join(f"{k}={_number(v)}" for k, v in point["settings"].items())
            or "unconstrained baseline"
        )
        lines.append(
            f"| {settings} | {point['finished']}/{point['seeds']} | {_number(point['test_error'])}"
            f" ({_number(point['test_error_spread'])}) | {_number(point['train_error'])} | "
            f"{_number(point['network_lipschitz'])} | {_number(point['sum_of_distances'])} | "
            + (
                f"{_number(best[1])} ({best[0]}{', vacuous' if best[1] >= 1 else ''})"
                if best
                else "-"
            )
            + " |"
        )
    if sweep["failed"] or sweep["pending"]:
        lines += ["", "## Not finished", ""]
        lines += [
            f"- {r['name']}: {r['status']}" + (f" ({r['error']})" if r["error"] else "")
            for r in sweep["trials"]
            if r["status"] != "done"
        ]
    lines += ["", f"![sweep]({FIGURE})", ""]
    return "\n".join(lines)


def _percent(value):
    return "-" if value is None else f"{100 * value:.0f}% removed"


def _position(axis, value, finite):
    """Where a value sits on the figure's log axis (``inf`` to the right)."""
    if math.isfinite(value):
        return value
    return (max(finite) if finite else 1.0) * 4


def figure(sweep, axes, path):
    """``sweep.png``: test and train error against each axis (log scale),
    the baseline and its tolerance band, the paper's test-error bounds on a
    second axis, the excess-capacity estimate marked. Returns the plotted
    series ``{axis: {label: (x, y)}}``, read back from the drawn lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure_, panels = plt.subplots(1, len(axes), figsize=(6.5 * len(axes), 6.0), squeeze=False)
    baseline, tolerance = sweep["baseline"], sweep["tolerance"]
    drawn = {}
    for panel, axis in zip(panels[0], axes, strict=True):
        best = {}
        for point in sweep["points"]:
            if point["baseline"] or point["test_error"] is None:
                continue
            value = point["settings"][axis.name]
            if value not in best or point["test_error"] < best[value]["test_error"]:
                best[value] = point
        values = sorted(best)
        finite = [v for v in values if math.isfinite(v)]
        x = [_position(axis, v, finite) for v in values]
        errors = [best[v]["test_error"] for v in values]
        spreads = [best[v]["test_error_spread"] or 0.0 for v in values]
        panel.plot(x, errors, marker="o", color="tab:blue", label="test error")
        panel.errorbar(x, errors, yerr=spreads, fmt="none", color="tab:blue", capsize=3)
        panel.plot(
            x,
            [best[v]["train_error"] for v in values],
            marker="s",
            color="tab:green",
            linestyle="--",
            label="train error",
        )
        if baseline and baseline["test_error"] is not None:
            panel.axhline(
                baseline["test_error"], color="black", linewidth=1, label="unconstrained test error"
            )
            if tolerance:
                panel.axhspan(
                    baseline["test_error"] - tolerance,
                    baseline["test_error"] + tolerance,
                    color="gray",
                    alpha=0.2,
                    label="tolerance",
                )
        estimate = sweep["excess_capacity"][axis.name]["tightest"]
        if estimate is not None:
            panel.axvline(
                _position(axis, estimate, finite),
                color="tab:red",
                linestyle=":",
                linewidth=2,
                label=f"excess-capacity estimate ({axis.label(estimate)})",
            )
        if x:  # nothing finished yet: an empty panel, linear axes
            panel.set_xscale("log")
            panel.set_xticks(x, [axis.label(v) for v in values])
            panel.xaxis.set_minor_locator(ticker.NullLocator())
        panel.set_xlabel(axis.name + (" (scale of all entries)" if axis.is_scale else ""))
        panel.set_ylabel("error")
        bounds_axis = panel.twinx()
        for kind, style in zip(FIGURE_BOUNDS, ("-", "--"), strict=True):
            ys = [best[v]["test_error_bounds"].get(kind) for v in values]
            bounds_axis.plot(
                x,
                [np.nan if y is None else y for y in ys],
                color="tab:purple",
                linestyle=style,
                marker=".",
                label=f"test-error bound, {kind}",
            )
        if any(best[v]["test_error_bounds"].get(k) for v in values for k in FIGURE_BOUNDS):
            bounds_axis.set_yscale("log")
        bounds_axis.set_ylabel("bound on the test error (>= 1: vacuous)")
        handles = panel.get_legend_handles_labels()
        more = bounds_axis.get_legend_handles_labels()
        panel.legend(
            handles[0] + more[0],
            handles[1] + more[1],
            fontsize=7,
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
        )
        drawn[axis.name] = {
            line.get_label(): (
                list(map(float, line.get_xdata())),
                list(map(float, line.get_ydata())),
            )
            for line in panel.get_lines() + bounds_axis.get_lines()
            if not line.get_label().startswith("_")
        }
    figure_.suptitle("test error against each constraint (excess capacity)")
    figure_.tight_layout()
    figure_.savefig(path, dpi=100)
    plt.close(figure_)
    return drawn


def _finite_or_none(value):
    """JSON without ``Infinity``/``NaN``: a missing constraint is ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write(workdir, sweep, axes):
    """Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` into
    ``workdir``, each whole (through a temporary name and a rename), so
    that several processes of one sweep may write them."""
    runs.write_json(os.path.join(workdir, RESULTS), _finite_or_none(sweep))
    path = os.path.join(workdir, FIGURE)
    temporary = f"{path}.partial{os.getpid()}.png"
    figure(sweep, axes, temporary)
    os.replace(temporary, path)
    runs.write_atomic(os.path.join(workdir, MARKDOWN), markdown(sweep, axes))
