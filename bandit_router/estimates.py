"""Off-policy estimates of the baselines, for the dashboard: what each would have earned.

Plain inverse propensity scoring over the logged events (Horvitz-Thompson):
``V(pi) = 1/n * sum_i r_i * 1[pi(x_i) = a_i] / p_i``, where ``a_i`` is the logged arm and ``p_i``
its logged propensity. The baselines are deterministic, so ``pi(x_i)`` is one arm, given by the
same rules the baseline policies use (``baselines.fixed_rule``, ``baselines.static_rule``). The
estimate is unbiased when every arm had a positive propensity; with a deterministic logging
policy (LinUCB) events whose logged arm differs from the baseline's carry no information, which
``matched`` shows. The self-normalised variant (SNIPS) divides by the sum of the weights instead
of ``n``: a little bias for much less variance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from bandit_router.baselines import fixed_rule, static_rule
from bandit_router.features import Features
from bandit_router.policies import Arm
from bandit_router.store import Event

# A deterministic baseline: the logged event's features and eligible arms -> the arm it picks.
Rule = Callable[[Event, Sequence[Arm]], str]


class Estimate(BaseModel):
    value: float | None = Field(
        description="IPS estimate of the mean reward; null when no logged event matches",
        examples=[0.61],
    )
    snips: float | None = Field(
        description="self-normalised IPS: the weighted mean reward of the matching events, "
        "lower variance, slightly biased",
        examples=[0.6],
    )
    matched: int = Field(
        description="events whose logged arm is the one this baseline would have chosen",
        examples=[140],
    )
    estimator: str = Field(description="how the value was estimated", examples=["ips"])


def _fixed(name: str) -> Rule:
    return lambda _event, arms: arms[fixed_rule(name, arms)].name


def _static(event: Event, arms: Sequence[Arm]) -> str:
    return arms[static_rule(Features.from_json(event.decision["features"]), arms)].name


def baseline_rules(arms: Sequence[Arm]) -> dict[str, Rule]:
    """Each fixed arm and the static rule, by their policy spec."""
    rules = {f"fixed:arm={a.name}": _fixed(a.name) for a in arms}
    rules["static"] = _static
    return rules


def ips(events: Sequence[Event], rule: Rule, arms: Sequence[Arm]) -> Estimate:
    """The IPS and SNIPS estimates of a deterministic ``rule`` from ``events``."""
    by_name = {a.name: a for a in arms}
    total, weights, matched = 0.0, 0.0, 0
    for event in events:
        d = event.decision
        eligible = [by_name.get(n) or Arm(n) for n in d["arms"]]
        if rule(event, eligible) == d["arm"]:
            matched += 1
            weight = 1.0 / float(d["probability"])  # the logged propensity
            total += float(event.reward["reward"]) * weight
            weights += weight
    if not matched:
        return Estimate(value=None, snips=None, matched=0, estimator="ips")
    return Estimate(
        value=total / len(events), snips=total / weights, matched=matched, estimator="ips"
    )


def estimate_baselines(events: Sequence[Event], arms: Sequence[Arm]) -> dict[str, Estimate]:
    return {name: ips(events, rule, arms) for name, rule in baseline_rules(arms).items()}
