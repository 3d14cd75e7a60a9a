"""MNIST-1D for the neural ecology: generated offline, hashed, and viewed per region.

The arrays come from ``mnist1d.data.make_dataset`` (the package's generator; its
downloader is never called). The generator's arguments and a SHA-256 of the generated
arrays are recorded with the data, so a log can say exactly which dataset a run used.

Every region trains on the same arrays through its own *view* (its traits): a label
permutation (and, after a task switch, a second one), a circular input shift, additive input
noise. The view is applied to each minibatch inside the jitted step, so the data are stored
once, not once per region.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["N_CLASSES", "SEQ_LEN", "Data", "dataset_hash", "make_data", "view"]

N_CLASSES = 10
SEQ_LEN = 40


class Data(eqx.Module):
    """The dataset as JAX arrays: train (minibatches), validation (the telemetry's loss,
    Emrakul's probes) and test (the outcome's accuracy). ``x_*`` are ``[n, 40]`` float32,
    ``y_*`` ``[n]`` int32. The validation split is the tail of mnist1d's train split."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def dataset_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the named arrays' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _generate(num_samples: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    d = make_dataset(args)  # pure generation; never get_dataset (which downloads)
    arrays = {
        "x": np.asarray(d["x"], np.float32),
        "y": np.asarray(d["y"], np.int32),
        "x_test": np.asarray(d["x_test"], np.float32),
        "y_test": np.asarray(d["y_test"], np.int32),
    }
    meta = {k: v for k, v in vars(args).items() if k != "url"}
    return arrays, meta


def make_data(num_samples: int = 4000, seed: int = 42, n_val: int = 256):
    """Generate MNIST-1D and split it.

    **Returns:** ``(data, info)``: a [`Data`][] and a dict with ``args`` (the generator's
    arguments, the package version) and ``sha256`` (of the generated arrays, before the
    float32 view is split into train and validation).
    """
    import mnist1d

    arrays, meta = _generate(int(num_samples), int(seed))
    n_tr = arrays["x"].shape[0]
    if not 0 < n_val < n_tr // 2:
        raise ValueError(f"n_val must be in (0, {n_tr // 2}), got {n_val}")
    data = Data(
        x_train=jnp.asarray(arrays["x"][: n_tr - n_val]),
        y_train=jnp.asarray(arrays["y"][: n_tr - n_val]),
        x_val=jnp.asarray(arrays["x"][n_tr - n_val:]),
        y_val=jnp.asarray(arrays["y"][n_tr - n_val:]),
        x_test=jnp.asarray(arrays["x_test"]),
        y_test=jnp.asarray(arrays["y_test"]),
    )
    version = getattr(mnist1d, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("mnist1d")
    info = {"args": dict(meta, n_val=int(n_val), mnist1d=version),
            "sha256": dataset_hash(arrays)}
    return data, info


def view(x, y, perm, shift, noise, key, label_noise):
    """A region's view of a batch (one region, unbatched).

    - ``x`` ``[B, 40]``, ``y`` ``[B]``: raw inputs and labels.
    - ``perm`` ``[10]`` int32: the region's label permutation (``y -> perm[y]``).
    - ``shift``: int32 circular shift of the signal; ``noise``: s.d. of additive noise.
    - ``key``: draws the noise and the label-noise flips (``None``: no noise at all, as
      for validation and test, which see the shift and permutation only).
    - ``label_noise``: share of labels replaced by uniform random ones (0 when calm).
    """
    x = jnp.roll(x, shift, axis=-1)
    y = perm[y]
    if key is None:
        return x, y
    kx, kf, ky = jax.random.split(key, 3)
    x = x + noise * jax.random.normal(kx, x.shape, x.dtype)
    flip = jax.random.uniform(kf, y.shape, x.dtype) < label_noise
    y = jnp.where(flip, jax.random.randint(ky, y.shape, 0, N_CLASSES, y.dtype), y)
    return x, y
