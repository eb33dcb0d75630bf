"""LinUCB, disjoint (Li et al. 2010, Algorithm 1), in numpy with rank-1 inverse updates.

Each arm ``a`` keeps ``A_a^-1`` (d x d) and ``b_a`` (d). The score of arm ``a`` for context ``x``
is ``theta_a . x + alpha * sqrt(x . A_a^-1 . x)`` with ``theta_a = A_a^-1 b_a``. Learning adds
``x x^T`` to ``A_a``; its inverse is updated in O(d^2) by Sherman-Morrison:
``(A + x x^T)^-1 = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x)``. No full inverse is ever taken.
"""

from __future__ import annotations

import functools
import io
import math
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bandit_router.features import QUERY_STATS, Features, app_hash
from bandit_router.policies.base import Arm, Bounds, Decision, ParamValue, PolicyKind, sample

Vector = npt.NDArray[np.float64]
Stack = npt.NDArray[np.float64]  # (arms, d, d)

MIN_DIM = len(QUERY_STATS) + 2  # bias, the statistics, and at least one hashed slot
# Each arm keeps a dim x dim matrix: 8 MiB at 1024 (16 times the default's width), and a choice
# and its learning take about a millisecond per arm.
MAX_DIM = 1024
BOUNDS = {"alpha": Bounds(0, 100), "dim": Bounds(MIN_DIM, MAX_DIM)}
# The matrices of the configured arms, at most: the model is one Redis string (512 MiB), and
# arms removed from the settings keep theirs.
MAX_MATRIX_BYTES = 448 * 1024 * 1024


def check_size(dim: int, arms: int) -> None:
    """ValueError when ``arms`` matrices of ``dim`` x ``dim`` would pass MAX_MATRIX_BYTES."""
    size = arms * dim * dim * 8
    if size > MAX_MATRIX_BYTES:
        most = MAX_MATRIX_BYTES // (dim * dim * 8)
        raise ValueError(
            f"policy linucb: dim {dim} with {arms} arms keeps {size / 2**20:.0f} MiB of "
            f"matrices (arms x dim^2 x 8 bytes), over the {MAX_MATRIX_BYTES >> 20} MiB a "
            f"model may take (it is one Redis string, 512 MiB at most): at most {most} arms "
            "at this dim, or a lower dim"
        )


def dense_vector(x: Features, dim: int) -> Vector:
    """A fixed-width vector: bias, query statistics, then words and app facts hashed into slots."""
    # Built in Python floats (the same IEEE sums, in the same order, as numpy's add.at) and
    # converted once: numpy's per-call overhead dominated at this size.
    start = 1 + len(QUERY_STATS)
    slots = dim - start
    v = [1.0, *x.stats]
    v += _zeros(slots)
    if x.tokens:
        weight = 1.0 / math.sqrt(len(x.tokens))
        for token in x.tokens:
            v[start + token % slots] += weight
    for key, value in x.numeric.items():
        v[start + app_hash(key) % slots] += math.copysign(math.log1p(abs(value)), value)
    for key, text in x.categorical.items():
        v[start + app_hash(key, text) % slots] += 1.0
    return np.array(v, dtype=np.float64)  # the dtype spares numpy's type discovery: half the cost


@functools.cache
def _zeros(n: int) -> tuple[float, ...]:
    return (0.0,) * n


# What ``choose`` computed for a context, kept for the ``learn`` of that context that follows:
# the context, its vector, the slices scored, their A_a^-1 x (a row each) and x . A_a^-1 x.
_Products = tuple[Features, Vector, list[int], Vector, list[float]]


class LinUCB:
    """Disjoint LinUCB. Its choice is greedy on the upper bound: probability 1, ties split.

    At d = 64 each numpy call costs more than its arithmetic, so the state is laid out to make
    few of them. Every arm's ``A^-1`` is one slice of a stacked ``(arms, d, d)`` array, seen as
    one ``(arms * d, d)`` matrix: ``A^-1 x`` for every arm is one gemv. Its result lands in
    the lower half of a ``(2 * arms, d)`` buffer whose upper half holds every arm's
    ``theta = A^-1 b`` (recomputed exactly after each learn, so it never drifts from ``A^-1``
    and ``b``), so a second gemv of that buffer with ``x`` gives every arm's ``theta . x`` and
    ``x . A^-1 x`` at once. ``b`` is one row of ``(arms, d)``; learning updates an arm's slices
    in place through preallocated scratch.
    """

    name = "linucb"

    def __init__(self, alpha: float = 0.5, dim: int = 64, seed: int | None = None) -> None:
        BOUNDS["alpha"].check("alpha", alpha)
        BOUNDS["dim"].check("dim", dim)
        self.alpha = float(alpha)
        self.dim = int(dim)
        self._draws = _Draws(np.random.default_rng(seed))
        self._index: dict[str, int] = {}  # arm name -> slice, in order of first appearance
        self._every: list[int] = []  # range(len(self._index)), kept: _scores compares against it
        self._set_state(np.empty((0, self.dim, self.dim)), np.empty((0, self.dim)))
        self._last: _Products | None = None
        self._outer: Vector = np.empty((self.dim, self.dim))  # learn's scratch: no d x d alloc
        self._step: Vector = np.empty(self.dim)
        self._step_column = self._step[:, None]

    def _set_state(self, a_inv: Stack, b: Vector) -> None:
        """Take the stacks, and lay out theta, the scratch for A^-1 x, and their views."""
        arms, dim = len(b), self.dim
        self._a_inv, self._b = a_inv, b
        self._a_inv_rows = a_inv.reshape(arms * dim, dim)
        self._theta_y = np.empty((2 * arms, dim))  # [theta_a for each arm; A_a^-1 x for each]
        self._theta = self._theta_y[:arms]
        np.matmul(a_inv, b[:, :, None], out=self._theta[:, :, None])
        self._y = self._theta_y[arms:]
        self._y_flat = self._y.reshape(arms * dim)

    def _rows(self, arms: Sequence[Arm]) -> list[int]:
        """The slices of ``arms``; a new arm starts from A = I, b = 0."""
        index = self._index
        rows = [index.get(arm.name, -1) for arm in arms]
        if -1 in rows:
            for arm in arms:
                self._add(arm.name)
            rows = [index[arm.name] for arm in arms]
        return rows

    def _add(self, name: str) -> int:
        if name not in self._index:  # growing copies the stacks: once per new arm, not per call
            self._index[name] = len(self._index)
            self._every.append(self._index[name])
            self._set_state(
                np.concatenate([self._a_inv, np.eye(self.dim)[None]]),
                np.concatenate([self._b, np.zeros((1, self.dim))]),
            )
        return self._index[name]

    def _scores(self, x: Features, arms: Sequence[Arm]) -> list[float]:
        v = dense_vector(x, self.dim)
        rows = self._rows(arms)
        n = len(rows)
        if rows == self._every:  # every arm, in order: no gather copy
            a_inv_v = self._y
            np.dot(self._a_inv_rows, v, out=self._y_flat)
            products = np.dot(self._theta_y, v).tolist()
        else:
            a_inv_v = np.dot(self._a_inv[rows].reshape(n * self.dim, self.dim), v).reshape(n, -1)
            products = np.dot(np.concatenate([self._theta[rows], a_inv_v]), v).tolist()
        widths = products[n:]  # x . A^-1 x, from (A^-1 x) . x: A^-1 is symmetric
        # learning x next (choose, then learn) reuses these; a_inv_v may be the scratch rows
        self._last = (x, v, rows, a_inv_v, widths)
        alpha, sqrt = self.alpha, math.sqrt
        return [m + alpha * sqrt(max(w, 0.0)) for m, w in zip(products, widths, strict=False)]

    def scores(self, x: Features, arms: Sequence[Arm]) -> Vector:
        """Each arm's upper confidence bound ``theta . x + alpha * sqrt(x . A^-1 . x)``."""
        return np.array(self._scores(x, arms))

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        scores = self._scores(x, arms)
        top = max(scores) - 1e-12
        best = [1.0 if s >= top else 0.0 for s in scores]
        n = best.count(1.0)
        if n == 1 and len(arms) > 1:
            # One best arm: what ``sample`` answers for a 0/1 pmf, without its general path. The
            # draw is still taken, so the stream of draws (and later ties) stays the same.
            self._draws.random()
            names = [arm.name for arm in arms]
            return Decision(names[best.index(1.0)], 1.0, dict(zip(names, best, strict=True)))
        return sample(self._draws, arms, [b / n for b in best])

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        last, self._last = self._last, None  # A^-1 changes below: the products go stale
        i = self._index.get(arm)
        if i is None:
            i = self._add(arm)
        a_inv, b = self._a_inv[i], self._b[i]
        if last is not None and last[0] is x and i in last[2]:
            row = last[2].index(i)
            v, a_inv_v, width = last[1], last[3][row], last[4][row]
        else:
            v = dense_vector(x, self.dim)
            a_inv_v = a_inv @ v
            width = float(v @ a_inv_v)
        # Sherman-Morrison, in place: A^-1 -= (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x). The outer
        # product is a k = 1 BLAS gemm (np.dot of a column and a row: each entry one multiply,
        # half the time of numpy's broadcast multiply), of A^-1 x scaled by the reciprocal first.
        np.multiply(a_inv_v, 1.0 / (1.0 + width), out=self._step)
        outer = np.dot(self._step_column, a_inv_v[None, :], out=self._outer)
        np.subtract(a_inv, outer, out=a_inv)
        np.add(b, np.multiply(v, reward, out=self._step), out=b)  # b += reward * x
        np.dot(a_inv, b, out=self._theta[i])

    def dumps(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            names=np.array(list(self._index), dtype=str),
            a_inv=self._a_inv,
            b=self._b,
            config=np.array([self.alpha, self.dim]),
        )
        return buf.getvalue()

    @classmethod
    def loads(cls, data: bytes, alpha: float | None = None, seed: int | None = None) -> LinUCB:
        """The policy ``dumps`` saved; ValueError names what is wrong. A snapshot may be damaged
        or edited: every array's size is checked before it is read (a compressed member could
        expand to any size), and every value is finite, A^-1 within bounds."""
        arrays = _read_npz(data)
        config, names, a_inv, b = (arrays[k] for k in ("config", "names", "a_inv", "b"))
        saved_alpha, dim = float(config[0]), float(config[1])
        BOUNDS["alpha"].check("a saved LinUCB model's alpha", saved_alpha)
        policy = cls(saved_alpha if alpha is None else alpha, int(dim), seed)
        keys = [str(name) for name in names]
        if len(set(keys)) != len(keys):
            raise ValueError("a saved LinUCB model names an arm twice")
        # A = I + sum x x^T: A^-1's eigenvalues are in (0, 1], so each entry is within [-1, 1]
        # (a margin for rounding); b sums rewards in [0, 1] times contexts.
        if not np.all(np.abs(a_inv) <= A_INV_LIMIT):
            raise ValueError(f"a saved LinUCB model's a_inv is not finite within {A_INV_LIMIT}")
        if not np.all(np.abs(b) <= B_LIMIT):
            raise ValueError(f"a saved LinUCB model's b is not finite within {B_LIMIT:g}")
        policy._index = {name: i for i, name in enumerate(keys)}
        policy._every = list(range(len(keys)))
        policy._set_state(a_inv.astype(np.float64), b.astype(np.float64))
        return policy

    def state(self, arm: str) -> tuple[Vector, Vector]:
        """Copies of one arm's ``A^-1`` and ``b`` (for tests and inspection)."""
        i = self._index[arm]
        return self._a_inv[i].copy(), self._b[i].copy()


A_INV_LIMIT = 1.0 + 1e-6
B_LIMIT = 1e15
_MEMBERS = ("config", "names", "a_inv", "b")
MAX_NAME = 1024  # characters of an arm's name in a saved model (settings allow 64)


def _read_npz(data: bytes) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a saved LinUCB model, each member's dtype and shape checked against what
    ``dumps`` writes (``config``'s dim, ``names``' count) before it is read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            headers = {name: _npy_header(zf, name, len(data)) for name in _MEMBERS}
            if headers["config"] != ((2,), np.dtype(np.float64)):
                raise ValueError("a saved LinUCB model's config is not [alpha, dim]")
            if len(headers["names"][0]) != 1:
                raise ValueError("a saved LinUCB model's names are not a list")
            n = headers["names"][0][0]
            config = _member(zf, "config")
            if not np.all(np.isfinite(config)) or config[1] != int(config[1]):
                raise ValueError(f"a saved LinUCB model's config is not [alpha, dim]: {config}")
            BOUNDS["dim"].check("a saved LinUCB model's dim", float(config[1]))
            d = int(config[1])
            dtype = headers["names"][1]
            if dtype.kind != "U" or dtype.itemsize > 4 * MAX_NAME:
                raise ValueError("a saved LinUCB model's names are not strings")
            for name, shape in (("a_inv", (n, d, d)), ("b", (n, d))):
                if headers[name] != (shape, np.dtype(np.float64)):
                    raise ValueError(
                        f"a saved LinUCB model's {name} is {headers[name][1]} of shape "
                        f"{headers[name][0]}, not float64 of {shape} ({n} arms, dim {d})"
                    )
            return {name: _member(zf, name) for name in _MEMBERS}
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # OSError: a damaged member
        raise ValueError(f"not a saved LinUCB model: {e}") from None


def _npy_header(
    zf: zipfile.ZipFile, name: str, limit: int
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """A member's shape and dtype, from its .npy header alone; ValueError unless it is stored
    as ``dumps`` stores it (uncompressed, so its size is bounded by the snapshot's) and its
    size is exactly what the header says."""
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise ValueError(f"a saved LinUCB model has no {name}") from None
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > limit:
        raise ValueError(f"a saved LinUCB model's {name} is compressed: dumps stores it")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        size = f.tell() + math.prod(shape) * dtype.itemsize
    if fortran or dtype.hasobject or info.file_size != size:
        raise ValueError(f"a saved LinUCB model's {name} is not the array its header says")
    return tuple(shape), dtype


def _member(zf: zipfile.ZipFile, name: str) -> npt.NDArray[Any]:
    with zf.open(f"{name}.npy") as f:
        array: npt.NDArray[Any] = np.lib.format.read_array(f, allow_pickle=False)
    return array


class _Draws:
    """A generator's uniform draws, taken 256 at a time: the same numbers in the same order as
    one ``random()`` call each (a bit generator fills an array one draw after another), without
    a numpy call per draw."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._ahead: list[float] = []

    def random(self) -> float:
        if not self._ahead:
            self._ahead = self._rng.random(256).tolist()[::-1]
        return self._ahead.pop()


def _build(params: Mapping[str, ParamValue], seed: int | None) -> LinUCB:
    return LinUCB(float(params["alpha"]), int(params["dim"]), seed)


def _load(data: bytes, params: Mapping[str, ParamValue], seed: int | None) -> LinUCB:
    policy = LinUCB.loads(data, float(params["alpha"]), seed)
    if policy.dim != int(params["dim"]):
        raise ValueError(
            f"saved LinUCB model has dim {policy.dim}, settings ask for {params['dim']}"
        )
    return policy


LINUCB = PolicyKind(build=_build, load=_load, defaults={"alpha": 0.5, "dim": 64}, bounds=BOUNDS)
