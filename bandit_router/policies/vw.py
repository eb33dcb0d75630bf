"""Vowpal Wabbit contextual bandit policies (``--cb_explore_adf``; ``--cb_adf`` under SquareCB).

Every VW specific lives here.

Each request is one multi-line ADF example: a ``shared`` line with the query's namespaces and one
line per eligible arm with the arm's identity (namespace ``A``). Interactions between every shared
namespace and ``A`` make the learned score depend on context and arm together.

The arm's size and price are not features. They were, and VW fitted a trend between the arms it
saw most and stretched it to an arm far bigger or dearer than them: on MMLU-Pro it scored Llama-2
70B 0.06-0.13 below its mean reward across the queries, and rarely tried it (simulations/README.md).
A new arm now starts as an average one (see below) and SquareCB explores it from there.

Three things VW does not do for us, all chosen on the replay simulator (simulations/README.md):

- Rewards are centred before VW sees them: VW learns ``reward - baseline``, the baseline being
  the mean reward learned so far. VW's weights start at 0, so an arm or context it knows
  little about is scored as an average one, not as the worst possible.
- ``squarecb`` is computed here over VW's ``--cb_adf`` regressor, with VW's SquareCB rule. VW
  9.11's own reduction learns without importance weights except for the last action of each
  example (it skips that one when it resets the probabilities), which tilted the learning
  towards whichever arm came last.
- ``squarecb`` keeps two regressors on the same examples, one that forgets slowly (``l2``) and
  one fast (``fast_l2``), and chooses with the one that has lately predicted the chosen arms'
  rewards better: after a change the fast one does, and the policy follows the change without
  the slow one's ``l2`` being raised, which locked runs onto a worse arm on stationary traffic.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import vowpalwabbit
from vowpalwabbit import pyvw

from bandit_router.features import QUERY_STATS, Features, app_hash, token_hash
from bandit_router.policies.arm_level import ArmStats
from bandit_router.policies.base import (
    Arm,
    Bounds,
    Decision,
    ParamValue,
    PolicyKind,
    index_of,
    plain_number,
    sample,
)

# Shared namespaces: Q query statistics, W hashed words, N app numbers, C app strings.
SHARED_NAMESPACES = "QWNC"
ARM_NAMESPACE = "A"

# learning_rate 0.1, not VW's 0.5: on the replay simulator (simulations/README.md) 0.5 let single
# importance-weighted rewards swing the greedy arm back and forth; 0.1 beats it on MMLU-Pro and
# on the drift scenario alike, and still adapts after each change. squarecb, which learns without
# importance weights, has its own (0.06) in EXPLORERS.
_COMMON: dict[str, ParamValue] = {"learning_rate": 0.1, "bits": 18, "vw_args": ""}

# Explorer name -> (its VW arguments from its parameters, the parameters' defaults).
EXPLORERS: dict[str, tuple[Callable[[Mapping[str, ParamValue]], str], dict[str, ParamValue]]] = {
    "egreedy": (lambda p: f"--epsilon {p['epsilon']}", {"epsilon": 0.05}),
    # Computed here (OWN_EXPLORERS). gamma_scale 20 (VW's 10), learning rate 0.06 and l2 0.001
    # (it shrinks old weights a little; 0.01 learned a change sooner but locked seeds onto a
    # worse arm); an arm's predicted gap trusted as it gains rewards (gap_prior, see
    # squarecb_pmf), and the exploration of an arm shown worse on its mean cut to 0.3 of
    # SquareCB's (see thin_dominated): chosen on every public set, two reward settings and the
    # drift scenario together (simulations/README.md). A second regressor at fast_l2 0.02
    # serves while its squared error, discounted by mix_discount per reward, is the smaller:
    # the drift target met without the slow regressor's l2 raised (simulations/README.md,
    # "Seventh round"). arm_centre (off) centres the slow regressor on each arm's
    # importance-weighted mean: a higher stationary mean, but runs locked onto a worse arm
    # (simulations/README.md, "What is not done"). coarse CN puts a stage before each regressor
    # that sees only the app's facts (see VWPolicy.coarse): on the public sets it lifted the
    # mean without costing the held-out shapes or drift (simulations/README.md, "Eighth round").
    # reward_sd 0.3: gamma_scale and gap_prior were chosen on rewards that spread at least this
    # much; rewards that spread less make both greedier (see VWPolicy.greed), as SquareCB's
    # gamma scales with 1 / the noise's sd: alpaca_tulu2 budget5000 within 1% of the best arm
    # (simulations/README.md, "Ninth round"). horizon (0: none) caps the count gamma grows with
    # and the arm statistics at that many rewards, so an arm not chosen for long is still tried
    # (simulations/results/long_life_exploration.md).
    "squarecb": (
        lambda p: f"--l2 {p['l2']}",
        {
            "gamma_scale": 20.0,
            "learning_rate": 0.06,
            "l2": 1e-3,
            "gap_prior": 10.0,
            "dominated_z": 2.0,
            "dominated_share": 0.3,
            "fast_l2": 0.02,
            "mix_discount": 0.995,
            "arm_centre": 0.0,
            "coarse": "CN",
            "reward_sd": 0.3,
            "horizon": 0.0,
        },
    ),
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

MAX_HORIZON = 1e15  # squarecb's horizon: far beyond any deployment's count of rewards

# Every numeric parameter's bounds (README.md, Policies). The upper ones are far above any value
# the simulations found useful; VW refuses a float beyond float32, and cover, bag and rnd are
# copies of the learner, each as big as the model. A regressor's weight table has 2^bits slots,
# so bits beyond 24 cost seconds to build and gigabytes once the weights are touched.
BOUNDS: dict[str, Bounds] = {
    "learning_rate": Bounds(0, 10, low_open=True),
    "bits": Bounds(1, 24),
    "epsilon": Bounds(0, 1),
    "gamma_scale": Bounds(0, 10_000, low_open=True),
    "l2": Bounds(0, 1, high_open=True),
    "gap_prior": Bounds(0, 1_000_000),
    "dominated_z": Bounds(0, 100),
    "dominated_share": Bounds(0, 1),
    "fast_l2": Bounds(0, 1, high_open=True),
    "mix_discount": Bounds(0, 1, low_open=True),
    "arm_centre": Bounds(0, 1_000_000),
    "reward_sd": Bounds(0, 1),
    "horizon": Bounds(0, MAX_HORIZON),
    "cover": Bounds(1, 100),
    "psi": Bounds(0, 100, low_open=True),
    "nounif": Bounds(0, 1),
    "bag": Bounds(1, 100),
    "lambda": Bounds(0, 1000),
    "mellowness": Bounds(0, 100, low_open=True),
    "opt": Bounds(0, 1),
    "rnd": Bounds(1, 100),
}

# What ``vw_args`` may hold: learning options, each with what it takes (None: nothing; Bounds: a
# number; NAMESPACES: namespace letters, one word or more, as ``--ignore W Q`` or ``--lrq WA2``).
# An allowlist: no option that reads or writes a file (``-i``, ``-f``, ``--cache_file``, a bare
# word VW takes for its data file), opens a port or replaces the reductions this module drives.
# The learning rate, bits and seed are parameters. Every one the simulations use is here.
NAMESPACES = "namespace letters"
VW_OPTIONS: dict[str, Bounds | str | None] = {
    "--power_t": Bounds(0, 1),
    "--initial_t": Bounds(0, 1_000_000),
    "--decay_learning_rate": Bounds(0, 1, low_open=True),
    "--l1": Bounds(0, 1, high_open=True),
    "--l2": Bounds(0, 1, high_open=True),
    "--adaptive": None,
    "--normalized": None,
    "--invariant": None,
    "--sgd": None,
    "--coin": None,
    "--noconstant": None,
    "--predict_only_model": None,
    "--ignore": NAMESPACES,
    "--ignore_linear": NAMESPACES,
    "--keep": NAMESPACES,
    "--interactions": NAMESPACES,
    "-q": NAMESPACES,
    "--quadratic": NAMESPACES,
    "--cubic": NAMESPACES,
    "--lrq": NAMESPACES,
}
_NAMESPACE_WORD = re.compile(r"[A-Za-z0-9:]+")  # ':' is VW's wildcard in interactions

# pyvw's native layer. ``Workspace.predict``/``learn`` on text wrap every parsed line in a Python
# ``Example`` (about three quarters of a predict's time); the calls below run the same parser on
# the same text and the same learner, without the wrappers.
_NATIVE = pyvw.pylibvw.vw

# SquareCB's greed grows as the rewards spread less than reward_sd: at most this many times,
# and only once this many rewards are in (an sd from a handful of rewards is noise).
SPREAD_CAP = 4.0
SPREAD_MIN = 20

# VW's costs are -(reward - baseline), in [-1, 1]; RegCB and cover bound costs with this range.
COST_RANGE = ["--cb_min_cost", "-1", "--cb_max_cost", "1"]

# Explorers whose probabilities this module computes from VW's ``--cb_adf`` scores.
OWN_EXPLORERS = ("squarecb",)

# Recent choices whose shared line ``learn`` can reuse: more than the decisions a busy process has
# waiting for their rewards at once, in the usual case.
KEPT_SHARED = 1024

# Probabilities below this count as this in the centres' importance weights (at most 100).
CENTRE_CLIP = 0.01

# ``dumps()``: this line, a JSON line with the baseline and the count, then VW's model file.
_MAGIC = b"bandit-router vw 1\n"


# VW keeps every number as a float32, and its text parser reads one written with an exponent
# far below float32's range (1e-200, say) as NaN, not 0: a NaN feature value made that choice
# NaN, and a NaN cost (a reward of 1e-200 with a baseline of 0) made every later one NaN. Below
# float32's smallest normal magnitude a number is written as 0, and a feature is left out.
_FLOAT32_TINY = 1.1754943508222875e-38


def _vw_float(value: float) -> float:
    """``value`` as VW can read it: 0 when a float32 has no normal number that small."""
    return value if abs(value) >= _FLOAT32_TINY else 0.0


def _num(value: float) -> str:
    return f"{_vw_float(value):.6g}"


def shared_line(x: Features) -> str:
    """The ``shared`` line of an ADF example, built from the query's features."""
    parts = ["shared |Q"]
    stats = zip(QUERY_STATS, x.stats, strict=True)
    parts += [f"{name}:{v:.6g}" for name, v in stats if abs(v) >= _FLOAT32_TINY]  # else 0: out
    if x.tokens:
        parts.append("|W")
        parts += [str(t) for t in x.tokens]
    if x.numeric:
        parts.append("|N")
        numeric = x.numeric.items()
        parts += [f"{app_hash(k)}:{v:.6g}" for k, v in numeric if abs(v) >= _FLOAT32_TINY]
    if x.categorical:
        parts.append("|C")
        parts += [str(app_hash(k, v)) for k, v in x.categorical.items()]
    return " ".join(parts)


def featured_namespaces(x: Features) -> set[str]:
    """The shared namespaces in which ``shared_line(x)`` has at least one feature."""
    present = {
        "Q": any(_vw_float(v) for v in x.stats),
        "W": bool(x.tokens),
        "N": any(_vw_float(v) for v in x.numeric.values()),
        "C": bool(x.categorical),
    }
    return {ns for ns, there in present.items() if there}


def arm_line(arm: Arm, label: str = "") -> str:
    """An action line: the arm's identity."""
    return f"{label} {_arm_features(arm)}" if label else _arm_features(arm)


@functools.lru_cache(maxsize=1024)  # arms are few and immutable: built once, not per request
def _arm_features(arm: Arm) -> str:
    return f"|{ARM_NAMESPACE} {token_hash('arm=' + arm.name)}"


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


def vw_options(text: str) -> list[str]:
    """``vw_args`` as VW arguments; ValueError names an option, or a value, VW_OPTIONS refuses."""
    allowed = f"allowed: {', '.join(VW_OPTIONS)}"
    words = text.split()
    out: list[str] = []
    while words:
        option, sep, value = words.pop(0).partition("=")
        if option not in VW_OPTIONS:
            raise ValueError(f"vw_args: {option!r} is not an allowed VW option; {allowed}")
        takes = VW_OPTIONS[option]
        values = [value] if sep else []
        if takes is None:
            if values:
                raise ValueError(f"vw_args: {option} takes no value, got {value!r}")
        elif isinstance(takes, Bounds):
            if not sep:
                value = words.pop(0) if words else ""
            number: ParamValue = value  # a word is in no bounds
            with contextlib.suppress(ValueError):
                number = float(value) if plain_number(value) else value
            try:
                takes.check(option, number)
            except ValueError as e:
                raise ValueError(f"vw_args: {e}") from None
            values = [str(number)]
        else:
            while not sep and words and not words[0].startswith("-"):
                values.append(words.pop(0))
            if not values or not all(_NAMESPACE_WORD.fullmatch(v) for v in values):
                raise ValueError(f"vw_args: {option} takes {takes}, got {' '.join(values)!r}")
        out += [option, *values]
    return out


def vw_arguments(name: str, params: Mapping[str, ParamValue], seed: int | None) -> list[str]:
    """The full VW command line for explorer ``name`` with ``params``."""
    explorer, _ = EXPLORERS[name]
    if name in OWN_EXPLORERS:
        args = ["--cb_adf", "--cb_type", "mtr", "--quiet", *explorer(params).split()]
    else:
        args = ["--cb_explore_adf", "--quiet", *explorer(params).split(), *COST_RANGE]
    args += ["-l", str(params["learning_rate"]), "-b", str(params["bits"])]
    args += [f"--interactions={ns}{ARM_NAMESPACE}" for ns in SHARED_NAMESPACES]
    if seed is not None:
        args += ["--random_seed", str(seed)]
    args += vw_options(str(params["vw_args"]))
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
        self._own = name in OWN_EXPLORERS
        self._gamma_scale = float(params.get("gamma_scale", 0.0))  # SquareCB's, when _own
        self._gap_prior = float(params.get("gap_prior", 0.0))
        self._reward_sd = float(params.get("reward_sd", 0.0))
        self._horizon = float(params.get("horizon", 0.0))  # 0: none
        self._dominated = (
            float(params.get("dominated_z", 0.0)),
            float(params.get("dominated_share", 1.0)),
        )
        self.baseline = 0.0  # mean reward learned so far; VW learns the reward minus this
        self.learned = 0  # examples learned (SquareCB's t)
        self.arm_stats = ArmStats()  # each arm's rewards, for SquareCB's gap_prior and thinning
        # SquareCB with arm_centre > 0: the slow regressor learns each arm's reward minus the
        # arm's importance-weighted mean (see centre), and has no weight of its own per arm
        self._arm_centre = float(params.get("arm_centre", 0.0)) if self._own else 0.0
        self.centres = ArmStats()  # each arm's rewards weighted by 1 / their probability
        # SquareCB with fast_l2 > 0: a second regressor that forgets faster (see serving)
        fast_l2 = float(params.get("fast_l2", 0.0)) if self._own else 0.0
        self._mix_discount = float(params.get("mix_discount", 1.0))
        args = [self._args + (["--ignore_linear", ARM_NAMESPACE] if self._arm_centre else [])]
        if fast_l2 > 0:
            args.append(vw_arguments(name, {**params, "l2": fast_l2}, None if model else seed))
        # each regressor's discounted squared error on the chosen arms' centred rewards
        self.errors = [0.0] * len(args)
        # SquareCB with coarse: per regressor, a stage that sees only those shared namespaces
        self._kept = str(params.get("coarse", "")) if self._own else ""
        ignored = "".join(ns for ns in SHARED_NAMESPACES if ns not in self._kept)
        coarse_args = [[*a, "--ignore", ignored] for a in args] if self._kept else []
        coarse_models: list[bytes | None] = [None] * len(coarse_args)
        models: list[bytes | None] = [model]
        if model is not None and model.startswith(_MAGIC):
            header, _, model = model[len(_MAGIC) :].partition(b"\n")
            state = _state(header)
            self.baseline, self.learned = float(state["baseline"]), int(state["learned"])
            try:
                if "arms" in state:  # a model saved before the arm statistics has none
                    self.arm_stats = ArmStats.from_json(state["arms"], 1.0)
                if "centres" in state:  # one saved before them starts each arm at the mean
                    self.centres = ArmStats.from_json(state["centres"], 1.0)
            except ValueError as e:
                raise ValueError(f"a VW snapshot's {e}") from None
            models = _split(model, state.get("sizes"))
            stages = state.get("coarse", 0)
            if type(stages) is not int or not 0 <= stages < len(models):
                raise ValueError(f"a VW snapshot's coarse stages are not a count: {stages!r}")
            if stages:
                models, saved_coarse = models[:-stages], models[-stages:]
                if len(saved_coarse) == len(coarse_args):  # else they start again
                    coarse_models = saved_coarse
            saved = state.get("errors", [])
            if not isinstance(saved, list) or not all(
                type(e) in (int, float) and math.isfinite(e) and e >= 0 for e in saved
            ):
                raise ValueError(f"a VW snapshot's errors are not squared errors: {saved!r}")
            if len(saved) == len(args):  # else the regressors changed: their errors start again
                self.errors = [float(e) for e in saved]
        if model is not None:
            saved_explorer = _explorer(models[0] or b"")
            if saved_explorer != name:  # served as another explorer, it would choose nonsense
                what = f"a {saved_explorer} policy" if saved_explorer else "not a VW model"
                raise ValueError(f"the saved VW model is {what}, not {name}")
        # A regressor the snapshot lacks (one saved without it) starts as a copy of the first.
        self.regressors = [
            self._workspace(a, models[i] if i < len(models) else models[0])
            for i, a in enumerate(args)
        ]
        # Each regressor's coarse stage (none with coarse empty) learns the reward first
        # and the regressor what it leaves; their predictions add up. VW's normalised updates
        # pace every weight of an example by all its features: with a hundred words in a query
        # the subject's weights learned slowly where they pay (simulations/README.md, "Eighth
        # round"). A query without features in their namespaces leaves them out (``staged``).
        self.coarse = [
            self._workspace(a, m) for a, m in zip(coarse_args, coarse_models, strict=True)
        ]
        # Shared lines of recent choices, by the id of their Features (kept alive here, so an id
        # is not reused): learning that context later reuses its line.
        self._shared: dict[int, tuple[Features, str]] = {}

    def _check(self, params: Mapping[str, ParamValue]) -> None:
        for key, value in params.items():
            if key in BOUNDS:
                BOUNDS[key].check(key, value)
        check_together(self.name, params)

    def _workspace(self, args: list[str], model: bytes | None) -> vowpalwabbit.Workspace:
        try:
            if model is None:
                return vowpalwabbit.Workspace(arg_list=args)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.vw")
                with open(path, "wb") as f:
                    f.write(model)
                # Today's arguments win over the saved ones, so a changed epsilon takes effect.
                return vowpalwabbit.Workspace(arg_list=[*args, "-i", path])
        except RuntimeError as e:
            raise ValueError(f"policy {self.name}: VW rejected {' '.join(args)}: {e}") from e

    @property
    def serving(self) -> int:
        """The regressor whose scores choose: the one whose predictions of the chosen arms'
        rewards, each made before learning it, have the smaller discounted squared error (the
        first, slower one on a tie). After a change the faster one predicts better."""
        return min(range(len(self.regressors)), key=self.errors.__getitem__)

    def staged(self, x: Features) -> bool:
        """Whether the coarse stages take part for ``x``: they exist and ``x`` has features in
        their namespaces. Without any (an app that sends no facts) a stage would learn only
        each arm's mean, which the regressor learns too: such traffic is routed exactly as
        without stages, as measured before them."""
        return bool(self.coarse) and not featured_namespaces(x).isdisjoint(self._kept)

    def predicted(self, regressor: int, text: str, staged: bool = True) -> list[float]:
        """Each arm's cost as ``regressor`` predicts it for the ADF example ``text``, its
        coarse stage's prediction added when ``staged`` (see ``staged``)."""
        costs = predicted_costs(self.regressors[regressor], text)
        if not (staged and self.coarse):
            return costs
        first = predicted_costs(self.coarse[regressor], text)
        return [c + f for c, f in zip(first, costs, strict=True)]

    def choose(self, x: Features, arms: Sequence[Arm]) -> Decision:
        shared = shared_line(x)
        self._shared[id(x)] = (x, shared)
        if len(self._shared) > KEPT_SHARED:
            del self._shared[next(iter(self._shared))]  # the oldest
        # ACTION_PROBS from an explorer; with --cb_adf, each arm's predicted cost (in order)
        serving = self.serving
        text = "\n".join(adf_example(x, arms, shared=shared))
        scores = self.predicted(serving, text, self.staged(x))
        if serving == 0 and self._arm_centre:  # its costs are each arm's own: put them level
            scores = [c - self.centre(arm.name) for c, arm in zip(scores, arms, strict=True)]
        if self._own:
            greed = self.greed()
            t = min(self.learned, self._horizon) if self._horizon else self.learned
            gamma = self._gamma_scale * math.sqrt(t) * greed
            counts = [self.arm_stats.count(arm.name) for arm in arms]
            prior = self._gap_prior / greed**2
            trust = [n / (n + prior) if prior else 1.0 for n in counts]
            z, share = self._dominated
            pmf = squarecb_pmf(scores, gamma, trust)
            scores = thin_dominated(pmf, arms, self.arm_stats, z, share)
        return sample(self._rng, arms, scores)

    def greed(self) -> float:
        """How many times greedier than ``gamma_scale`` and ``gap_prior`` say SquareCB is:
        ``reward_sd / sd`` (at most SPREAD_CAP) when the rewards learned so far spread less than
        ``reward_sd`` (their standard deviation ``sd``), else 1. The exploration's parameters
        were chosen on MMLU-Pro's rewards (sd 0.34-0.38); SquareCB's gamma grows as the noise's
        sd shrinks, and ``gap_prior``, a count of rewards, as its variance: a reward that
        spreads half as much tells as much as four."""
        if not self._reward_sd or self.arm_stats.total() < SPREAD_MIN:
            return 1.0
        sd = self.arm_stats.spread()
        if sd >= self._reward_sd:
            return 1.0
        return min(self._reward_sd / sd, SPREAD_CAP) if sd > 0 else SPREAD_CAP

    def learn(
        self, x: Features, arms: Sequence[Arm], arm: str, probability: float, reward: float
    ) -> None:
        # VW minimises cost; a reward is in [0, 1], higher is better, centred on the baseline
        # (the slow regressor's on the arm's centre, with arm_centre)
        costs = [self.baseline - reward] * len(self.regressors)
        if self._arm_centre:
            costs[0] = self.centre(arm) - reward
        # the centres' importance weight (a NaN or out-of-range probability counts as the clip)
        weight = 1.0 / min(probability, 1.0) if probability > CENTRE_CLIP else 1 / CENTRE_CLIP
        if self._own:
            probability = 1.0  # SquareCB regresses on the observed reward, not importance weighted
        kept = self._shared.pop(id(x), None)
        shared = kept[1] if kept is not None and kept[0] is x else None
        chosen = index_of(arms, arm)

        texts: dict[float, str] = {}  # the labelled example, built once per distinct cost

        def text(cost: float) -> str:
            if cost not in texts:
                texts[cost] = "\n".join(adf_example(x, arms, chosen, cost, probability, shared))
            return texts[cost]

        if self.staged(x):  # each stage learns the cost; its regressor, what the stage left
            costs = [
                c - _learn(vw, text(c), chosen) for vw, c in zip(self.coarse, costs, strict=True)
            ]
        for i, (vw, cost) in enumerate(zip(self.regressors, costs, strict=True)):
            # --cb_adf predicts every arm before it updates: its error on this reward
            error = (_learn(vw, text(cost), chosen) - cost) ** 2
            self.errors[i] = self._mix_discount * self.errors[i] + error
        self.learned += 1
        self.baseline += (reward - self.baseline) / self.learned
        if self._own:
            self.arm_stats.add(arm, reward)
            total = self.arm_stats.total()
            if self._horizon and total > self._horizon:  # the oldest fade: see horizon
                self.arm_stats.scale(self._horizon / total)
        if self._arm_centre:
            self.centres.add(arm, reward, weight)

    def centre(self, arm: str) -> float:
        """The arm's mean reward weighted by 1 / the probability each was chosen with, shrunk
        towards the overall mean as if that were ``arm_centre`` of the arm's rewards (Kish's
        effective count stands for the arm's).

        The arm's plain mean is biased: the routing sends an arm the queries the others are
        predicted to fail, and an arm centred there was locked out. The weights undo that, but
        for the probabilities below CENTRE_CLIP (SquareCB's late exploration), counted as it
        (simulations/README.md, "What is not done")."""
        n = self.centres.effective(arm)
        return (n * self.centres.mean(arm) + self._arm_centre * self.baseline) / (
            n + self._arm_centre
        )

    def dumps(self) -> bytes:
        models = []
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.vw")
            for vw in [*self.regressors, *self.coarse]:
                try:
                    vw.save(path)
                except RuntimeError as e:  # VW says no more than that a write failed
                    raise OSError(
                        f"VW cannot save the model to a temporary file in {tmp} ({e}): its "
                        "disk full, or a file size limit (ulimit -f)? (TMPDIR names another "
                        "directory)"
                    ) from e
                with open(path, "rb") as f:
                    models.append(f.read())
        state = {
            "baseline": self.baseline,
            "learned": self.learned,
            "arms": self.arm_stats.to_json(),
        }
        if self._arm_centre:
            state["centres"] = self.centres.to_json()
        if len(models) > 1:
            state |= {"sizes": [len(m) for m in models], "errors": self.errors}
        if self.coarse:
            state["coarse"] = len(self.coarse)
        return _MAGIC + json.dumps(state).encode() + b"\n" + b"".join(models)


def _learn(vw: vowpalwabbit.Workspace, text: str, chosen: int) -> float:
    """Learn the labelled ADF example ``text``; the chosen arm's cost as predicted before."""
    examples = _NATIVE._parse(vw, text)
    try:
        _NATIVE.learn_multi(vw, examples)
        return float(examples[0].get_action_scores()[chosen])
    finally:
        _NATIVE._finish_example_multi_ex(vw, examples)


MAX_LEARNED = 2**63 - 1  # a count Redis and orjson carry (64-bit)


def _state(header: bytes) -> dict[str, Any]:
    """A snapshot's JSON header, its baseline and count checked: a snapshot may be damaged or
    edited, and a negative count (SquareCB takes its square root) or a NaN baseline (every
    error NaN after) would break every choice. ValueError names what is wrong."""
    try:
        state = json.loads(header)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise ValueError(f"a VW snapshot's header is not JSON: {e}") from None
    if not isinstance(state, dict):
        raise ValueError("a VW snapshot's header is not a JSON object")
    baseline: Any = state.get("baseline")
    learned: Any = state.get("learned")
    # the mean of rewards in [0, 1], with room for rounding
    if type(baseline) not in (int, float) or not -1e-9 <= baseline <= 1 + 1e-9:
        raise ValueError(f"a VW snapshot's baseline is not a mean reward in [0, 1]: {baseline!r}")
    if type(learned) is not int or not 0 <= learned <= MAX_LEARNED:
        raise ValueError(f"a VW snapshot's learned is not a count in [0, 2**63-1]: {learned!r}")
    return state


# The options by which a saved model shows its explorer (VW keeps them in the model file).
_EXPLORER_OPTION = re.compile(rb"--(cover|bag|softmax|regcb|regcbopt|rnd)(?![A-Za-z_])")


def _explorer(model: bytes) -> str | None:
    """The explorer a saved VW model was written by, from the options VW keeps in it (at its
    start); None when it is no model of this module. SquareCB's regressor is ``--cb_adf``."""
    head = model[:4096]
    if b"--cb_adf" not in head:
        return None
    if b"--cb_explore_adf" not in head:
        return "squarecb"
    found = {m.group(1).decode().removesuffix("opt") for m in _EXPLORER_OPTION.finditer(head)}
    return found.pop() if len(found) == 1 else "egreedy" if not found else None


def _split(models: bytes, sizes: object) -> list[bytes | None]:
    """The VW model files a snapshot holds back to back (``sizes``: theirs; None: one)."""
    if sizes is None:
        return [models]
    if (
        not isinstance(sizes, list)
        or not sizes
        or not all(isinstance(n, int) and n > 0 for n in sizes)
        or sum(sizes) != len(models)
    ):
        raise ValueError(f"a VW snapshot's models are {len(models)} bytes, not {sizes!r}")
    out: list[bytes | None] = []
    for size in sizes:
        out.append(models[:size])
        models = models[size:]
    return out


def predicted_costs(vw: vowpalwabbit.Workspace, text: str) -> list[float]:
    """VW's scores for the ADF example ``text``, without learning it: each arm's predicted cost
    under ``--cb_adf``, the explorer's probabilities under ``--cb_explore_adf``."""
    examples = _NATIVE._parse(vw, text)
    try:
        _NATIVE.predict_multi(vw, examples)
        return list(examples[0].get_action_scores())
    finally:
        _NATIVE._finish_example_multi_ex(vw, examples)


def squarecb_pmf(
    costs: Sequence[float], gamma: float, trust: Sequence[float] | None = None
) -> list[float]:
    """SquareCB (Foster and Rakhlin 2020) as VW computes it: each arm but the cheapest gets
    ``1 / (k + gamma * (its cost - the lowest))``, the cheapest (the first, on a tie) the rest.

    ``trust`` (per arm, in [0, 1]) scales each arm's gap. ``VWPolicy`` passes ``n / (n +
    gap_prior)``, ``n`` the arm's rewards so far: an arm the regressor has few rewards of is
    explored as if it were about as good as the best, so one unlucky early reward does not shut
    it out (simulations/README.md, fourth round). The cheapest arm stays the cheapest.
    """
    k = len(costs)
    best = min(range(k), key=costs.__getitem__)
    weights = [1.0] * k if trust is None else trust
    pmf = [1.0 / (k + gamma * w * (c - costs[best])) for c, w in zip(costs, weights, strict=True)]
    pmf[best] = 0.0
    pmf[best] = 1.0 - sum(pmf)
    return pmf


def thin_dominated(
    pmf: Sequence[float], arms: Sequence[Arm], stats: ArmStats, z: float, share: float
) -> list[float]:
    """``pmf`` with the exploration of every arm shown worse than another cut to ``share`` of it;
    the arm ``pmf`` favours most keeps what is cut, and is never cut itself.

    An arm is shown worse when its mean reward plus ``z`` standard errors is below another's mean
    minus ``z`` of its own; the standard errors use the spread of every reward learned. SquareCB
    alone keeps exploring an arm in proportion to ``1 / gap``, however much evidence there is
    that the arm is worse (simulations/README.md, fourth round). Nothing is cut while an
    eligible arm has fewer than two rewards, or with ``z`` 0. The context is untouched: an arm
    the regressor ranks first for this query is chosen as before.
    """
    out = list(pmf)
    if z <= 0 or share >= 1 or len(arms) < 2:
        return out
    counts = [stats.count(arm.name) for arm in arms]
    if min(counts) < 2 or stats.total() < 3:
        return out
    sd = stats.spread()
    means = [stats.mean(arm.name) for arm in arms]
    widths = [z * sd / math.sqrt(n) for n in counts]
    floor = max(m - w for m, w in zip(means, widths, strict=True))
    top = max(range(len(out)), key=out.__getitem__)
    for i, (m, w) in enumerate(zip(means, widths, strict=True)):
        if i != top and m + w < floor:
            out[top] += out[i] * (1 - share)
            out[i] *= share
    return out


def check_together(name: str, params: Mapping[str, ParamValue]) -> None:
    """Raise ValueError for what no one parameter's bounds say: the registry checks a spec with
    it (and with the settings' ``vw_args``), so a spec that would not build is refused where it
    is given, not when a service, the learner or the simulator builds it."""
    # squarecb passes --l2 from its parameter: a second one (vw_args, BANDIT_VW_ARGS) is said
    # here with the spec to write, before VW refuses the pair without naming either.
    options = vw_options(str(params.get("vw_args", "")))
    if name in OWN_EXPLORERS and "--l2" in options:
        l2 = options[options.index("--l2") + 1]
        raise ValueError(
            f"vw_args: {name} sets --l2 from its parameter l2: write "
            f"{name}:l2={l2}, not --l2 in vw_args or BANDIT_VW_ARGS"
        )
    coarse = str(params.get("coarse", ""))
    if coarse and (not set(coarse) < set(SHARED_NAMESPACES) or len(set(coarse)) != len(coarse)):
        raise ValueError(
            f"coarse must name some of the shared namespaces {SHARED_NAMESPACES}, each once"
            f" and not all (coarse= for none), got {coarse!r}"
        )


def _kind(name: str) -> PolicyKind:
    defaults = dict(EXPLORERS[name][1])  # the explorer's own first, then the common ones it lacks
    for key, value in _COMMON.items():
        defaults.setdefault(key, value)
    return PolicyKind(
        build=partial(_build, name),
        load=partial(_load, name),
        defaults=defaults,
        bounds={key: BOUNDS[key] for key in defaults if key in BOUNDS},
        check=partial(check_together, name),
    )


def _build(name: str, params: Mapping[str, ParamValue], seed: int | None) -> VWPolicy:
    return VWPolicy(name, params, seed)


def _load(name: str, data: bytes, params: Mapping[str, ParamValue], seed: int | None) -> VWPolicy:
    return VWPolicy(name, params, seed, model=data)


VW_POLICIES = {name: _kind(name) for name in EXPLORERS}
