"""Vowpal Wabbit contextual bandit policies (``--cb_explore_adf``): every VW specific lives here.

Each request is one multi-line ADF example: a ``shared`` line with the query's namespaces and one
line per eligible arm with the arm's own features. Interactions between every shared namespace
and the arm namespace ``A`` make the learned score depend on context and arm together, and let a
new arm be scored from its features (size, price) from its first request.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import vowpalwabbit
from vowpalwabbit import pyvw

from bandit_router.features import QUERY_STATS, Features, app_hash, token_hash
from bandit_router.policies import Arm, Decision, ParamValue, PolicyKind, index_of, sample

# Shared namespaces: Q query statistics, W hashed words, N app numbers, C app strings.
SHARED_NAMESPACES = "QWNC"
ARM_NAMESPACE = "A"

# learning_rate 0.1, not VW's 0.5: on the replay simulator (simulations/README.md) 0.5 let single
# importance-weighted rewards swing the greedy arm back and forth; 0.1 beats it on MMLU-Pro and
# on the drift scenario alike, and still adapts after each change.
_COMMON: dict[str, ParamValue] = {"learning_rate": 0.1, "bits": 18, "vw_args": ""}

# Explorer name -> (its VW arguments from its parameters, the parameters' defaults).
EXPLORERS: dict[str, tuple[Callable[[Mapping[str, ParamValue]], str], dict[str, ParamValue]]] = {
    "egreedy": (lambda p: f"--epsilon {p['epsilon']}", {"epsilon": 0.05}),
    "squarecb": (lambda p: f"--squarecb --gamma_scale {p['gamma_scale']}", {"gamma_scale": 10.0}),
    "cover": (
        lambda p: f"--cover {p['cover']} --psi {p['psi']}" + (" --nounif" if p["nounif"] else ""),
        {"cover": 3, "psi": 0.1, "nounif": 1},
    ),
    "bag": (lambda p: f"--bag {p['bag']} --epsilon {p['epsilon']}", {"bag": 5, "epsilon": 0.05}),
    "softmax": (lambda p: f"--softmax --lambda {p['lambda']}", {"lambda": 10.0}),
    # The optimistic variant by default: the elimination one (opt=0) keeps near-uniform choices
    # far longer on the planted-rule test.
    "regcb": (
        lambda p: f"--regcb{'opt' if p['opt'] else ''} --mellowness {p['mellowness']}",
        {"mellowness": 0.1, "opt": 1},
    ),
    "rnd": (lambda p: f"--rnd {p['rnd']} --epsilon {p['epsilon']}", {"rnd": 3, "epsilon": 0.05}),
}

# pyvw's native layer. ``Workspace.predict``/``learn`` on text wrap every parsed line in a Python
# ``Example`` (about three quarters of a predict's time); the calls below run the same parser on
# the same text and the same learner, without the wrappers.
_NATIVE = pyvw.pylibvw.vw

# Our costs are -reward, in [-1, 0]; RegCB and cover bound costs with this range.
COST_RANGE = ["--cb_min_cost", "-1", "--cb_max_cost", "0"]


def _num(value: float) -> str:
    return f"{value:.6g}"


def shared_line(x: Features) -> str:
    """The ``shared`` line of an ADF example, built from the query's features."""
    parts = ["shared |Q"]
    parts += [f"{name}:{_num(v)}" for name, v in zip(QUERY_STATS, x.stats, strict=True) if v]
    if x.tokens:
        parts.append("|W")
        parts += [str(t) for t in x.tokens]
    if x.numeric:
        parts.append("|N")
        parts += [f"{app_hash(k)}:{_num(v)}" for k, v in x.numeric.items() if v]
    if x.categorical:
        parts.append("|C")
        parts += [str(app_hash(k, v)) for k, v in x.categorical.items()]
    return " ".join(parts)


def arm_line(arm: Arm, label: str = "") -> str:
    """An action line: the arm's identity plus its size and price, so new arms generalise."""
    return f"{label} {_arm_features(arm)}" if label else _arm_features(arm)


@functools.lru_cache(maxsize=1024)  # arms are few and immutable: built once, not per request
def _arm_features(arm: Arm) -> str:
    parts = [f"|A {token_hash('arm=' + arm.name)}"]
    if arm.params_b is not None:
        parts.append(f"size:{_num(math.log1p(arm.params_b) / 5.0)}")
    if arm.usd_per_mtok is not None:
        parts.append(f"price:{_num(arm.usd_per_mtok)}")
    return " ".join(parts)


def adf_example(
    x: Features,
    arms: Sequence[Arm],
    chosen: int | None = None,
    cost: float = 0.0,
    p: float = 1.0,
    shared: str | None = None,
) -> list[str]:
    """The ADF example as text lines; with ``chosen``, the label ``0:cost:p`` on that arm.

    ``shared``: ``shared_line(x)`` when the caller has it already.
    """
    lines = [shared_line(x) if shared is None else shared]
    for i, arm in enumerate(arms):
        lines.append(arm_line(arm, f"0:{_num(cost)}:{_num(p)}" if i == chosen else ""))
    return lines


def vw_arguments(name: str, params: Mapping[str, ParamValue], seed: int | None) -> list[str]:
    """The full VW command line for explorer ``name`` with ``params``."""
    explorer, _ = EXPLORERS[name]
    args = ["--cb_explore_adf", "--quiet", *explorer(params).split(), *COST_RANGE]
    args += ["-l", str(params["learning_rate"]), "-b", str(params["bits"])]
    args += [f"--interactions={ns}{ARM_NAMESPACE}" for ns in SHARED_NAMESPACES]
    if seed is not None:
        args += ["--random_seed", str(seed)]
    args += str(params["vw_args"]).split()
    return args


class VWPolicy:
    """A VW ``--cb_explore_adf`` policy. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        name: str,
        params: Mapping[str, ParamValue],
        seed: int | None = None,
        model: bytes | None = None,
    ) -> None:
        self.name = name
        self.params = dict(params)
        self._check(params)
        # A saved model keeps its own VW seed; VW refuses a second, different one.
        self._args = vw_arguments(name, params, None if model else seed)
        self._rng = np.random.default_rng(seed)
        self._vw = self._workspace(model)
        self._last_shared: tuple[Features, str] | None = None

    def _check(self, params: Mapping[str, ParamValue]) -> None:
        for key in ("epsilon",):
            if key in params and not 0 <= float(params[key]) <= 1:
                raise ValueError(f"{key} must be in [0, 1], got {params[key]}")
        for key in ("gamma_scale", "lambda", "learning_rate", "psi", "mellowness"):
            if key in params and float(params[key]) <= 0 and key != "lambda":
                raise ValueError(f"{key} must be > 0, got {params[key]}")
        for key in ("cover", "bag", "rnd"):
            if key in params and int(params[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {params[key]}")
        if not 1 <= int(params["bits"]) <= 30:
            raise ValueError(f"bits must be in [1, 30], got {params['bits']}")

    def _workspace(self, model: bytes | None) -> vowpalwabbit.Workspace:
        try:
            if model is None:
                return vowpalwabbit.Workspace(arg_list=self._args)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.vw")
                with open(path, "wb") as f:
                    f.write(model)
                # Today's arguments win over the saved ones, so a changed epsilon takes effect.
                return vowpalwabbit.Workspace(arg_list=[*self._args, "-i", path])
        except RuntimeError as e:
            raise ValueError(f"policy {self.name}: VW rejected {' '.join(self._args)}: {e}") from e

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        shared = shared_line(x)
        self._last_shared = (x, shared)  # learning this context next reuses its shared line
        examples = _NATIVE._parse(self._vw, "\n".join(adf_example(x, arms, shared=shared)))
        try:
            _NATIVE.predict_multi(self._vw, examples)
            pmf = examples[0].get_action_scores()  # the ACTION_PROBS pyvw's predict returns
        finally:
            _NATIVE._finish_example_multi_ex(self._vw, examples)
        return sample(self._rng, arms, pmf)

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        cost = -reward  # VW minimises cost; our reward is in [0, 1], higher is better
        last, self._last_shared = self._last_shared, None
        shared = last[1] if last is not None and last[0] is x else None
        lines = adf_example(x, arms, index_of(arms, arm), cost, probability, shared)
        examples = _NATIVE._parse(self._vw, "\n".join(lines))
        try:
            _NATIVE.learn_multi(self._vw, examples)
        finally:
            _NATIVE._finish_example_multi_ex(self._vw, examples)

    def dumps(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.vw")
            self._vw.save(path)
            with open(path, "rb") as f:
                return f.read()


def _kind(name: str) -> PolicyKind:
    defaults = {**EXPLORERS[name][1], **_COMMON}
    return PolicyKind(
        build=partial(_build, name),
        load=partial(_load, name),
        defaults=defaults,
    )


def _build(name: str, params: Mapping[str, ParamValue], seed: int | None) -> VWPolicy:
    return VWPolicy(name, params, seed)


def _load(name: str, data: bytes, params: Mapping[str, ParamValue], seed: int | None) -> VWPolicy:
    return VWPolicy(name, params, seed, model=data)


VW_POLICIES = {name: _kind(name) for name in EXPLORERS}
