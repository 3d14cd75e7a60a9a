"""Scenarios: shipped files, user files, and bad input (no simulation is compiled here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sims
from narset_jax.cli import simulate as cli_simulate
from sims.scenario import SCENARIO_DIR, Scenario, ScenarioError


def test_shipped_names_and_files():
    assert sims.SCENARIOS == ("steady", "crisis", "heterogeneous", "spoofing", "dropout")
    for name in sims.SCENARIOS:
        assert (SCENARIO_DIR / f"{name}.toml").is_file()
        sc = sims.load_scenario(name)
        assert isinstance(sc, Scenario)
        assert sc.name == name
        assert sc.description


def test_cli_choices_come_from_the_library():
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    parser = cli_simulate.add_parser(sub)
    choices = {a.dest: a.choices for a in parser._actions}
    assert tuple(choices["controller"]) == sims.CONTROLLERS
    assert all(name in parser.description for name in sims.SCENARIOS)


def test_float_leaves_are_vmappable_arrays():
    sc = sims.load_scenario("crisis")
    for name in ("noise", "shock_rate", "spoofer_fraction", "dropout_rate", "spread_lr"):
        leaf = getattr(sc, name)
        assert isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
    leaves = jax.tree.leaves(sc)
    assert len(leaves) == len(Scenario.float_names())
    # Metadata is static: scenarios differing only in metadata share a tree structure
    # once it is dropped.
    a = jax.tree.structure(sims.load_scenario("steady").without_metadata())
    b = jax.tree.structure(sims.load_scenario("spoofing").without_metadata())
    assert a == b


def test_scenarios_differ_where_documented():
    steady, crisis = sims.load_scenario("steady"), sims.load_scenario("crisis")
    assert float(crisis.shock_corr) == 1.0 and float(steady.shock_corr) == 0.0
    spoof = sims.load_scenario("spoofing")
    assert float(spoof.spoofer_fraction) > 0 and spoof.budget == "global"
    assert spoof.recommended_params().budget == "global"
    assert steady.recommended_params().budget == "region"
    drop = sims.load_scenario("dropout")
    assert float(drop.dropout_rate) > 0 and float(drop.nan_rate) > 0
    het = sims.load_scenario("heterogeneous")
    assert float(het.spread_fragility) > float(steady.spread_fragility)
    # ``base = "steady"`` inherits steady's values.
    assert float(spoof.spread_lr) == float(steady.spread_lr)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ScenarioError) as err:
        sims.load_scenario("stormy")
    msg = str(err.value)
    assert "stormy" in msg
    for name in sims.SCENARIOS:
        assert name in msg


def test_user_file_with_base(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('base = "crisis"\nnoise = 0.2\nspoofer_fraction = 0.05\n')
    sc = sims.load_scenario(f)
    assert sc.name == "mine"
    assert float(sc.noise) == 0.2
    assert float(sc.shock_corr) == 1.0  # from crisis
    assert float(sc.spoofer_fraction) == 0.05
    # A path given as a string works too.
    assert float(sims.load_scenario(str(f)).noise) == 0.2


def test_unknown_keys_are_named(tmp_path):
    f = tmp_path / "typo.toml"
    f.write_text("noise = 0.1\nshok_rate = 0.2\nwibble = 1\n")
    with pytest.raises(ScenarioError) as err:
        sims.load_scenario(f)
    msg = str(err.value)
    assert str(f) in msg and "shok_rate" in msg and "wibble" in msg


def test_bad_toml_names_file_and_line(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("noise = 0.1\nshock_rate = = 0.2\n")
    with pytest.raises(ScenarioError) as err:
        sims.load_scenario(f)
    msg = str(err.value)
    assert str(f) in msg and "line 2" in msg


def test_bad_values_are_named(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("shock_rate = 1.5\n")
    with pytest.raises(ScenarioError, match=r"shock_rate must be in \[0, 1\], got 1.5"):
        sims.load_scenario(f)
    f.write_text('noise = "loud"\n')
    with pytest.raises(ScenarioError, match="noise must be a number"):
        sims.load_scenario(f)
    f.write_text('budget = "everywhere"\n')
    with pytest.raises(ScenarioError, match="budget"):
        sims.load_scenario(f)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        sims.load_scenario(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match="unknown Scenario field"):
        Scenario().replace(noize=0.1)


def test_to_dict_round_trips():
    sc = sims.load_scenario("heterogeneous")
    again = Scenario.from_dict(sc.to_dict())
    for name in Scenario.float_names():
        assert np.asarray(getattr(again, name)) == np.asarray(getattr(sc, name))
    assert again.name == sc.name and again.budget == sc.budget
