"""Memory estimates and the up-front refusal of sizes beyond the machine."""

import pytest

from narset_jax.errors import UserError
from narset_jax.resources import available_memory, check_fits, closed_loop_bytes, format_bytes


def test_estimate_scales_with_regions_dtype_and_records():
    base = closed_loop_bytes(1000)
    assert base == 1000 * 640
    assert closed_loop_bytes(2000) == 2 * base
    assert closed_loop_bytes(1000, itemsize=8) == 2 * base
    assert closed_loop_bytes(1000, record_windows=10) > base
    assert closed_loop_bytes(1000, copies=3) == 3 * base


def test_refusal_names_the_request_and_the_estimate():
    check_fits(10, "--regions 1", available=100)
    with pytest.raises(UserError, match=r"--regions 1e12: needs about 582\.1 TiB .* 1\.0 GiB"):
        check_fits(closed_loop_bytes(10**12), "--regions 1e12", available=2**30)
    avail = available_memory()
    assert avail is None or avail > 0


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
