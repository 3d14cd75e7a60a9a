"""Evolution strategies (``narset tune --method es``) and the surrogate report.

The ES on a quadratic in the raw space whose optimum is known; ``narset tune --method es``
end to end at a tiny size (N = 16, T = 10, two generations of four candidates), its
population evaluated in one compiled call per generation, its exact resume; and the
surrogate report's numbers against separately run relaxed and hard ``sims.rollout``s on
the same keys."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.cli import main
from narset_jax.params import NarsetParams
from sims import tune
from sims.tune import es
from sims.tune import loss as tune_loss


@pytest.mark.parametrize("strategy", es.ES_STRATEGIES)
def test_es_converges_on_a_quadratic(strategy):
    """``sum_n (raw_n - target_n)^2`` over the 30 tuned fields, from 0: the mean ends
    within a fifth of the starting distance of the known optimum, and the history is
    consistent (best <= mean, best so far is the running minimum)."""
    rng = np.random.default_rng(0)
    target = dict(zip(tune.TUNED, rng.uniform(-1, 1, len(tune.TUNED))))
    seen = []
    quadratic = jax.jit(lambda pop: sum((pop[n] - target[n]) ** 2 for n in tune.TUNED))

    def objective(pop, generation):
        seen.append((generation, {n: np.shape(v) for n, v in pop.items()}))
        return quadratic(pop)

    lr = {"open_es": 0.1}.get(strategy)
    state, hist = es.evolve(objective, dict.fromkeys(tune.TUNED, 0.0), generations=50,
                            population=16, strategy=strategy, sigma=0.5, learning_rate=lr)
    dist = lambda raw: np.sqrt(sum((float(raw[n]) - target[n]) ** 2 for n in tune.TUNED))  # noqa: E731
    assert dist(state.raw) < 0.2 * dist(dict.fromkeys(tune.TUNED, 0.0))
    assert state.iteration == 50 and len(hist.loss) == 50
    assert hist.best[-1] < 0.5 * hist.best[0]  # Open-ES's fixed s.d. bounds its mean loss
    assert all(b <= m for b, m in zip(hist.best, hist.loss))
    assert hist.best_so_far == list(np.minimum.accumulate(hist.best))
    assert [g for g, _ in seen] == list(range(50))
    assert seen[0][1] == dict.fromkeys(tune.TUNED, (16,))


def test_es_settings_config_and_run_config(tmp_path):
    """The ``[es]`` table sets the ES settings; they are part of an ES run's settings
    (checked on --resume) and left out of a gradient run's, whose history is unchanged."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[es]\nstrategy = "cma_es"\npopulation = 4\nsigma = 0.25\n'
                   "learning_rate = 0.5\n")
    settings, explicit = tune.build_settings({"method": "es"}, config=cfg)
    assert {k: settings[k] for k in tune.ES_KEYS} == {
        "method": "es", "es_strategy": "cma_es", "es_population": 4, "es_sigma": 0.25,
        "es_learning_rate": 0.5}
    assert set(tune.ES_KEYS) <= explicit
    run = dict(settings, scenarios=["crisis"], iters=8, regions=4, steps=3)
    assert set(tune.ES_KEYS) <= set(tune.run_config(run))
    grad = dict(run, method="grad")
    assert not set(tune.ES_KEYS) & set(tune.run_config(grad))
    default, _ = tune.build_settings({})
    assert default["method"] == "grad" and default["es_strategy"] == "snes"
    assert default["es_population"] == 8 and default["es_learning_rate"] is None


def test_es_state_is_one_pytree_of_fixed_dtypes():
    """The strategy's state is what the tune checkpoint saves (as adam's): its leaves keep
    their dtypes and shapes across generations, and it resumes where it stopped."""
    raw0 = dict.fromkeys(tune.TUNED, 0.0)
    f = lambda pop, g: sum(pop[n] ** 2 for n in tune.TUNED)  # noqa: E731
    _, _, s0 = es.es_init(raw0, population=4)
    s2, h2 = es.evolve(f, raw0, generations=2, population=4)
    leaves = lambda s: [(np.asarray(x).dtype, np.shape(x)) for x in jax.tree.leaves(s)]  # noqa: E731
    assert leaves(s0.opt_state) == leaves(s2.opt_state)
    s1, h1 = es.evolve(f, raw0, generations=2, population=4, stop_after=1)
    again, h = es.evolve(f, raw0, generations=2, population=4, state=s1, history=h1)
    assert h.loss == h2.loss
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(s2)):
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


def test_es_settings_are_checked(tmp_path, capsys):
    base = ["tune", "--scenario", "crisis", "--iters", "6", "--regions", "4", "--steps", "3",
            "--out", str(tmp_path / "o"), "--method", "es"]
    # Without a warm start: 6 is not a multiple of the default population, 8.
    assert main(base + ["--warm-start", "0"]) == 2
    err = capsys.readouterr().err
    assert "multiple of the ES population 8" in err and len(err.strip().splitlines()) == 1
    # With the default warm start, half of 6 leaves no whole generation of 8.
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "leaves no generation of 8" in err and len(err.strip().splitlines()) == 1
    cfg = tmp_path / "c.toml"
    cfg.write_text('[es]\nstrategy = "open_es"\npopulation = 3\n')
    assert main(base + ["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "even integer >= 2" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# narset tune --method es, float64 so that the report's numbers can be compared tightly.

N, T, B, P, K = 16, 10, 2, 4, 8
COMMON = ["tune", "--scenario", "crisis", "--iters", str(K), "--regions", str(N), "--steps",
          str(T), "--batch", str(B), "--dtype", "float64", "--method", "es", "--no-progress",
          "--holdout", "steady", "--baselines", "none"]


@pytest.fixture(scope="module")
def es_run(tmp_path_factory):
    """One ES run, with every call of ``population_objectives`` recorded."""
    d = tmp_path_factory.mktemp("es")
    cfg = d / "es.toml"
    # No warm start: these tests follow ES itself from the starting params (the warm start
    # is tested with the gradient in test_tune.py).
    cfg.write_text(f"[es]\npopulation = {P}\n[random_search]\nwarm_start = 0.0\n")
    calls = []
    real = tune_loss.population_objectives

    def spy(raw, temps, base, scenarios, keys, weights, cfg):
        calls.append((base.hysteresis, base.budget, {np.shape(v) for v in raw.values()},
                      keys.shape))
        return real(raw, temps, base, scenarios, keys, weights, cfg=cfg)

    mp = pytest.MonkeyPatch()
    mp.setattr(tune_loss, "population_objectives", spy)
    before = real._cache_size()
    try:
        assert main(COMMON + ["--config", str(cfg), "--out", str(d / "out"),
                              "--json", str(d / "summary.json")]) == 0
    finally:
        mp.undo()
    return d, cfg, calls, real._cache_size() - before


def test_cli_method_es_end_to_end(es_run):
    d, _, calls, compiled = es_run
    out = d / "out"
    # Every generation's population is one vmapped call of the hard rollout (one budget
    # mode here), all generations sharing one compiled program; the surrogate report's
    # relaxed candidates (the K random-search ones and the final params) are one more.
    hard_calls = [c for c in calls if c[0] == "hard"]
    assert hard_calls == [("hard", "region", {(P,)}, (1, B))] * (K // P)
    assert [c for c in calls if c[0] != "hard"] == [("soft", "region", {(K + 1,)}, (1, B))]
    assert compiled == 2

    hist = json.loads((out / "history.json").read_text())
    assert hist["settings"]["method"] == "es" and hist["settings"]["es_population"] == P
    assert hist["es"] == {"generations": K // P, "population": P, "rollouts": K * B,
                          "result": "the search distribution's mean after the last generation"}
    h = hist["history"]
    assert len(h["loss"]) == K // P and all(np.isfinite(h["loss"]))
    assert all(b <= m for b, m in zip(h["best"], h["loss"]))
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["protocol"]["rollouts"]["es"] == ev["protocol"]["rollouts"]["random_search"] == K * B
    assert set(ev["results"]) == {"crisis", "steady"}
    for rows in ev["results"].values():
        assert set(rows) == {"defaults", "tuned", "random_search"}
        assert all(np.isfinite(r["objective"]["mean"]) for r in rows.values())
    tuned = NarsetParams.from_toml(out / "params.toml")
    assert tuned.hysteresis == "hard" and tuned != NarsetParams()
    for name in ("loss_curve.png", "params_before_after.png", "random_search_params.toml",
                 "checkpoint.npz"):
        assert (out / name).stat().st_size > 0
    s = json.loads((d / "summary.json").read_text())
    assert s["method"] == "es" and s["generations"] == K // P and s["population"] == P
    assert s["rollouts"] == {"es": K * B, "random_search": K * B}
    assert s["surrogate"]["rollouts"] == {**s["surrogate"]["rollouts"],
                                          "relaxed": (K + 1) * B, "hard": B}


def test_cli_method_es_resumes_bit_for_bit(es_run, tmp_path, capsys):
    d, cfg, _, _ = es_run
    cut = tmp_path / "cut"
    assert main(COMMON + ["--config", str(cfg), "--out", str(cut), "--stop-after", "1"]) == 0
    assert not (cut / "params.toml").exists()
    assert main(["tune", "--out", str(cut), "--resume", "--method", "grad"]) == 2
    assert "method = 'grad' differs from the checkpoint's 'es'" in capsys.readouterr().err
    assert main(["tune", "--out", str(cut), "--resume", "--no-progress", "--holdout", "steady",
                 "--baselines", "none"]) == 0
    assert "resuming at generation 1" in capsys.readouterr().err
    full = d / "out"
    assert (cut / "params.toml").read_text() == (full / "params.toml").read_text()
    h_full = json.loads((full / "history.json").read_text())["history"]
    h_cut = json.loads((cut / "history.json").read_text())["history"]
    assert {k: v for k, v in h_full.items() if k != "seconds"} == \
        {k: v for k, v in h_cut.items() if k != "seconds"}
    assert json.loads((full / "evaluation.json").read_text()) == \
        json.loads((cut / "evaluation.json").read_text())


def _objective(params, keys):
    """Mean objective of separate ``sims.rollout``s, one per key (float64, crisis)."""
    crisis = sims.load_scenario("crisis").astype(jnp.float64)
    p = params.astype(jnp.float64)
    return float(np.mean([float(sims.objective(sims.rollout(p, crisis, k, N, T,
                                                            dtype=jnp.float64).metrics))
                          for k in keys]))


def test_surrogate_report_equals_separate_rollouts(es_run):
    """The report's relaxed (soft) and hard objectives at the start and at the final
    params are those of ``sims.rollout`` on training iteration 0's keys; its Spearman is
    that of the random search's candidates' hard scores against their relaxed ones."""
    d, _, _, _ = es_run
    rep = json.loads((d / "summary.json").read_text())["surrogate"]
    assert rep["hysteresis"] == "soft" and rep["candidates"] == K
    keys = tune.batch_keys(tune.run_keys(0, tune.STREAM_TRAIN), 0, 1, B)[0]
    start = tune.to_params(tune.candidate_raws(NarsetParams(), 1)[0], NarsetParams())
    final = NarsetParams.from_toml(d / "out" / "params.toml")
    crisis = rep["scenarios"]["crisis"]
    for which, params in (("start", start), ("final", final)):
        got = crisis[which]
        want_hard = _objective(params.replace(hysteresis="hard"), keys)
        want_soft = _objective(params.replace(hysteresis="soft"), keys)
        assert got["hard"] == pytest.approx(want_hard, rel=1e-9, abs=1e-12), which
        assert got["relaxed"] == pytest.approx(want_soft, rel=1e-9, abs=1e-12), which
        assert got["gap"] == pytest.approx(got["relaxed"] - got["hard"], rel=1e-12)
        assert got["gap_share"] == pytest.approx(abs(got["gap"]) / abs(got["hard"]))
        assert rep["all"][which] == got  # one training scenario
    # The start's hard objective is the random search's candidate 0.
    rs = json.loads((d / "out" / "history.json").read_text())["random_search"]["scores"]
    assert crisis["start"]["hard"] == pytest.approx(rs[0], rel=1e-12)
    assert -1 <= crisis["spearman"] <= 1


def test_spearman():
    assert tune.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert tune.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their mean rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3).
    assert tune.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert tune.spearman([1, 1, 1], [1, 2, 3]) is None
    assert tune.spearman([1.0], [2.0]) is None
