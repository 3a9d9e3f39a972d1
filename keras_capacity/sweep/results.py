"""What a sweep found: ``sweep.json``, the excess-capacity estimate,
``sweep.md`` and ``sweep.png``.

**Excess capacity** (Graf et al. 2022): how far the capacity-driving terms
can be constrained before the test error rises above the unconstrained
network's. The capacity an estimate removes is measured on the trained
networks: ``1 - L / L_0`` for the network Lipschitz bound ``L`` of that
point against the baseline's ``L_0``, and ``1 - D / D_0`` for the sum of
the layers' (2,1) distances to initialization.

**Tolerance.** By default one standard error of the baseline's mean test
error: the binomial ``sqrt(e (1 - e) / (n_test seeds))``, or, with several
seeds, the seeds' standard error ``std / sqrt(seeds)`` when it is larger.

**Did a network learn?** Chance level is ``c = 1 - `` the share of the
most frequent class among the test labels: the error of always answering
that class. A trial *learned* when its test error on the ``n`` test
examples is clearly below chance: more than two binomial standard errors
``2 sqrt(c (1 - c) / n)`` below ``c`` (a network no better than chance
gets that far below it by luck about once in 40 times). "Within tolerance
of a baseline that learned nothing" says nothing about capacity, so when
the baseline of any seed did not learn there is no estimate at all; the
reason is recorded beside each ``null`` estimate, with what to change. A
grid point learned when every seed of it did; one that did not is marked
so and never the estimate.

**The estimate, and records that contradict each other.** The analysis
assumes test error grows as a bound tightens. A point *passes* when it
learned and its mean test error over its seeds is at most the baseline's
plus the tolerance; otherwise it *fails*. Among the points that differ only
in one axis, a passing point with a looser failing one contradicts that
assumption (noise, usually: more seeds settle it). The estimate of an axis
is therefore the tightest value (smallest bound or scale factor) of a
passing point *below which no looser point fails*: the safe answer. A
lucky tight point with a failing looser one is named, never taken. This
only reads the finished points, so it holds for any way of choosing them
(the grid today, a search later).
"""

import contextlib
import json
import math
import os

import numpy as np

FIGURE, MARKDOWN, RESULTS = "sweep.png", "sweep.md", "sweep.json"
# The bounds the figure shows on its second axis (the paper's two).
FIGURE_BOUNDS = ("ours_norms", "ours_params")
# How many binomial standard errors below chance a test error must be for
# the network to count as having learned (module docstring).
LEARNED_STANDARD_ERRORS = 2.0
# What to change when a baseline did not learn.
ADVICE = "train longer (--epochs), on more data (--limit_to), or with a larger learning rate (--lr)"


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
    if summary.get("test_class_counts") is not None:
        record["test_class_counts"] = list(summary["test_class_counts"])
    return record


# ------------------------------------------------------------------ chance


def chance_level(counts, source):
    """Chance level of a test set from its label counts (one per class):
    ``test_error`` is one minus the share of the most frequent class,
    ``margin`` how far below it a test error must be to count as learned
    (two binomial standard errors on ``num_test`` examples)."""
    counts = [int(c) for c in counts]
    total = sum(counts)
    if not total:
        return unknown_chance(f"{source} holds no test labels")
    share = max(counts) / total
    error = 1 - share
    return {
        "test_error": error,
        "majority_share": share,
        "num_classes": len(counts),
        "num_test": total,
        "margin": LEARNED_STANDARD_ERRORS * math.sqrt(error * share / total),
        "source": source,
    }


def unknown_chance(reason):
    """A chance level that could not be found; whether the networks learned
    then goes unchecked, and ``sweep.md`` says so and why."""
    return {"test_error": None, "unknown": reason}


def learned(test_error, chance):
    """Whether one trial's test error is clearly below chance (module
    docstring); ``None`` when either is unknown."""
    if test_error is None or chance is None or chance.get("test_error") is None:
        return None
    return test_error < chance["test_error"] - chance["margin"]


# ------------------------------------------------------------------ points


def _mean_and_spread(values):
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def points(records):
    """The trials grouped by grid point, with the mean and spread (standard
    deviation) of their metrics over the seeds that finished, and whether
    every seed learned (``learned``: ``None`` when unchecked; the seeds that
    did not in ``not_learned_seeds``)."""
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
        checked = [r for r in done if r.get("learned") is not None]
        point["not_learned_seeds"] = [r["seed"] for r in checked if not r["learned"]]
        point["learned"] = (not point["not_learned_seeds"]) if checked else None
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


def baseline_problem(baseline_records, chance):
    """Why there can be no estimate because of the baseline (one line, with
    what to change), or ``None`` when every seed's baseline learned or that
    could not be checked. Used as ``no estimate: <this>``."""
    done = [r for r in baseline_records if r["status"] == "done"]
    failed = [r for r in done if r.get("learned") is False]
    if not failed:
        return None
    below = (
        f"chance level {number(chance['test_error'])} by more than "
        f"{number(chance['margin'], 2)} (two standard errors on {chance['num_test']} "
        "test images)"
    )
    if len(failed) == len(done):
        errors = ", ".join(number(r["test_error"]) for r in failed)
        return (
            f"the unconstrained baseline did not learn: its test error {errors} is not "
            f"below {below}; {ADVICE}"
        )
    learners = [r for r in done if r not in failed]
    return (
        "the seeds disagree on the unconstrained baseline: "
        + ", ".join(
            f"seed {r['seed']} did not learn (test error {number(r['test_error'])})" for r in failed
        )
        + " while "
        + ", ".join(f"seed {r['seed']} did ({number(r['test_error'])})" for r in learners)
        + f"; learning means a test error below {below}; {ADVICE}"
    )


# ---------------------------------------------------------------- estimate


def _others(settings, name):
    return json.dumps({k: v for k, v in settings.items() if k != name}, sort_keys=True)


def point_label(settings):
    """How a point reads in ``sweep.md``: ``dist.inner=4, lip=0.5``."""
    return ", ".join(f"{k}={number(v)}" for k, v in settings.items()) or "baseline"


def axis_estimate(name, found, limit):
    """The estimate of axis ``name`` from the finished points (module
    docstring): ``(safe passing point or None, contradictions)``, where a
    contradiction is ``(tighter passing point, [looser failing points])``.
    Points are compared only with those whose other settings are equal;
    unfinished ones are left out."""
    groups = {}
    for point in found:
        if point["baseline"] or point["test_error"] is None:
            continue
        groups.setdefault(_others(point["settings"], name), []).append(point)
    safe, contradictions = [], []
    for group in groups.values():
        passing = [p for p in group if passes(p, limit)]
        failing = [p for p in group if not passes(p, limit)]
        for point in passing:
            looser = [q for q in failing if q["settings"][name] > point["settings"][name]]
            if looser:
                looser.sort(key=lambda q: q["settings"][name])
                contradictions.append((point, looser))
            else:
                safe.append(point)
    contradictions.sort(key=lambda c: c[0]["settings"][name])
    if not safe:
        return None, contradictions
    return min(safe, key=lambda p: (p["settings"][name], p["test_error"])), contradictions


def passes(point, limit):
    """A point learned (or that is unchecked) and its mean test error is
    within the limit."""
    return point["learned"] is not False and point["test_error"] <= limit


def excess_capacity(axes, found, tolerance, problem=None):
    """``{axis: estimate}``: per axis the tightest safe value within the
    tolerance and what it removes (module docstring); ``tightest`` is
    ``None`` with the ``reason`` beside it when there is none, and
    ``contradictions`` names the points that contradict each other."""
    baseline = next((p for p in found if p["baseline"]), None)
    estimates = {}
    for name in axes:
        estimate = {"tightest": None, "reason": None, "contradictions": []}
        estimates[name] = estimate
        if problem:
            estimate["reason"] = problem
            continue
        if baseline is None or baseline["test_error"] is None or tolerance is None:
            estimate["reason"] = "the baseline has not finished"
            continue
        limit = baseline["test_error"] + tolerance
        estimate["limit"] = limit
        point, contradictions = axis_estimate(name, found, limit)
        estimate["contradictions"] = [
            {
                "within": tight["settings"],
                "test_error": tight["test_error"],
                "looser_over": [
                    {
                        "settings": q["settings"],
                        "test_error": q["test_error"],
                        "learned": q["learned"],
                    }
                    for q in looser
                ],
            }
            for tight, looser in contradictions
        ]
        if point is None:
            finished = [p for p in found if not p["baseline"] and p["test_error"] is not None]
            estimate["reason"] = (
                "no constrained point has finished"
                if not finished
                else "every value within the tolerance has a looser one over it"
                if contradictions
                else "no value kept the test error within the tolerance"
                + (
                    " (or its networks did not learn)"
                    if any(p["learned"] is False for p in finished)
                    else ""
                )
            )
            continue
        estimate.update(
            tightest=point["settings"][name],
            settings=point["settings"],
            test_error=point["test_error"],
        )
        for metric, key in (("network_lipschitz", "lipschitz"), ("sum_of_distances", "distance")):
            value, reference = point[metric], baseline[metric]
            estimate[metric] = value
            estimate[f"baseline_{metric}"] = reference
            estimate[f"removed_{key}"] = (
                (1 - value / reference) if value is not None and reference else None
            )
    return estimates


def summarize(
    definition, axes, records, tolerance=None, chance=None, search=None, estimate_axes=None
):
    """The contents of ``sweep.json``. ``chance``: the test set's chance
    level (`chance_level`); a record's own ``test_class_counts`` (from
    its run's summary) is preferred; without either, whether the networks
    learned goes unchecked.

    ``search`` (a `search` search other than the
    grid): only points every seed of which finished take part in the
    estimate (each of the search's decisions uses the seeds' mean), and
    the search adds its own part (its bracket, or its frontier).
    ``estimate_axes``: the names to estimate (default: every axis)."""
    counts = next((r["test_class_counts"] for r in records if r.get("test_class_counts")), None)
    if counts is not None:
        chance = chance_level(counts, "the trials' test labels")
    elif chance is None:
        chance = unknown_chance("the test labels were not read")
    records = [
        {k: v for k, v in r.items() if k != "test_class_counts"}
        | {"learned": learned(r.get("test_error"), chance)}
        for r in records
    ]
    found = points(records)
    baseline_records = [r for r in records if r["baseline"]]
    chosen = "given" if tolerance is not None else "one standard error of the baseline"
    tolerance = tolerance if tolerance is not None else default_tolerance(baseline_records)
    baseline = next((p for p in found if p["baseline"]), None)
    problem = baseline_problem(baseline_records, chance)
    summary = {
        "definition": definition,
        "chance": chance,
        "tolerance": tolerance,
        "tolerance_is": chosen,
        "baseline": baseline,
        "no_estimate": problem,
        "points": found,
        "excess_capacity": excess_capacity(
            estimate_axes or [a.name for a in axes],
            found if search is None else [p for p in found if p["finished"] == p["seeds"]],
            tolerance,
            problem,
        ),
        "trials": records,
        "failed": [r["name"] for r in records if r["status"] == "failed"],
        "pending": [r["name"] for r in records if r["status"] == "pending"],
    }
    return summary if search is None else search.annotate(summary)


# ------------------------------------------------------------------ words


def number(value, digits=4):
    """A number as people read it: ``-`` for none, ``inf``, and never a
    negative zero."""
    if value is None:
        return "-"
    if value == math.inf:
        return "inf"
    text = f"{value:.{digits}g}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def change(fraction):
    """What a constrained network removed from a quantity of the
    baseline's, in words: ``16% removed``, or ``5% larger than the
    baseline's`` for a negative removal; a removal that rounds to zero
    reads ``0% removed``, never ``-0%``."""
    if fraction is None:
        return None
    percent = int(round(100 * fraction))
    return f"{percent}% removed" if percent >= 0 else f"{-percent}% larger than the baseline's"


def removal_sentence(estimate):
    """``it removes 16% of the network Lipschitz bound, 7% of the sum of
    distances``; a quantity the constrained network ended with larger is
    said so (``it leaves the sum of distances 5% larger than the
    baseline's``)."""
    removed, larger = [], []
    for key, what in (
        ("removed_lipschitz", "network Lipschitz bound"),
        ("removed_distance", "sum of distances"),
    ):
        if estimate.get(key) is None:
            continue
        percent = int(round(100 * estimate[key]))
        if percent >= 0:
            removed.append(f"{percent}% of the {what}")
        else:
            larger.append(f"the {what} {-percent}% larger than the baseline's")
    parts = ["it removes " + ", ".join(removed)] if removed else []
    parts += ["it leaves " + " and ".join(larger)] if larger else []
    return "; ".join(parts)


def contradiction_lines(axis, estimate):
    """One line per tighter point within the tolerance with looser ones over
    it."""
    lines = []
    for found in estimate["contradictions"]:
        looser = ", ".join(
            f"{point_label(q['settings'])} (test error {number(q['test_error'])}"
            + (", did not learn" if q["learned"] is False else "")
            + ")"
            for q in found["looser_over"]
        )
        lines.append(
            f"- {axis.name}: {point_label(found['within'])} is within the tolerance (test "
            f"error {number(found['test_error'])}), but the looser {looser} "
            f"{'is' if len(found['looser_over']) == 1 else 'are'} not"
        )
    return lines


def axis_line(axis, estimate):
    """The line a sweep ends with for one axis."""
    if estimate["tightest"] is None:
        return f"{axis.name}: no estimate: {estimate['reason']}"
    line = (
        f"{axis.name}: tightest value within tolerance {axis.label(estimate['tightest'])}"
        f" (test error {estimate['test_error']:.4f})"
    )
    removed = removal_sentence(estimate)
    line += f"; {removed}" if removed else ""
    if estimate["contradictions"]:
        line += (
            f" ({len(estimate['contradictions'])} tighter value(s) within the tolerance "
            "have looser ones over it: the safe answer is given; see sweep.md, more --seeds "
            "would settle it)"
        )
    return line


def markdown(sweep, axes):
    """``sweep.md``: the estimate (or why there is none) first, then every
    point and trial."""
    baseline, tolerance, chance = sweep["baseline"], sweep["tolerance"], sweep["chance"]
    lines = ["# Excess capacity", ""]
    if sweep["no_estimate"]:
        lines += [f"**No estimate: {sweep['no_estimate']}.**", ""]
    if baseline and baseline["test_error"] is not None:
        lines += [
            f"Unconstrained baseline: test error {number(baseline['test_error'])} "
            f"(over {baseline['finished']} seed(s)), network Lipschitz bound "
            f"{number(baseline['network_lipschitz'])}, sum of distances "
            f"{number(baseline['sum_of_distances'])}. Tolerance "
            f"{number(tolerance)} ({sweep['tolerance_is']}).",
            "",
        ]
    if chance["test_error"] is not None:
        lines += [
            f"Chance level: test error {number(chance['test_error'])} (the most frequent of "
            f"{chance['num_classes']} classes is {number(100 * chance['majority_share'], 3)}% "
            f"of {chance['num_test']} test images); a network learned when its test error is "
            f"more than {number(chance['margin'])} (two binomial standard errors) below it.",
            "",
        ]
    else:
        lines += [
            f"Chance level unknown ({chance['unknown']}): whether the networks learned "
            "was not checked.",
            "",
        ]
    search = sweep.get("search")
    estimated = [axis for axis in axes if axis.name in sweep["excess_capacity"]]
    if search and search["kind"] == "frontier":
        estimated = []
        lines += search_module().frontier_markdown(sweep, axes)
    else:
        lines += [
            "| axis | tightest value within tolerance | its test error | network Lipschitz "
            "bound (removed) | sum of distances (removed) |",
            "|---|---|---|---|---|",
        ]
    for axis in estimated:
        est = sweep["excess_capacity"][axis.name]
        if est["tightest"] is None:
            reason = "see above" if sweep["no_estimate"] else est["reason"]
            lines.append(f"| {axis.name} | none: {reason} | | | |")
            continue
        lines.append(
            f"| {axis.name} | {axis.label(est['tightest'])} | {number(est['test_error'])} | "
            f"{number(est['network_lipschitz'])} ({change(est['removed_lipschitz']) or '-'})"
            f" | {number(est['sum_of_distances'])} ({change(est['removed_distance']) or '-'})"
            " |"
        )
    if estimated:
        lines += [
            "",
            "The tightest value of an axis at which a point's mean test error stays within the "
            "baseline's plus the tolerance, its networks learned, and no looser point with the "
            "other settings equal is over the tolerance (the safe answer). What it removes is "
            "measured on the trained networks: 1 - L/L0 for the network Lipschitz bound and "
            "1 - D/D0 for the sum of (2,1) distances to initialization, against the baseline's.",
        ]
    if search and search["kind"] == "bisect":
        lines += search_module().bisection_markdown(sweep, axes[0])
    contradictions = [
        line
        for axis in axes
        if axis.name in sweep["excess_capacity"]
        for line in contradiction_lines(axis, sweep["excess_capacity"][axis.name])
    ]
    if contradictions:
        limit = baseline["test_error"] + tolerance
        lines += [
            "",
            "## Records that contradict each other",
            "",
            "Test error should grow as a bound tightens, but these tighter points are within "
            f"the tolerance (a mean test error of at most {number(limit)}) while looser ones "
            "(the other settings equal) are over it or did not learn. The estimate does not "
            "take them; more seeds (--seeds) would tell noise from effect.",
            "",
            *contradictions,
        ]
    lines += [
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
            ", ".join(f"{k}={number(v)}" for k, v in point["settings"].items())
            or "unconstrained baseline"
        )
        lines.append(
            f"| {settings} | {point['finished']}/{point['seeds']} | {number(point['test_error'])}"
            f" ({number(point['test_error_spread'])}){_not_learned(point)} | "
            f"{number(point['train_error'])} | "
            f"{number(point['network_lipschitz'])} | {number(point['sum_of_distances'])} | "
            + (
                f"{number(best[1])} ({best[0]}{', vacuous' if best[1] >= 1 else ''})"
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


def search_module():
    """`keras_capacity.sweep.search`, which renders its own parts (it
    imports this module)."""
    from keras_capacity.sweep import search

    return search


def _not_learned(point):
    """The points table's mark of a point whose networks did not learn."""
    if point["learned"] is not False:
        return ""
    if len(point["not_learned_seeds"]) == point["finished"]:
        return ", **did not learn**"
    seeds = ", ".join(str(s) for s in point["not_learned_seeds"])
    return f", **did not learn** (seed {seeds})"


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
    search = sweep.get("search")
    if search and search["kind"] == "frontier":
        return search_module().frontier_figure(sweep, axes, path)
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
        failed = [v for v in values if best[v]["learned"] is False]
        if failed:
            panel.plot(
                [_position(axis, v, finite) for v in failed],
                [best[v]["test_error"] for v in failed],
                linestyle="none",
                marker="x",
                markersize=10,
                color="tab:red",
                label="did not learn",
            )
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
        estimated = sweep["excess_capacity"][axis.name]
        estimate = estimated["tightest"]
        if estimate is not None:
            panel.axvline(
                _position(axis, estimate, finite),
                color="tab:red",
                linestyle=":",
                linewidth=2,
                label=f"excess-capacity estimate ({axis.label(estimate)})",
            )
        if estimate is not None and estimated.get("over") is not None:
            panel.axvspan(
                estimated["over"],
                estimate,
                color="tab:red",
                alpha=0.15,
                label=f"bracket: over at {axis.label(estimated['over'])}, within at "
                f"{axis.label(estimate)}",
            )
        if x:  # nothing finished yet: an empty panel, linear axes
            panel.set_xscale("log")
            panel.set_xticks(x, [axis.label(v) for v in values])
            if search:  # a search's values crowd at the boundary
                panel.tick_params(axis="x", labelrotation=60)
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
    title = "test error against each constraint (excess capacity)"
    if search:
        title += f"\nbisection on a log scale to a factor {search['resolution']:g}"
    if sweep["no_estimate"]:
        title += "\nno estimate: " + sweep["no_estimate"].partition(":")[0]
    figure_.suptitle(title)
    figure_.tight_layout()
    try:
        figure_.savefig(path, dpi=100, format="png")  # the path may be a temporary name
    finally:
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


def _write_whole(path, write_to):
    """Writes ``path`` whole or not at all: ``write_to`` writes a temporary
    name (one per process, since several processes of a sweep may write
    at once), which then replaces ``path``; if anything fails on the way
    the temporary file is removed and ``path`` is left as it was."""
    temporary = f"{path}.partial{os.getpid()}"
    try:
        write_to(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _write_text(text):
    def write_to(path):
        with open(path, "w") as f:
            f.write(text)

    return write_to


def write(workdir, sweep, axes):
    """Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` into
    ``workdir``, each whole or not at all (`_write_whole`): a reader,
    or a sweep killed while writing, never finds half a file."""
    text = json.dumps(_finite_or_none(sweep), indent=2) + "\n"
    _write_whole(os.path.join(workdir, RESULTS), _write_text(text))
    _write_whole(os.path.join(workdir, MARKDOWN), _write_text(markdown(sweep, axes)))
    _write_whole(os.path.join(workdir, FIGURE), lambda path: figure(sweep, axes, path))
