"""Champion and challengers in the replay: the service's ``Bench`` over a replay's steps.

``auto`` serves ``BANDIT_POLICY`` with ``BANDIT_CHALLENGERS`` as challengers;
``auto:champion=SPEC:challengers=SPEC+SPEC`` names them (each SPEC as ``BANDIT_POLICY`` takes
it, parameters included: ``auto:champion=squarecb:challengers=linucb:alpha=1+egreedy``). Each
step is the service's: the champion chooses and learns, then the bench scores and teaches every
challenger the same logged decision; every ``JUDGE_EVERY`` steps it judges them and the best
that clears is promoted, as ``BANDIT_AUTO_PROMOTE=true`` does (always on here).
``BANDIT_PROMOTE_MIN_EVENTS`` and ``BANDIT_CHALLENGER_WINDOW`` apply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bandit_router.policies.base import Arm, Policy, PolicySpec
from bandit_router.policies.registry import build_policy, parse_policy_spec
from bandit_router.service.challengers import Bench
from bandit_router.settings import Settings
from bandit_router.sim.dataset import Prepared, Row

_KEYS = re.compile(r":(champion|challengers)=")


def is_auto(name: str) -> bool:
    return name == "auto" or name.startswith("auto:")


def parse_auto(name: str, settings: Settings) -> tuple[PolicySpec, list[PolicySpec]]:
    """The champion and challengers an ``auto`` name gives; ``ValueError`` naming the syntax."""
    syntax = "expected auto or auto:champion=SPEC:challengers=SPEC+SPEC"
    if not is_auto(name):
        raise ValueError(f"{name!r}: {syntax}")
    champion, challengers = settings.policy, list(settings.challengers)
    rest = name[len("auto") :]
    named = False  # the challengers come from the name, not BANDIT_CHALLENGERS
    if rest:
        parts = _KEYS.split(rest)
        if parts[0] != "" or len(parts) % 2 == 0:
            raise ValueError(f"{name!r}: {syntax}")
        given = dict(zip(parts[1::2], parts[2::2], strict=True))
        champion = given.get("champion", champion)
        named = "challengers" in given
        if named:
            challengers = [s for s in given["challengers"].split("+") if s.strip()]
    given_specs = [parse_policy_spec(s) for s in challengers]
    head = parse_policy_spec(champion)
    specs = [s for s in given_specs if str(s) != str(head)]
    if not specs:
        why = (
            f"every challenger is the champion {head}"
            if given_specs
            else ("challengers= names none" if named else "BANDIT_CHALLENGERS is empty")
        )
        raise ValueError(f"{name!r}: no challenger ({why}); {syntax}")
    return head, specs


@dataclass(slots=True)
class ChampionStepper:
    """One replay of a champion with challengers; ``promotions`` are the bench's records, with
    ``model_version`` the step (1-based) after which each took effect."""

    policy: Policy
    bench: Bench
    prepared: Prepared
    steps: int = 0
    promotions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls, name: str, prepared: Prepared, seed: int, settings: Settings | None
    ) -> ChampionStepper:
        settings = settings or Settings()
        champion, challengers = parse_auto(name, settings)
        bench = Bench(champion, challengers, settings, seed)
        return cls(build_policy(champion, settings, seed), bench, prepared)

    def step(self, i: int, row: Row, arms: Sequence[Arm]) -> tuple[str, float]:
        x = self.prepared.features[i]
        decision = self.policy.choose(x, arms)
        reward = self.prepared.rewards.combine(row.outcomes[decision.arm])
        self.policy.learn(x, arms, decision.arm, decision.probability, reward)
        self.bench.observe(x, arms, decision.arm, decision.probability, reward)
        self.steps += 1
        if self.bench.due:
            best = self.bench.judge()
            if best is not None:
                promoted, record = self.bench.promote(
                    parse_policy_spec(best.policy), self.policy, "auto", self.steps
                )
                self.policy = promoted.policy
                self.promotions.append(record)
        return decision.arm, reward
