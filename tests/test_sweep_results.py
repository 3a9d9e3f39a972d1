"""The sweep's results on small hand-made records: a baseline that did not
learn, seeds that disagree on it, a constrained point that did not learn,
records that contradict each other, removals said in words, and files that
are written whole or not at all."""

import json
import os
import re

import matplotlib.figure
import pytest
import tensorflow as tf

from keras_capacity.sweep import grid, results
from keras_capacity.sweep.__main__ import describe

# Ten classes of 100 test images each: chance level 0.9, and a network
# learned when its test error is below 0.9 - 2 sqrt(0.9 * 0.1 / 1000)
# = 0.9 - 0.01897 = 0.88103.
CHANCE = results.chance_level([100] * 10, "hand-made labels")


def record(settings, seed, test_error, lipschitz=100.0, distances=50.0):
    point = "_".join(f"{k}={v:g}" for k, v in settings.items()) or "baseline"
    return {
        "name": f"{point}_seed{seed}",
        "settings": settings,
        "seed": seed,
        "baseline": not settings,
        "status": "done",
        "test_error": test_error,
        "train_error": test_error / 2,
        "network_lipschitz": lipschitz,
        "sum_of_distances": distances,
        "test_error_bounds": {"ours_norms": 5.0},
        "num_test": 1000,
        "error": None,
    }


def baseline(seed, test_error):
    return record({}, seed, test_error, lipschitz=400.0, distances=200.0)


def sweep_of(records, specs=("dist.inner:1,2,4,8,16",), tolerance=None, chance=CHANCE):
    axes = grid.parse_grid(list(specs))
    return axes, results.summarize({}, axes, records, tolerance=tolerance, chance=chance)


# ------------------------------------------------------------------ chance


def test_chance_is_the_most_frequent_test_class_and_learning_is_two_errors_below():
    assert CHANCE["test_error"] == pytest.approx(0.9)
    assert CHANCE["margin"] == pytest.approx(2 * (0.9 * 0.1 / 1000) ** 0.5)
    skewed = results.chance_level([700, 200, 100], "skewed")
    assert skewed["test_error"] == pytest.approx(0.3)  # always answering class 0
    assert results.learned(0.88, CHANCE) and not results.learned(0.885, CHANCE)
    assert not results.learned(0.95, CHANCE)  # worse than chance did not learn either
    assert results.learned(0.5, results.unknown_chance("no labels")) is None


def test_a_baseline_at_chance_gives_no_estimate_and_says_why(tmp_path):
    # The case: a baseline at 0.902, every point at chance too, one
    # of them nominally "within tolerance".
    records = [
        baseline(0, 0.902),
        record({"dist.inner": 4.0}, 0, 0.902),
        record({"dist.inner": 16.0}, 0, 0.9),
    ]
    axes, sweep = sweep_of(records, ["dist.inner:4,16"])
    reason = sweep["no_estimate"]
    assert reason.startswith("the unconstrained baseline did not learn: its test error 0.902")
    assert "chance level 0.9" in reason
    assert "--epochs" in reason and "--limit_to" in reason and "--lr" in reason
    estimate = sweep["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] is None and estimate["reason"] == reason
    # One line on the terminal, then where the results are.
    lines = describe(sweep, axes, str(tmp_path)).splitlines()
    assert lines == [f"no estimate: {reason}", f"results in {tmp_path / 'sweep.md'}"]
    results.write(str(tmp_path), sweep, axes)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["excess_capacity"]["dist.inner"]["tightest"] is None
    assert saved["excess_capacity"]["dist.inner"]["reason"] == reason
    assert saved["no_estimate"] == reason and saved["chance"]["test_error"] == pytest.approx(0.9)
    text = (tmp_path / "sweep.md").read_text()
    assert f"**No estimate: {reason}.**" in text
    assert "| dist.inner | none: see above |" in text
    assert "0.902 (0), **did not learn**" in text  # the baseline's row


def test_seeds_that_disagree_on_the_baseline_give_no_estimate():
    records = [
        baseline(0, 0.30),
        baseline(1, 0.89),
        record({"dist.inner": 4.0}, 0, 0.31),
        record({"dist.inner": 4.0}, 1, 0.32),
    ]
    axes, sweep = sweep_of(records, ["dist.inner:4"], tolerance=0.5)
    reason = sweep["no_estimate"]
    assert reason.startswith("the seeds disagree on the unconstrained baseline: seed 1 did not")
    assert "while seed 0 did (0.3)" in reason and "--epochs" in reason
    assert sweep["excess_capacity"]["dist.inner"]["tightest"] is None
    assert sweep["baseline"]["learned"] is False and sweep["baseline"]["not_learned_seeds"] == [1]


def test_a_baseline_that_learned_gives_an_estimate():
    records = [baseline(0, 0.87), record({"dist.inner": 4.0}, 0, 0.87)]
    _, sweep = sweep_of(records, ["dist.inner:4"])
    assert sweep["no_estimate"] is None
    assert sweep["excess_capacity"]["dist.inner"]["tightest"] == 4.0


def test_a_point_that_did_not_learn_is_marked_and_never_the_estimate(tmp_path):
    # A weak baseline (0.85, learned) and a generous tolerance: dist.inner=1
    # is within it (0.89 <= 0.90) but at chance; dist.inner=4 learned.
    records = [
        baseline(0, 0.85),
        record({"dist.inner": 1.0}, 0, 0.89),
        record({"dist.inner": 4.0}, 0, 0.86, lipschitz=200.0, distances=150.0),
    ]
    axes, sweep = sweep_of(records, ["dist.inner:1,4"], tolerance=0.05)
    tight = next(p for p in sweep["points"] if p["settings"] == {"dist.inner": 1.0})
    assert tight["learned"] is False and tight["not_learned_seeds"] == [0]
    estimate = sweep["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] == 4.0 and estimate["contradictions"] == []
    results.write(str(tmp_path), sweep, axes)
    rows = [
        line for line in (tmp_path / "sweep.md").read_text().splitlines() if "dist.inner=" in line
    ]
    assert "**did not learn**" in rows[0] and "did not learn" not in rows[1]
    # Only a point at chance within tolerance: no estimate, and why.
    alone = [baseline(0, 0.85), record({"dist.inner": 1.0}, 0, 0.89)]
    _, sweep = sweep_of(alone, ["dist.inner:1"], tolerance=0.05)
    estimate = sweep["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] is None and "did not learn" in estimate["reason"]


def test_a_seed_that_did_not_learn_marks_its_point():
    records = [
        baseline(0, 0.10),
        baseline(1, 0.10),
        record({"dist.inner": 4.0}, 0, 0.10),
        record({"dist.inner": 4.0}, 1, 0.90),
    ]
    _, sweep = sweep_of(records, ["dist.inner:4"], tolerance=1.0)
    point = next(p for p in sweep["points"] if not p["baseline"])
    assert point["learned"] is False and point["not_learned_seeds"] == [1]
    assert sweep["excess_capacity"]["dist.inner"]["tightest"] is None
    assert "(seed 1)" in results.markdown(sweep, grid.parse_grid(["dist.inner:4"]))


def contradicting():
    """Baseline 0.10, tolerance 0.01 (limit 0.11): dist.inner 1 fails, 2
    passes by luck, 4 fails, 8 and 16 pass."""
    return [
        baseline(0, 0.10),
        record({"dist.inner": 1.0}, 0, 0.40),
        record({"dist.inner": 2.0}, 0, 0.105, lipschitz=40.0, distances=20.0),
        record({"dist.inner": 4.0}, 0, 0.13),
        record({"dist.inner": 8.0}, 0, 0.10, lipschitz=100.0, distances=50.0),
        record({"dist.inner": 16.0}, 0, 0.10, lipschitz=200.0, distances=100.0),
    ]


def test_contradicting_records_give_the_safe_answer_and_are_named(tmp_path):
    axes, sweep = sweep_of(contradicting(), tolerance=0.01)
    estimate = sweep["excess_capacity"]["dist.inner"]
    # Not the lucky 2: the tightest value below which no looser point fails.
    assert estimate["tightest"] == 8.0
    assert estimate["removed_lipschitz"] == pytest.approx(0.75)
    assert estimate["contradictions"] == [
        {
            "within": {"dist.inner": 2.0},
            "test_error": 0.105,
            "looser_over": [{"settings": {"dist.inner": 4.0}, "test_error": 0.13, "learned": True}],
        }
    ]
    results.write(str(tmp_path), sweep, axes)
    text = (tmp_path / "sweep.md").read_text()
    assert "## Records that contradict each other" in text and "--seeds" in text
    assert (
        "- dist.inner: dist.inner=2 is within the tolerance (test error 0.105), but the "
        "looser dist.inner=4 (test error 0.13) is not"
    ) in text
    line = describe(sweep, axes, str(tmp_path)).splitlines()[0]
    assert line.startswith("dist.inner: tightest value within tolerance 8 (test error 0.1000)")
    assert "safe answer" in line and "--seeds" in line
    # Only the lucky point and a failing looser one: no estimate, and why.
    _, sweep = sweep_of(contradicting()[:4], tolerance=0.01)
    estimate = sweep["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] is None and "looser one over it" in estimate["reason"]


def test_contradictions_are_judged_among_points_with_the_other_settings_equal():
    # Two axes. At lip=x1, dist.inner=2 passes but 4 fails: contradicting.
    # At lip=x2, both pass: dist.inner=2 is safe there, so it is the estimate.
    records = [
        baseline(0, 0.10),
        record({"dist.inner": 2.0, "lip": 1.0}, 0, 0.10),
        record({"dist.inner": 4.0, "lip": 1.0}, 0, 0.20),
        record({"dist.inner": 2.0, "lip": 2.0}, 0, 0.105),
        record({"dist.inner": 4.0, "lip": 2.0}, 0, 0.10),
    ]
    _, sweep = sweep_of(records, ["dist.inner:2,4", "lip:1,2"], tolerance=0.01)
    dist = sweep["excess_capacity"]["dist.inner"]
    assert dist["tightest"] == 2.0 and dist["settings"] == {"dist.inner": 2.0, "lip": 2.0}
    assert [c["within"] for c in dist["contradictions"]] == [{"dist.inner": 2.0, "lip": 1.0}]
    # Along lip, at dist.inner=4, the tighter lip=x1 fails and the looser
    # x2 passes: no contradiction; at dist.inner=2 both pass.
    lip = sweep["excess_capacity"]["lip"]
    assert lip["tightest"] == 1.0 and lip["contradictions"] == []


def test_points_from_any_search_not_only_a_full_grid():
    # A bisection's points: unevenly spaced, one axis value never tried at
    # another's setting, an unfinished one. Only the finished ones count.
    records = [
        baseline(0, 0.10),
        record({"dist.inner": 3.7}, 0, 0.105),
        record({"dist.inner": 1.9}, 0, 0.30),
        record({"dist.inner": 2.6}, 0, 0.108),
        dict(record({"dist.inner": 3.1}, 0, 0.5), status="pending", test_error=None),
    ]
    _, sweep = sweep_of(records, ["dist.inner:1.9,2.6,3.1,3.7"], tolerance=0.01)
    assert sweep["excess_capacity"]["dist.inner"]["tightest"] == 2.6


# ------------------------------------------------------------------- words


def test_a_larger_bound_is_said_in_words_and_no_number_is_negative_zero(tmp_path):
    records = [
        baseline(0, 0.10),  # L0 = 400, D0 = 200
        record({"dist.inner": 4.0}, 0, 0.10, lipschitz=420.0, distances=200.2),
    ]
    axes, sweep = sweep_of(records, ["dist.inner:4"], tolerance=0.01)
    estimate = sweep["excess_capacity"]["dist.inner"]
    assert estimate["removed_lipschitz"] == pytest.approx(-0.05)
    assert estimate["removed_distance"] == pytest.approx(-0.001)
    line = results.axis_line(axes[0], estimate)
    assert line == (
        "dist.inner: tightest value within tolerance 4 (test error 0.1000); it removes 0% "
        "of the sum of distances; it leaves the network Lipschitz bound 5% larger than the "
        "baseline's"
    )
    results.write(str(tmp_path), sweep, axes)
    text = (tmp_path / "sweep.md").read_text()
    assert "420 (5% larger than the baseline's)" in text and "200.2 (0% removed)" in text
    for said in (text, line):  # no "-0", "-0%" or "-5%" anywhere
        assert not re.search(r"(^|[^\w.])-\d+(\.\d+)?%|(^|[\s(|])-0([\s)|%]|$)", said)
    assert results.change(-0.004) == "0% removed" and results.change(0.16) == "16% removed"
    assert results.number(-0.0) == "0" and results.number(-1e-9, 3) == "-1e-09"


def test_the_chance_level_of_the_trials_own_summaries_is_preferred():
    records = [dict(r, test_class_counts=[500, 250, 250]) for r in contradicting()]
    _, sweep = sweep_of(records, tolerance=0.01, chance=None)
    assert sweep["chance"]["test_error"] == pytest.approx(0.5)
    assert sweep["chance"]["source"] == "the trials' test labels"
    # Without any: unchecked, said so, and the estimate as before.
    axes, sweep = sweep_of(contradicting(), tolerance=0.01, chance=None)
    assert sweep["baseline"]["learned"] is None and sweep["excess_capacity"]["dist.inner"][
        "tightest"
    ] == (8.0)
    assert "whether the networks learned was not checked" in results.markdown(sweep, axes)


# ------------------------------------------------------------ whole files


def whole(workdir):
    """The files a sweep wrote, each checked whole; nothing half-written or
    temporary lies beside them."""
    names = set(os.listdir(workdir))
    assert names <= {results.RESULTS, results.MARKDOWN, results.FIGURE}, names
    if results.RESULTS in names:
        json.loads((workdir / results.RESULTS).read_text())
    if results.MARKDOWN in names:
        assert (workdir / results.MARKDOWN).read_text().endswith(f"![sweep]({results.FIGURE})\n")
    if results.FIGURE in names:
        tf.io.decode_png(tf.io.read_file(str(workdir / results.FIGURE)))
    return names


@pytest.mark.parametrize("interrupted", [results.RESULTS, results.MARKDOWN, results.FIGURE])
def test_an_interrupted_write_leaves_whole_files_or_none(tmp_path, monkeypatch, interrupted):
    axes, sweep = sweep_of(contradicting(), tolerance=0.01)
    replace = os.replace

    def killed(source, target):
        if os.path.basename(target) == interrupted:
            raise KeyboardInterrupt("killed while writing")
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        results.write(str(tmp_path), sweep, axes)
    assert interrupted not in whole(tmp_path)  # a first write: the file is not there at all
    monkeypatch.setattr(os, "replace", replace)
    results.write(str(tmp_path), sweep, axes)
    before = {name: (tmp_path / name).read_bytes() for name in whole(tmp_path)}
    assert len(before) == 3
    # Interrupted again, with other results: the old file stays, whole.
    monkeypatch.setattr(os, "replace", killed)
    _, other = sweep_of(contradicting(), tolerance=0.5)
    with pytest.raises(KeyboardInterrupt):
        results.write(str(tmp_path), other, axes)
    assert whole(tmp_path) == set(before)
    assert (tmp_path / interrupted).read_bytes() == before[interrupted]


def test_a_figure_that_fails_halfway_leaves_the_last_whole_one(tmp_path, monkeypatch):
    axes, sweep = sweep_of(contradicting(), tolerance=0.01)
    results.write(str(tmp_path), sweep, axes)
    before = (tmp_path / results.FIGURE).read_bytes()

    def half(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half)
    with pytest.raises(OSError, match="disk full"):
        results.write(str(tmp_path), sweep, axes)
    assert whole(tmp_path) == {results.RESULTS, results.MARKDOWN, results.FIGURE}
    assert (tmp_path / results.FIGURE).read_bytes() == before
