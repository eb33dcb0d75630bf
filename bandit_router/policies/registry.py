"""Every kind of policy by name: parsing specs, building and loading."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bandit_router.policies.arm_level import ARM_LEVEL
from bandit_router.policies.base import ParamValue, Policy, PolicyKind, PolicySpec
from bandit_router.policies.baselines import BASELINES
from bandit_router.policies.linucb import LINUCB
from bandit_router.policies.vw import VW_POLICIES

if TYPE_CHECKING:
    from bandit_router.settings import Settings


def _registry() -> dict[str, PolicyKind]:
    return {**VW_POLICIES, "linucb": LINUCB, **ARM_LEVEL, **BASELINES}


def policy_names() -> list[str]:
    return list(_registry())


def _coerce(policy: str, key: str, raw: str, default: ParamValue) -> ParamValue:
    try:
        if isinstance(default, str):
            return raw
        if isinstance(default, int):
            return int(raw)
        return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(
            f"policy {policy}: parameter {key} must be a {kind}, got {raw!r}"
        ) from None


def parse_policy_spec(text: str) -> PolicySpec:
    """Parse ``name:param=value:...``; errors name the valid policies or parameters."""
    name, *items = [part.strip() for part in text.strip().split(":")]
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(registry)}")
    defaults = registry[name].defaults
    params: dict[str, ParamValue] = {}
    for item in filter(None, items):
        key, sep, raw = item.partition("=")
        if not sep or key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise ValueError(f"policy {name}: unknown parameter {item!r}; valid: {valid}")
        params[key] = _coerce(name, key, raw, defaults[key])
    return PolicySpec(name, params)


def _resolve(spec: PolicySpec, settings: Settings | None) -> dict[str, ParamValue]:
    """The spec's parameters over the settings' (epsilon, alpha, vw_args) over the defaults."""
    defaults = _registry()[spec.name].defaults
    params = dict(defaults)
    if settings is not None:
        from_settings: dict[str, ParamValue] = {
            "epsilon": settings.epsilon,
            "alpha": settings.linucb_alpha,
            "vw_args": settings.vw_args,
        }
        params.update({k: v for k, v in from_settings.items() if k in defaults})
    params.update(spec.params)
    return params


def effective_params(spec: PolicySpec, settings: Settings | None) -> dict[str, ParamValue]:
    """Every parameter the policy runs with: the spec's, then the settings', then defaults."""
    return _resolve(spec, settings)


def build_policy(
    spec: PolicySpec | str, settings: Settings | None = None, seed: int | None = None
) -> Policy:
    """A new policy from a spec; settings supply defaults for parameters the spec omits."""
    spec = parse_policy_spec(spec) if isinstance(spec, str) else spec
    return _registry()[spec.name].build(_resolve(spec, settings), seed)


def load_policy(
    spec: PolicySpec | str, data: bytes, settings: Settings | None = None, seed: int | None = None
) -> Policy:
    """A policy restored from ``dumps()`` bytes."""
    spec = parse_policy_spec(spec) if isinstance(spec, str) else spec
    return _registry()[spec.name].load(data, _resolve(spec, settings), seed)
