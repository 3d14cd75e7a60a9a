"""The evaluation protocol of ``narset tune`` beyond the table: the warm start's split of
the rollout budget, held-out scenario files, the ``tuned`` preset, ``--ecology`` (ES on
the neural ecology; the gradient refused there in one line) and the rollouts and wall
time under the table.

Nothing here compiles a stylised rollout; one tiny neural ES generation (2 regions,
2 windows, 2 candidates, one seed) is the only compiled program."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest

import sims
from narset_jax.cli import main
from narset_jax.errors import UserError
from narset_jax.params import NarsetParams
from sims import tune
from sims.tune import es, evaluation, search
from sims.tune.presets import PRESET_DIR, PRESETS, params_file

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The warm start: the budget's split, and the search it starts from.


@pytest.mark.parametrize(
    "iters,share,population,want",
    [
        (40, 0.5, 1, (20, 20)),
        (40, 0.0, 8, (0, 40)),
        (40, 0.5, 8, (24, 16)),  # ES generations are whole: 16 = 2 x 8
        (5, 0.5, 1, (3, 2)),
        (8, 0.5, 4, (4, 4)),
        (10, 0.9, 1, (9, 1)),
    ],
)
def test_warm_start_split_spends_exactly_the_budget(iters, share, population, want):
    got = search.warm_start_split(iters, share, population)
    assert got == want and sum(got) == iters and got[1] % population == 0


def test_warm_start_split_refuses_an_empty_method():
    with pytest.raises(ValueError, match="leaves no generation of 8"):
        search.warm_start_split(8, 0.5, 8)
    with pytest.raises(ValueError, match="leaves no iteration"):
        search.warm_start_split(1, 0.5, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        search.warm_start_split(4, 1.0, 1)


def test_random_search_prefix_is_the_smaller_search():
    """Candidate ``i`` does not depend on how many are drawn, so the warm start's best of
    the first ``k`` candidates of the full search is a random search of ``k``."""
    base = NarsetParams()
    full = search.candidate_raws(base, 12, sigma=0.7)
    for k in (1, 5, 11):
        part = search.candidate_raws(base, k, sigma=0.7)
        for a, b in zip(part, full):
            assert {n: float(v) for n, v in a.items()} == {n: float(b[n]) for n in a}


def test_warm_start_is_the_best_of_the_prefix():
    scores = np.array([0.5, -1.0, 0.2, -3.0, -2.0])
    result = search.SearchResult(raw={}, params=NarsetParams(), scores=scores, best=3,
                                 rollouts=10, raws=[{"i": i} for i in range(5)])
    assert search.warm_start(result, 0) is None
    assert search.warm_start(result, 1) == 0
    assert search.warm_start(result, 3) == 1
    assert search.warm_start(result, 5) == 3 == result.best
    assert result.raw_at(4) == {"i": 4}
    with pytest.raises(ValueError, match="scored 5"):
        search.warm_start(result, 6)


def test_warm_start_setting_is_read_and_checked(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[random_search]\nwarm_start = 0.25\n")
    settings, explicit = tune.build_settings({}, config=cfg)
    assert settings["warm_start"] == 0.25 and "warm_start" in explicit
    assert "warm_start" in tune.run_config({**settings, "scenarios": ["crisis"], "iters": 4,
                                            "regions": 4, "steps": 3})
    base = ["tune", "--scenario", "crisis", "--regions", "4", "--steps", "3",
            "--out", str(tmp_path / "o")]
    rc, err = _run(base + ["--iters", "2", "--warm-start", "1.5"], capsys)
    assert rc == 2 and "--warm-start must be in [0, 1)" in err
    assert len(err.strip().splitlines()) == 1
    rc, err = _run(base + ["--iters", "1", "--warm-start", "0.5"], capsys)  # none left
    assert rc == 2 and "leaves no iteration" in err and len(err.strip().splitlines()) == 1
    # The defaults: none for the gradient, half the budget for ES (whose default
    # population, 8, then needs --iters >= 16).
    assert settings["method"] == "grad" and tune.build_settings({})[0]["warm_start"] is None
    assert search.WARM_START == {"grad": 0.0, "es": 0.5}
    rc, err = _run(base + ["--iters", "8", "--method", "es"], capsys)
    assert rc == 2 and "leaves no generation of 8" in err


def test_format_budget_names_both_budgets_and_the_times():
    warm = {"random_search_candidates": 20, "method_iterations": 20, "start": 7}
    text = evaluation.format_budget("grad", warm, 320, 8, {
        "train": 30.0, "random_search": 10.0, "surrogate": 1.0, "evaluation": 5.0})
    assert ("tuned random search 20 candidates x 8, then 20 gradient iterations x 8 from "
            "its best (candidate 7) = 320; random_search 40 candidates x 8 = 320.") in text
    assert "Wall time: tuned 35.0 s" in text and "random_search 10.0 s" in text
    cold = {"random_search_candidates": 0, "method_iterations": 5, "start": None}
    text = evaluation.format_budget("es", cold, 40, 8, {
        "train": 3.0, "random_search": 1.0, "surrogate": 0.0, "evaluation": 1.0}, 5)
    assert "tuned 1 ES generations x 5 candidates x 8 = 40" in text
    assert "Wall time: tuned 3.0 s" in text


# ---------------------------------------------------------------------------------------
# Held-out scenario files.


def test_holdout_accepts_scenario_files(tmp_path):
    mine = tmp_path / "my_world.toml"
    mine.write_text('base = "crisis"\nshock_rate = 0.05\n')
    held = evaluation.load_holdout([str(mine), "dropout"], ["crisis"])
    assert list(held) == ["my_world", "dropout"]
    want = sims.load_scenario("crisis").replace(shock_rate=0.05)
    assert float(held["my_world"].shock_rate) == float(want.shock_rate) == 0.05
    # By default: every shipped scenario of the ecology not trained on.
    assert list(evaluation.load_holdout(None, ["crisis", "steady"])) == [
        n for n in sims.SCENARIOS if n not in ("crisis", "steady")]


def test_bad_holdout_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "broken.toml"
    bad.write_text("shock_rate = \n")
    unknown = tmp_path / "typo.toml"
    unknown.write_text("shok_rate = 0.1\n")
    again = tmp_path / "dup.toml"
    again.write_text('name = "dropout"\n')
    trained = tmp_path / "crisis.toml"
    trained.write_text("shock_rate = 0.1\n")
    cases = [
        ([str(tmp_path / "missing.toml")], "missing.toml"),
        ([str(bad)], "broken.toml"),
        ([str(unknown)], "shok_rate"),
        (["dropout", str(again)], "already named 'dropout'"),
        ([str(trained)], "also a training scenario"),
        (["nope"], "unknown scenario 'nope'"),
    ]
    for names, message in cases:
        with pytest.raises(UserError, match="--holdout") as err:
            evaluation.load_holdout(names, ["crisis"])
        assert message in str(err.value) and "\n" not in str(err.value)
    # Through the command line: refused before anything is compiled.
    argv = ["tune", "--scenario", "crisis", "--iters", "2", "--regions", "4", "--steps", "3",
            "--out", str(tmp_path / "o"), "--holdout", str(bad)]
    rc, err = _run(argv, capsys)
    assert rc == 2 and "--holdout" in err and "broken.toml" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# The tuned preset.


def test_tuned_preset_resolves_and_loads(tmp_path):
    path = Path(params_file("tuned"))
    assert path == PRESET_DIR / PRESETS["tuned"] and path.is_file()
    tuned = NarsetParams.from_toml(path)
    assert tuned.hysteresis == "hard" and tuned != NarsetParams()
    assert NarsetParams().hysteresis == "hard"  # the hand-set defaults stay the defaults
    # It is the worked example's result: every tuned field is in the file, and no budget
    # line (each scenario's recommended mode applies, as in its evaluation).
    data = tomllib.loads(path.read_text())
    assert set(tune.TUNED) <= set(data) and "budget" not in data
    # A path is still a path (also one that is not a preset's name).
    mine = tmp_path / "mine.toml"
    mine.write_text("beta = 0.7\n")
    assert params_file(str(mine)) == str(mine) and params_file(None) is None
    assert params_file("./tuned") == "./tuned"
    # Shipped with the package.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "tune/presets/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["sims"]


def test_simulate_and_tune_accept_the_preset(tmp_path, monkeypatch, capsys):
    import sims.simulate as simulate_mod

    seen = {}

    def fake_simulate(params, scenario, **kwargs):
        seen["params"], seen["file"] = params, kwargs["params_file"]
        raise UserError("stop here")

    monkeypatch.setattr(simulate_mod, "simulate", fake_simulate)
    rc, err = _run(["simulate", "--scenario", "crisis", "--regions", "4", "--steps", "3",
                    "--out", str(tmp_path / "sim"), "--params", "tuned", "--no-progress"],
                   capsys)
    assert rc == 2 and "stop here" in err
    assert seen["file"] == params_file("tuned")
    assert seen["params"] == NarsetParams.from_toml(params_file("tuned"))
    settings, explicit = tune.build_settings({}, params=params_file("tuned"))
    assert settings["base_params"] == NarsetParams.from_toml(
        params_file("tuned")).to_dict() and settings["budget"] is None
    rc, err = _run(["simulate", "--scenario", "crisis", "--regions", "4", "--steps", "3",
                    "--out", str(tmp_path / "sim2"), "--params", str(tmp_path / "no.toml")],
                   capsys)
    assert rc == 2 and "no.toml" in err


# ---------------------------------------------------------------------------------------
# --ecology: ES on the neural ecology; the gradient refused there.


def test_grad_on_the_neural_ecology_is_one_line(tmp_path, capsys):
    argv = ["tune", "--ecology", "neural", "--scenario", "steady", "--iters", "2",
            "--regions", "2", "--steps", "2", "--out", str(tmp_path / "o"), "--no-progress"]
    rc, err = _run(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--method grad is not available on the neural ecology" in err
    assert "--method es" in err
    rc, err = _run(argv[:2] + ["marine"] + argv[3:], capsys)
    assert rc == 2 and "unknown --ecology 'marine'" in err
    stylised = sims.load_scenario("crisis")
    assert evaluation.relaxed_step_error(None, stylised) is None


def test_es_tunes_on_the_neural_ecology():
    """One generation of two candidates on the neural ecology (2 regions, 2 windows, one
    seed): the population is scored through the Ecology interface, hard."""
    from sims.ecologies.neural import Neural, load_neural_scenario

    eco = Neural(hidden=8, n_slots=2, seed_hidden=4, steps=1, batch=8)
    scenario = load_neural_scenario("steady", num_samples=400, n_val=64)
    assert evaluation.relaxed_step_error(eco, scenario) is not None
    cfg = tune.TuneConfig(2, 2, ecology=eco, checkpoint=False)
    base = NarsetParams(hysteresis="hard")
    state, hist = es.es_train(base, [scenario], iters=2, cfg=cfg, batch=1, population=2,
                              sigma=0.5)
    assert state.iteration == 1 and len(hist.loss) == 1
    assert np.isfinite(hist.loss[0]) and hist.best[0] <= hist.loss[0]
    start = es.start_raw(base)
    moved = [n for n in tune.TUNED if float(state.raw[n]) != float(start[n])]
    assert moved  # the mean moved
    assert jax.tree.structure(state.raw) == jax.tree.structure(start)
