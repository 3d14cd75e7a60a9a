"""``narset sweep``: a tiny sweep over two sizes and two device counts, its JSON and plot,
and its one-line errors."""

import json

import pytest

from narset_jax.cli import main
from narset_jax.distributed import DeviceError, parse_device_counts
from sims.sweep import parse_sizes, summarise


def test_parse_sizes_and_devices():
    assert parse_sizes("1e2, 1e3,5000") == [100, 1000, 5000]
    assert parse_device_counts("4,1,2") == (1, 2, 4) and parse_device_counts(None) == (1,)
    for bad in ("1.5", "abc", "0", ""):
        with pytest.raises(ValueError):
            parse_sizes(bad)
    with pytest.raises(DeviceError):
        parse_device_counts("0")


def test_sweep_cli_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    code = main([
        "sweep", "--regions", "64", "--steps", "3", "--devices", "1,2",
        "--repeats", "2", "--warmup", "1", "--budget", "global",
        "--json", str(out), "--plot", str(png), "--no-progress",
    ])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["devices"], r["n_regions"]) for r in rows] == [(1, 64), (2, 64)]
    for r in rows:
        assert r["throughput"] == pytest.approx(r["n_regions"] * 3 / r["seconds"])
        assert len(r["times"]) == 2 and r["compile_s"] > 0
        assert r["budget"] == "global" and r["path"] == "gspmd"
        assert r["bytes_per_region"] > 0
        assert r["collectives_in_loop"]["all-gather"] == 0
    assert set(data["summary"]) == {"1", "2"}
    assert data["machine"]["backend"] == "cpu"
    assert data["command"].startswith("narset sweep --regions 64 --steps 3 --devices 1,2")
    assert png.stat().st_size > 1000
    assert "M region-windows/s" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--regions", "1e2,x"], "--regions"),
        (["--steps", "0"], "--steps"),
        (["--devices", "64"], "needs 64 local devices"),
        (["--coordinator", "localhost:1"], "go together"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id"),
    ],
)
def test_sweep_bad_input_is_one_line(argv, message, capsys):
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_summarise_linearity():
    from sims.sweep import SweepRow

    def row(n, s):
        return SweepRow(n, 1, 10, "region", "shard_map", 1.0, s, [s], n * 10 / s,
                        None, None, None, None, None, 0)

    out = summarise([row(10**4, 0.1), row(10**5, 1.0), row(10**6, 10.0)])
    assert out["1"]["linearity"]["time_ratio_over_size_ratio"] == pytest.approx(1.0)
