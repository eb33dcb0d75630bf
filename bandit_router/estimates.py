"""Off-policy estimates of the baselines, for the dashboard: what each would have earned.

Plain inverse propensity scoring over the logged events (Horvitz-Thompson):
``V(pi) = 1/n * sum_i r_i * 1[pi(x_i) = a_i] / p_i``, where ``a_i`` is the logged arm and ``p_i``
its logged propensity. The baselines are deterministic, so ``pi(x_i)`` is one arm. The estimate
is unbiased when every arm had a positive propensity; with a deterministic logging policy
(LinUCB) events whose logged arm differs from the baseline's carry no information, which
``matched`` shows. The self-normalised variant (SNIPS) divides by the sum of the weights instead
of ``n``: a little bias for much less variance.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from bandit_router.features import Features
from bandit_router.policies import Arm, Policy, build_policy
from bandit_router.store import Event


class Estimate(BaseModel):
    value: float | None = Field(
        description="estimated mean reward; null when no logged event matches the baseline",
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


def baseline_policies(arms: Sequence[Arm]) -> dict[str, Policy]:
    """Each fixed arm and the static rule, by their policy spec."""
    policies = {f"fixed:arm={a.name}": build_policy(f"fixed:arm={a.name}") for a in arms}
    policies["static"] = build_policy("static")
    return policies


def ips(events: Sequence[Event], policy: Policy, arms: Sequence[Arm]) -> Estimate:
    """The IPS estimate of a deterministic ``policy`` from ``events``."""
    by_name = {a.name: a for a in arms}
    total, weights, matched = 0.0, 0.0, 0
    for event in events:
        d = event.decision
        eligible = [by_name.get(n) or Arm(n) for n in d["arms"]]
        choice = policy.choose(Features.from_json(d["features"]), eligible).arm
        if choice == d["arm"]:
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
    return {name: ips(events, policy, arms) for name, policy in baseline_policies(arms).items()}
