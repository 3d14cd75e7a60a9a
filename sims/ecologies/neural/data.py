"""MNIST-1D for the neural ecology: generated offline, hashed, and viewed per region.

The arrays come from ``mnist1d.data.make_dataset`` (the package's generator; its
downloader is never called). The generator's arguments and a SHA-256 of the generated
arrays are recorded with the data, so a log can say exactly which dataset a run used.

Every region trains on the same arrays through its own *view* (its traits): a label
permutation (and, after a task switch, a second one), a circular input shift, additive input
noise, and optionally a class subset (the region learns only some of the ten classes; the
logits of the others are masked, so every region keeps the same shapes). The view is applied
to each minibatch inside the jitted step, so the data are stored once, not once per region.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["N_CLASSES", "NEG", "SEQ_LEN", "Data", "allowed_labels", "class_index",
           "class_subset", "dataset_hash", "make_data", "mask_logits", "pick_class",
           "sample_in_classes", "view"]

N_CLASSES = 10
SEQ_LEN = 40
# The logit given to a class outside a region's subset (finite, so no NaN from 0 * inf).
NEG = -1e9


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


def view(x, y, perm, shift, noise, key, label_noise, allowed=None):
    """A region's view of a batch (one region, unbatched).

    - ``x`` ``[B, 40]``, ``y`` ``[B]``: raw inputs and labels.
    - ``perm`` ``[10]`` int32: the region's label permutation (``y -> perm[y]``).
    - ``shift``: int32 circular shift of the signal; ``noise``: s.d. of additive noise.
    - ``key``: draws the noise and the label-noise flips (``None``: no noise at all, as
      for validation and test, which see the shift and permutation only).
    - ``label_noise``: share of labels replaced by uniform random ones (0 when calm).
    - ``allowed``: ``[10]`` bool over the *permuted* labels (a class subset; ``None``: all).
      A label-noise flip then lands on an allowed label, uniformly; a flip that the
      unrestricted draw already put on an allowed label is kept, so a region whose every
      label is allowed draws exactly what it drew without ``allowed``.
    """
    x = jnp.roll(x, shift, axis=-1)
    y = perm[y]
    if key is None:
        return x, y
    kx, kf, ky = jax.random.split(key, 3)
    x = x + noise * jax.random.normal(kx, x.shape, x.dtype)
    flip = jax.random.uniform(kf, y.shape, x.dtype) < label_noise
    ry = jax.random.randint(ky, y.shape, 0, N_CLASSES, y.dtype)
    if allowed is not None:
        other = pick_class(jax.random.fold_in(ky, 1), allowed, y.shape).astype(y.dtype)
        ry = jnp.where(allowed[ry], ry, other)
    y = jnp.where(flip, ry, y)
    return x, y


def pick_class(key, mask, shape):
    """Classes drawn uniformly from ``mask`` (``[10]`` bool, at least one True): one
    uniform per draw, indexing the masked classes in order."""
    order = jnp.argsort(~mask, stable=True)  # the masked classes first, in order
    m = jnp.sum(mask)
    j = jnp.floor(jax.random.uniform(key, shape) * m).astype(jnp.int32)
    return order[jnp.clip(j, 0, m - 1)]


def class_index(y):
    """``(order, starts, counts)`` of labels ``y`` (``[M]`` int): the indices sorted by
    class, where each class starts in that order, and how many it has. For
    [`sample_in_classes`][]; compute once per dataset, outside loops."""
    order = jnp.argsort(y, stable=True)
    counts = jnp.bincount(y, length=N_CLASSES)
    return order, jnp.cumsum(counts) - counts, counts


def class_subset(key, share, size):
    """A region's class subset: ``[10]`` bool over the *original* classes. With probability
    ``share`` the region keeps ``size`` classes (rounded, clipped to 2 .. 10) drawn without
    replacement; otherwise all ten."""
    ku, kp = jax.random.split(key)
    rank = jnp.argsort(jax.random.permutation(kp, N_CLASSES))  # a random rank per class
    m = jnp.clip(jnp.round(size), 2, N_CLASSES)
    return (rank < m) | (jax.random.uniform(ku) >= share)


def allowed_labels(subset, perm):
    """The subset as seen after the permutation: ``allowed[perm[c]] = subset[c]``."""
    return jnp.zeros((N_CLASSES,), bool).at[perm].set(subset)


def mask_logits(logits, allowed):
    """Logits of classes outside ``allowed`` (over the last axis) set to [`NEG`][]; exact
    (``where``) for allowed classes."""
    return jnp.where(allowed, logits, jnp.asarray(NEG, logits.dtype))


def sample_in_classes(key, index, subset, n):
    """``n`` indices into a label array whose labels are in ``subset`` (``[10]`` bool over
    original classes; ``index``: its [`class_index`][]): a class uniformly from the subset,
    then a sample of that class uniformly (fixed shapes; class-balanced)."""
    order, starts, counts = index
    kc, kj = jax.random.split(key)
    c = pick_class(kc, subset & (counts > 0), (n,))
    j = jnp.floor(jax.random.uniform(kj, (n,)) * counts[c]).astype(jnp.int32)
    return order[starts[c] + jnp.clip(j, 0, counts[c] - 1)]
