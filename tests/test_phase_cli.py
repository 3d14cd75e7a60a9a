"""``narset phase``: one-line errors on bad input, and no broken file when interrupted."""

import json

import numpy as np
import pytest

from narset_jax.cli import main
from sims.phase import AXIS_NAMES, METRICS


def _run(capsys, *argv):
    rc = main(["phase", *argv])
    return rc, capsys.readouterr().err


BASE = ("--regions", "4", "--steps", "5", "--seeds", "1")


@pytest.mark.parametrize(
    "x, y, message",
    [
        ("bta:0:1:4", "gap:0:0.5:4", "unknown axis 'bta'; valid axes: " + ", ".join(AXIS_NAMES)),
        ("beta:1:0.5:4", "gap:0:0.5:4", "axis beta: lo must be < hi, got lo=1 and hi=0.5"),
        ("beta:0.1:1:1", "gap:0:0.5:4", "axis beta: resolution must be an int >= 2, got 1"),
        ("beta:0.1:1:4", "gap:0:0.9:4", "use gap <= 0.55"),
        ("beta:0.1:1", "gap:0:0.5:4", "expected NAME:LO:HI:N"),
    ],
)
def test_bad_axes_exit_2_with_one_line(capsys, tmp_path, x, y, message):
    rc, err = _run(capsys, "--x", x, "--y", y, *BASE, "--out", str(tmp_path / "o"))
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("narset phase: error: ")
    assert message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--set", "bta=1"), "unknown NarsetParams field 'bta'"),
        (("--set", "beta=0.5"), "--set beta conflicts with axis 'beta'"),
        (("--set", "alpha"), "expected FIELD=VALUE"),
        (("--set", "alpha=-1"), "NarsetParams.alpha must be in (0, inf)"),
        (("--compare", "beta=1"), "--compare 'beta=1': --set beta conflicts with axis 'beta'"),
        (("--compare", "k_enter=0.5"), "--compare 'k_enter=0.5': NarsetParams.k_enter must be"),
        (("--compare", ","), "expected FIELD=VALUE[,FIELD=VALUE...]"),
        (("--scenario", "nope"), "unknown scenario 'nope'; valid: steady"),
        (("--regions", "0"), "--regions must be a positive int"),
        (("--controller", "x"), "unknown --controller 'x'"),
        (("--name", "a/b"), "--name must be a plain file stem"),
        (("--params", "/nonexistent.toml"), "cannot read params"),
    ],
)
def test_bad_options_exit_2(capsys, tmp_path, extra, message):
    rc, err = _run(capsys, "--x", "beta:0.1:1:2", "--y", "gap:0:0.5:2", *BASE,
                   "--out", str(tmp_path / "o"), *extra)
    assert rc == 2, err
    assert err.count("\n") == 1
    assert message in err


def test_interrupted_compute_writes_nothing(capsys, tmp_path, monkeypatch):
    import sims.phase

    def interrupted(*args, on_progress=None, **kwargs):
        on_progress(0, 4)
        raise KeyboardInterrupt

    monkeypatch.setattr(sims.phase, "phase_grid", interrupted)
    rc, err = _run(capsys, "--x", "beta:0.1:1:2", "--y", "gap:0:0.5:2", *BASE,
                   "--out", str(tmp_path / "o"), "--json", str(tmp_path / "s.json"))
    assert rc == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def _synthetic_grid(n=5):
    xs, ys = np.linspace(0.02, 1, n), np.linspace(0, 0.5, n)
    X, Y = np.meshgrid(xs, ys)
    metrics = {}
    for name in METRICS:
        mean = X * 2 - Y * 3 + 1 if name == "thrash" else X + Y
        if name == "spoofer_capture":
            mean = 0 * X
        metrics[name] = {"label": name, "unit": "u", "mean": mean.tolist(),
                         "std": (0.1 * X).tolist()}
    axis = lambda name, v: {"name": name, "values": v.tolist(), "label": name, "unit": "u"}  # noqa: E731
    return {"x": axis("beta", xs), "y": axis("gap", ys), "metrics": metrics,
            "config": {"thrash": {"flap_ref": 5.0, "churn_ref": 10.0},
                       "scenario": {"name": "steady"}}}


def test_plot_writes_png_and_svg(tmp_path):
    from narset_jax.plots.phase import main as plot_main
    from narset_jax.plots.phase import plot_phase

    grid = _synthetic_grid()
    grid["variants"] = [{"label": "beta=1", "thrash": grid["metrics"]["thrash"]},
                        {"label": "k_enter=1", "thrash": {"mean": [[2.0] * 5] * 5}}]
    paths = plot_phase(grid, [tmp_path / "a.svg"],
                       markers=[{"label": "default", "x": 0.3, "y": 0.25},
                                {"label": "far", "x": 9.0, "y": 0.1}])
    assert [p.name for p in paths] == ["a.svg"]
    svg = (tmp_path / "a.svg").read_text()
    assert "thrash = 1" in svg and "(outside)" in svg
    assert "thrash = 1 with beta=1 -->" in svg  # a boundary in range: drawn
    assert "thrash = 1 with k_enter=1 (none: all above, 2.00..2.00)" in svg
    # Redraw from the JSON, as PNG.
    (tmp_path / "g.json").write_text(json.dumps(grid))
    assert plot_main(["--grid", str(tmp_path / "g.json"), "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_plot_leaves_no_image(tmp_path, monkeypatch):
    import matplotlib.figure

    from narset_jax.plots.phase import plot_phase

    target = tmp_path / "p.png"
    target.write_bytes(b"old image")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(KeyboardInterrupt):
        plot_phase(_synthetic_grid(), [target])
    assert target.read_bytes() == b"old image"  # the previous image is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind
