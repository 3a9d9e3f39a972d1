"""What a sweep trains: its whole grid, or only what finds the boundary.

The excess-capacity estimate needs only the boundary: the tightest value
whose test error stays within the tolerance. Where a user pays per
training (the paper's 200 epochs of a ResNet-18 per point), a search
replaces the grid (``--search``):

* ``grid`` (the default): every point of the ``--grid`` axes.
* ``bisect``: one axis given as a bracket, ``--grid=NAME:LOOSE,TIGHT``.
  The sweep trains the baseline and both ends. A tight end within the
  tolerance is the answer; a loose end over it is reported as such, never
  as an estimate. Otherwise it bisects on a log scale (over
  `log_grid`, the dense grid at
  ``--resolution``) until the tightest value within the tolerance and the
  loosest over it are less than a factor ``--resolution`` apart. With ``k``
  workers (KerasTuner's, see `keras_capacity.sweep.engine`) it is
  k-section: each round trains ``k`` interior values (``k // --seeds``
  points, at least one, so that a round is one wave of trainings).
* ``frontier``: two axes, the rows ``NAME:V1,V2,...`` and the bracket
  ``NAME:LOOSE,TIGHT``; one bisection per row (the paper's joint picture,
  e.g. ``lip`` against ``dist``).

**Decisions** read only finished points, through
`keras_capacity.sweep.results`: a point is decided when every seed
of it finished, and it *passes* when it learned and its mean test error
over the seeds is within the baseline's plus the tolerance
(`results.passes`). The value within the tolerance is the safe one
(`results.axis_estimate`): no looser decided value fails. The value
over it is the loosest failing one below that. So records that contradict
the assumption below move the answer to the looser, safe side, and are
named in ``sweep.md``.

**The assumption.** A search trains only the values that decide where the
tolerance is crossed *if* the test error grows as the bound tightens (in
expectation); ``sweep.md`` and ``sweep.json`` say so.

**Stateless, so resumable.** What to train next is a function of the
finished run directories (and of what is in flight in this search), never
of KerasTuner's state: killed and run again, a search picks up where the
trials stand (an interrupted trial inside the bracket is resumed first).
With the outcomes equal, any number of workers reaches the same answer as
one process: both search the same log grid until the values on either side
of the boundary are neighbours on it.
"""

import dataclasses

from keras_capacity.sweep import grid, results

KINDS = ("grid", "bisect", "frontier")
DEFAULT_RESOLUTION = 1.25
ASSUMPTION = (
    "The search assumes that the test error grows as the bound tightens (in expectation): it "
    "trains only the values that decide where the tolerance is crossed, and takes the values "
    "it did not train to agree with their trained neighbours. Records that contradict the "
    "assumption are named under 'Records that contradict each other', and the safe (looser) "
    "answer is given."
)
# Row states in sweep.json, and what they mean.
RESOLVED, TIGHT_END, LOOSE_END, OPEN = "resolved", "tight_end_within", "loose_end_over", "open"


@dataclasses.dataclass
class Plan:
    """What a search wants trained now (trial names, in order), and the
    lines that say why (one per new round)."""

    wanted: list
    lines: list = dataclasses.field(default_factory=list)


def make(config, specs, seeds, kind="grid", resolution=None):
    """The search of ``--search=kind`` over the ``--grid`` specs; a
    `GridError` (one line) for bad settings,
    before anything trains."""
    if kind not in KINDS:
        raise grid.GridError(f"--search must be one of {', '.join(KINDS)}, got {kind!r}.")
    if kind == "grid":
        if resolution is not None:
            raise grid.GridError(
                "--resolution applies to --search=bisect and --search=frontier, not to a grid."
            )
        return GridSearch.parse(config, specs, seeds)
    return BoundarySearch(config, specs, seeds, kind, resolution)


class GridSearch:
    """Every point of the grid, each once per search, in order."""

    kind, adaptive = "grid", False

    def __init__(self, axes, trials):
        self.axes, self.trials = axes, trials
        self.seeds = sum(t.is_baseline for t in trials) or 1

    @classmethod
    def parse(cls, config, specs, seeds):
        axes = grid.parse_grid(specs)
        return cls(axes, grid.trials(config, axes, seeds))

    def describe(self):
        points = len(self.trials) // self.seeds - 1
        return (
            f"{len(self.trials)} trials ({points} grid points and the baseline, "
            f"{self.seeds} seed(s) each)"
        )

    def plan(self, summary, started=(), workers=1):
        done = {r["name"] for r in summary["trials"] if r["status"] == "done"}
        return Plan([t.name for t in self.trials if t.name not in done])

    def annotate(self, summary):
        return summary


@dataclasses.dataclass
class Row:
    """One bisection's state: ``lo`` (over) and ``hi`` (within) are indices
    into the searched values; ``wanted`` the indices to train now: the ends,
    or the begun but unfinished values inside the bracket (interrupted,
    failed, in flight) and then the round, its k-section."""

    value: object  # the row's value of the rows axis; None for a bisection
    status: str
    lo: int | None = None
    hi: int | None = None
    wanted: tuple = ()
    round: tuple = ()
    decided: int = 0


class BoundarySearch:
    """``bisect`` (one row) or ``frontier`` (one bisection per value of the
    first axis); see the module docstring."""

    adaptive = True

    def __init__(self, config, specs, seeds, kind, resolution=None):
        self.kind = kind
        axes_wanted = 1 if kind == "bisect" else 2
        if len(specs) != axes_wanted:
            shape = (
                "one --grid=NAME:LOOSE,TIGHT (two axes are --search=frontier)"
                if kind == "bisect"
                else "two --grid axes: the rows NAME:V1,V2,... and the bracket NAME:LOOSE,TIGHT"
            )
            raise grid.GridError(f"--search={kind} takes {shape}; got {len(specs)} --grid.")
        self.resolution = grid.check_resolution(
            DEFAULT_RESOLUTION if resolution is None else resolution
        )
        self.bracket = grid.parse_bracket(specs[-1], kind)
        self.rows_axis = grid.parse_axis(specs[0]) if kind == "frontier" else None
        if self.rows_axis is not None:
            grid.parse_grid(specs)  # the two names: not repeated, not overlapping
        self.searched = grid.log_grid(self.bracket, self.resolution)
        self.axes = (self.searched,) if self.rows_axis is None else (self.rows_axis, self.searched)
        # A frontier's estimate is per row (its ``frontier``); sweep.json's
        # excess_capacity then holds the searched axis over all rows.
        self.estimate_axes = None if self.rows_axis is None else [self.searched.name]
        self.seeds = seeds
        self.trials = grid.trials(config, self.axes, seeds)
        self.rows = [None] if self.rows_axis is None else list(self.rows_axis.values)
        self._names = {}  # (row value, index) -> the trial names of its seeds
        self.baseline = [t.name for t in self.trials if t.is_baseline]
        for trial in self.trials:
            if trial.is_baseline:
                continue
            settings = trial.settings()
            key = (self._row_of(settings), self.searched.values.index(settings[self.name]))
            self._names.setdefault(key, []).append(trial.name)

    @property
    def name(self):
        return self.searched.name

    def _row_of(self, settings):
        return None if self.rows_axis is None else settings[self.rows_axis.name]

    def describe(self):
        tight, loose = self.bracket.values
        what = (
            f"bisection of {self.name}"
            if self.rows_axis is None
            else f"a frontier: for each {self.rows_axis.name} of "
            f"{', '.join(self.rows_axis.label(v) for v in self.rows_axis.values)}, "
            f"a bisection of {self.name}"
        )
        return (
            f"{what} between {self.searched.label(tight)} and {self.searched.label(loose)} on "
            f"{len(self.searched.values)} values a factor < {self.resolution:g} apart, "
            f"{self.seeds} seed(s) each, and the baseline"
        )

    # ------------------------------------------------------------ deciding

    def _limit(self, summary):
        baseline = summary["baseline"]
        if baseline is None or baseline["finished"] < self.seeds or summary["tolerance"] is None:
            return None
        return baseline["test_error"] + summary["tolerance"]

    def _rows(self, summary, started=(), workers=1):
        """Every row's `Row` (what it knows, what it wants next)."""
        points = {}
        for point in summary["points"]:
            if not point["baseline"]:
                settings = point["settings"]
                index = self.searched.values.index(settings[self.name])
                points[(self._row_of(settings), index)] = point
        limit = self._limit(summary)
        rows = [self._row(row, points, limit, started) for row in self.rows]
        searching = [row for row in rows if row.status == OPEN and row.hi is not None]
        per_row = max(1, workers // (self.seeds * max(1, len(searching))))
        for row in searching:
            row.round = ksection(row.lo, row.hi, per_row)
            row.wanted = tuple(dict.fromkeys(row.wanted + row.round))
        return rows

    def _row(self, row, points, limit, started):
        last = len(self.searched.values) - 1
        decided = {i: p for (r, i), p in points.items() if r == row and p["finished"] == self.seeds}
        names = {i: self._names[(row, i)] for i in range(last + 1)}
        pending = [i for i in names if i not in decided and any(n in started for n in names[i])]
        state = Row(row, OPEN, decided=len(decided))
        ends = tuple(i for i in (last, 0) if i not in decided)
        if ends or limit is None:
            state.wanted = ends
            return state
        safe, _ = results.axis_estimate(self.name, list(decided.values()), limit)
        if safe is None:
            state.status = LOOSE_END  # the loose end decided, and over the tolerance
            return state
        state.hi = self.searched.values.index(safe["settings"][self.name])
        over = [i for i, p in decided.items() if i < state.hi and not results.passes(p, limit)]
        state.lo = max(over) if over else None
        if state.lo is None:
            state.status = TIGHT_END
        elif state.hi - state.lo <= 1:
            state.status = RESOLVED
        else:
            state.wanted = tuple(i for i in pending if state.lo < i < state.hi)
        return state

    def plan(self, summary, started=(), workers=1):
        """The trials to train now: the baseline's unfinished seeds, then
        per row its ends, or the begun but unfinished values inside its
        bracket and its round, the k-section of the bracket (``workers //
        seeds`` values, shared among the rows still searching, at least
        one each). ``started``: the trials begun (on disk or in this
        search). Nothing once the baseline did not learn."""
        wanted = [name for name in self.baseline]
        if summary["no_estimate"]:
            return Plan([])
        lines = []
        for row in self._rows(summary, set(started), workers):
            for index in row.wanted:
                wanted += self._names[(row.value, index)]
            if row.round:
                lines.append(self._round_line(row))
        done = {r["name"] for r in summary["trials"] if r["status"] == "done"}
        return Plan([name for name in wanted if name not in done], lines)

    def _round_line(self, row):
        label = self.searched.label
        values = ", ".join(label(self.searched.values[i]) for i in row.round)
        prefix = "" if row.value is None else f"{self.rows_axis.name}={self._label_row(row)}: "
        lo, hi = self.searched.values[row.lo], self.searched.values[row.hi]
        return (
            f"search: {prefix}{self.name}={label(lo)} is over the tolerance, {label(hi)} within "
            f"(a factor {hi / lo:.3g}); training {values}"
        )

    def _label_row(self, row):
        return self.rows_axis.label(row.value)

    # ------------------------------------------------------------- output

    def outcome(self, summary):
        """``sweep.json``'s ``search``: the settings, the assumption, and per
        row its state: ``within`` (the safe tightest value within the
        tolerance) and ``over`` (the loosest over it below), their factor,
        and the measured bounds at ``within``."""
        baseline = summary["baseline"]
        rows = [] if summary["no_estimate"] else self._rows(summary)
        found = {}
        for point in summary["points"]:
            if not point["baseline"] and point["finished"] == self.seeds:
                settings = point["settings"]
                found[(self._row_of(settings), settings[self.name])] = point
        entries = []
        for row in rows:
            entry = {
                "row": {} if row.value is None else {self.rows_axis.name: row.value},
                "status": row.status,
                "within": None,
                "over": None,
                "factor": None,
                "decided_points": row.decided,
            }
            if row.hi is not None:
                within = self.searched.values[row.hi]
                point = found[(row.value, within)]
                entry.update(within=within, test_error=point["test_error"])
                for metric, key in (
                    ("network_lipschitz", "lipschitz"),
                    ("sum_of_distances", "distance"),
                ):
                    value, reference = point[metric], baseline and baseline[metric]
                    entry[metric] = value
                    entry[f"removed_{key}"] = (
                        1 - value / reference if value is not None and reference else None
                    )
            if row.lo is not None:
                entry["over"] = self.searched.values[row.lo]
                entry["factor"] = entry["within"] / entry["over"]
            if row.status == LOOSE_END:
                loose = found[(row.value, self.searched.values[-1])]
                entry["loose_end_test_error"] = loose["test_error"]
                entry["loose_end_learned"] = loose["learned"]
            entries.append(entry)
        trained = {
            (self._row_of(p["settings"]), p["settings"][self.name])
            for p in summary["points"]
            if not p["baseline"] and p["finished"]
        }
        status = (
            "no_estimate"
            if summary["no_estimate"]
            else "finished"
            if rows and all(r.status != OPEN for r in rows)
            else "unfinished"
        )
        return {
            "kind": self.kind,
            "axis": self.name,
            "rows_axis": None if self.rows_axis is None else self.rows_axis.name,
            "bracket": list(self.bracket.values),
            "resolution": self.resolution,
            "values": list(self.searched.values),
            "assumption": ASSUMPTION,
            "status": status,
            "trained_points": len(trained),
            "dense_points": len(self.searched.values) * len(self.rows),
            "rows": entries,
        }

    def annotate(self, summary):
        """Adds the search to ``summary`` (``sweep.json``): ``search`` (and
        ``frontier``, its rows); for a bisection, its estimate gains the
        bracket (``over``, ``factor``, ``resolution``, ``search_status``),
        and a loose end over the tolerance is said so instead of an estimate."""
        outcome = self.outcome(summary)
        summary["search"] = outcome
        if self.kind == "frontier":
            summary["frontier"] = outcome["rows"]
            return summary
        estimate = summary["excess_capacity"][self.name]
        row = outcome["rows"][0] if outcome["rows"] else None
        estimate.update(resolution=self.resolution, search_status=outcome["status"])
        if row is None:
            return summary
        estimate.update(over=row["over"], factor=row["factor"], search_status=row["status"])
        if row["status"] == LOOSE_END:
            estimate["reason"] = loose_end_reason(self.searched, row, summary)
        elif row["status"] == OPEN and estimate["tightest"] is None:
            estimate["reason"] = "the search has not decided the bracket's ends yet"
        return summary


def loose_end_reason(axis, row, summary):
    """Why a search whose loose end is over the tolerance has no estimate."""
    loose = axis.values[-1]
    limit = summary["baseline"]["test_error"] + summary["tolerance"]
    why = (
        "its networks did not learn"
        if row["loose_end_learned"] is False
        else f"test error {results.number(row['loose_end_test_error'])} > {results.number(limit)}"
    )
    return (
        f"the loose end {axis.name}={axis.label(loose)} of the bracket is over the tolerance "
        f"({why}): the boundary is looser than the bracket; give a looser end"
    )


def ksection(lo, hi, k):
    """``k`` indices splitting ``(lo, hi)`` into ``k + 1`` near-equal parts
    (fewer when the bracket holds fewer): bisection for ``k = 1``."""
    return tuple(sorted({lo + (hi - lo) * i // (k + 1) for i in range(1, k + 1)} - {lo, hi}))


# ------------------------------------------------------------------ words


def _row_words(axis, entry, search, summary):
    """What one bisection found, in a sentence (bold where it is the answer)."""
    label, resolution = axis.label, search["resolution"]
    if entry["status"] == RESOLVED:
        return (
            f"the boundary lies between {axis.name}={label(entry['over'])} (over the tolerance) "
            f"and {label(entry['within'])} (within it), a factor {entry['factor']:.3g} < "
            f"{resolution:g}: the estimate is {label(entry['within'])}"
        )
    if entry["status"] == TIGHT_END:
        return (
            f"the tight end {axis.name}={label(entry['within'])} is already within the "
            f"tolerance: it is the estimate (the capacity can be constrained at least that far; "
            "a tighter end would say how much further)"
        )
    if entry["status"] == LOOSE_END:
        return f"no estimate: {loose_end_reason(axis, entry, summary)}"
    if entry["within"] is not None and entry["over"] is not None:
        return (
            f"unfinished: {axis.name}={label(entry['over'])} is over the tolerance and "
            f"{label(entry['within'])} within, a factor {entry['factor']:.3g}, not yet below "
            f"{resolution:g}"
        )
    return "unfinished: the bracket's ends are not decided yet"


UNFINISHED = (
    "The search has not finished: it is running, or a trial failed or was interrupted "
    "(see 'Not finished'); the same command run again goes on from here and retries them."
)


def bisection_markdown(sweep, axis):
    """``sweep.md``'s part on a bisection: the answer with its bracket, how
    many trainings it took, and the assumption it rests on."""
    search = sweep["search"]
    lines = [
        "",
        "## Search",
        "",
        f"Bisection of {axis.name} on a log scale between {axis.label(search['bracket'][0])} "
        f"and {axis.label(search['bracket'][1])}, to a factor {search['resolution']:g}: "
        f"{search['trained_points']} of the {search['dense_points']} values of the dense grid "
        "at that resolution trained (each with every seed), and the baseline.",
        "",
    ]
    if sweep["no_estimate"]:
        lines += ["The baseline did not learn, so the search stopped (see above).", ""]
    for entry in search["rows"]:
        lines += [f"**{_capital(_row_words(axis, entry, search, sweep))}.**", ""]
    if search["status"] == "unfinished":
        lines += [UNFINISHED, ""]
    lines += [f"*Assumption.* {search['assumption']}"]
    return lines


def frontier_markdown(sweep, axes):
    """``sweep.md``'s frontier: per row of the first axis, the tightest
    value of the second within the tolerance, the loosest over it, and the
    network Lipschitz bound and sum of distances there."""
    rows_axis, axis = axes
    search = sweep["search"]
    lines = [
        "## Frontier",
        "",
        f"For each {rows_axis.name}, a bisection of {axis.name} on a log scale between "
        f"{axis.label(search['bracket'][0])} and {axis.label(search['bracket'][1])}, to a factor "
        f"{search['resolution']:g}: {search['trained_points']} of the {search['dense_points']} "
        "points of the dense grid trained (each with every seed), and the baseline.",
        "",
        f"| {rows_axis.name} | tightest {axis.name} within tolerance | loosest over it | "
        "factor | its test error | network Lipschitz bound (removed) | sum of distances "
        "(removed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in search["rows"]:
        row = rows_axis.label(entry["row"][rows_axis.name])
        if entry["within"] is None or entry["status"] == OPEN:
            words = _row_words(axis, entry, search, sweep)
            lines.append(f"| {row} | {words} | | | | | |")
            continue
        lines.append(
            f"| {row} | {axis.label(entry['within'])} | "
            + (axis.label(entry["over"]) if entry["over"] is not None else "- (the tight end)")
            + f" | {results.number(entry['factor'], 3)} | {results.number(entry['test_error'])} | "
            f"{results.number(entry['network_lipschitz'])} "
            f"({results.change(entry['removed_lipschitz']) or '-'}) | "
            f"{results.number(entry['sum_of_distances'])} "
            f"({results.change(entry['removed_distance']) or '-'}) |"
        )
    if sweep["no_estimate"]:
        lines += ["", "The baseline did not learn, so the search stopped (see above)."]
    if search["status"] == "unfinished":
        lines += ["", UNFINISHED]
    lines += [
        "",
        "Each row's value within the tolerance is its safe one: its mean test error over the "
        "seeds is within the baseline's plus the tolerance, its networks learned, and no looser "
        f"{axis.name} of that row is over it. What it removes is measured on the trained "
        "networks against the baseline's (1 - L/L0, 1 - D/D0).",
        "",
        f"*Assumption.* {search['assumption']}",
    ]
    return lines


def _capital(text):
    return text[:1].upper() + text[1:]


def end_lines(summary, axes):
    """The lines a search ends with (before ``results in ...``): per row
    what it found, then what it cost."""
    search = summary["search"]
    axis = axes[-1]
    lines = []
    for entry in search["rows"]:
        prefix = axis.name
        if search["kind"] == "frontier":
            row = axes[0]
            prefix = f"{row.name}={row.label(entry['row'][row.name])}: {axis.name}"
        words = _row_words(axis, entry, search, summary)
        if entry["within"] is not None and entry["status"] != LOOSE_END:
            words += f" (test error {entry['test_error']:.4f})"
            removed = results.removal_sentence(entry)
            words += f"; {removed}" if removed else ""
        lines.append(f"{prefix}: {words}")
    if summary["no_estimate"]:
        lines = [f"no estimate: {summary['no_estimate']}"]
    lines.append(
        f"{search['kind']}: trained the baseline and {search['trained_points']} of the "
        f"{search['dense_points']} points of the dense grid; the search assumes test error grows "
        "as the bound tightens (see sweep.md)"
    )
    return lines


# ----------------------------------------------------------------- figure


def frontier_figure(sweep, axes, path):
    """``sweep.png`` of a frontier, the paper's joint picture: the test
    error of every trained point as a heatmap over both axes (log-spaced
    columns, untrained cells blank), each row's value within the tolerance
    (the frontier) and the loosest over it marked; beside it the network
    Lipschitz bound and the sum of distances along the frontier. Returns
    what was drawn: ``{"heatmap": rows x columns (None: not trained),
    label: (x, y) of each line}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows_axis, axis = axes
    search = sweep["search"]
    columns, rows = list(search["values"]), list(rows_axis.values)
    heat = np.full((len(rows), len(columns)), np.nan)
    for point in sweep["points"]:
        if point["baseline"] or point["test_error"] is None:
            continue
        settings = point["settings"]
        heat[rows.index(settings[rows_axis.name]), columns.index(settings[axis.name])] = point[
            "test_error"
        ]
    figure_, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    image = left.imshow(
        np.ma.masked_invalid(heat),
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
    )
    figure_.colorbar(image, ax=left, label="test error (mean over the seeds)")
    step = max(1, len(columns) // 6)
    ticks = [i for i in range(0, len(columns), step) if len(columns) - 1 - i >= step / 2]
    ticks.append(len(columns) - 1)
    left.set_xticks(ticks, [axis.label(columns[i]) for i in ticks])
    left.set_yticks(range(len(rows)), [rows_axis.label(v) for v in rows])
    left.set_xlabel(axis.name + (" scale factor" if axis.is_scale else "") + " (log scale)")
    left.set_ylabel(rows_axis.name + (" scale factor" if rows_axis.is_scale else ""))
    drawn = {"heatmap": [[None if np.isnan(v) else float(v) for v in row] for row in heat]}
    frontier = [
        (columns.index(e["within"]), rows.index(e["row"][rows_axis.name]), e)
        for e in search["rows"]
        if e["within"] is not None and e["status"] != LOOSE_END
    ]
    over = [
        (columns.index(e["over"]), rows.index(e["row"][rows_axis.name]))
        for e in search["rows"]
        if e["over"] is not None
    ]
    lines = [
        left.plot(
            [f[0] for f in frontier],
            [f[1] for f in frontier],
            color="white",
            marker="o",
            markeredgecolor="black",
            label="tightest within the tolerance (frontier)",
        )[0],
        left.plot(
            [o[0] for o in over],
            [o[1] for o in over],
            color="tab:red",
            marker="x",
            linestyle="none",
            markersize=9,
            label="loosest over it",
        )[0],
    ]
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    left.set_title("test error of the trained points")
    for line in lines:
        drawn[line.get_label()] = (
            list(map(float, line.get_xdata())),
            list(map(float, line.get_ydata())),
        )
    positions = [f[1] for f in frontier]
    bounds = right.twinx()
    for panel, metric, color, what in (
        (right, "network_lipschitz", "tab:blue", "network Lipschitz bound"),
        (bounds, "sum_of_distances", "tab:orange", "sum of distances"),
    ):
        ys = [f[2][metric] for f in frontier]
        line = panel.plot(positions, ys, color=color, marker="o", label=what)[0]
        drawn[what] = (list(map(float, positions)), [float(y) for y in ys])
        reference = sweep["baseline"] and sweep["baseline"][metric]
        if reference:
            panel.axhline(reference, color=color, linestyle=":", label=f"{what}, baseline")
        panel.set_ylabel(what, color=line.get_color())
        if ys and all(y and y > 0 for y in ys):
            panel.set_yscale("log")
    right.set_xticks(range(len(rows)), [rows_axis.label(v) for v in rows])
    right.set_xlim(-0.5, len(rows) - 0.5)
    right.set_xlabel(rows_axis.name)
    right.set_title("along the frontier")
    handles = right.get_legend_handles_labels()
    more = bounds.get_legend_handles_labels()
    right.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="best")
    title = f"excess capacity: {rows_axis.name} against {axis.name}"
    if sweep["no_estimate"]:
        title += "\nno estimate: " + sweep["no_estimate"].partition(":")[0]
    figure_.suptitle(title)
    figure_.tight_layout()
    try:
        figure_.savefig(path, dpi=100, format="png")
    finally:
        plt.close(figure_)
    return drawn
