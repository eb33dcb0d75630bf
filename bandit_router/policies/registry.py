"""Every kind of policy by name: parsing specs, building and loading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from bandit_router.policies.arm_level import ARM_LEVEL
from bandit_router.policies.base import (
    ParamValue,
    Policy,
    PolicyKind,
    PolicySpec,
    plain_number,
    shown,
)
from bandit_router.policies.baselines import BASELINES
from bandit_router.policies.linucb import LINUCB, check_size
from bandit_router.policies.vw import VW_POLICIES, vw_options

if TYPE_CHECKING:
    from bandit_router.settings import Settings


def _registry() -> dict[str, PolicyKind]:
    return {**VW_POLICIES, "linucb": LINUCB, **ARM_LEVEL, **BASELINES}


def policy_names() -> list[str]:
    return list(_registry())


def policy_kind(name: str) -> PolicyKind:
    """The registry entry of policy ``name``: its parameters' defaults and bounds."""
    return _registry()[name]


def _coerce(policy: str, key: str, raw: str, kind: PolicyKind) -> ParamValue:
    default = kind.defaults[key]
    if isinstance(default, str):
        return raw
    try:
        if not plain_number(raw):
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        return float(raw)
    except ValueError:
        what = "an int" if isinstance(default, int) else "a float"
        within = f" in {kind.bounds[key]}" if key in kind.bounds else ""
        raise ValueError(
            f"policy {policy}: parameter {key} must be {what}{within}, got {shown(raw)}"
        ) from None


def parse_policy_spec(text: str) -> PolicySpec:
    """Parse ``name:param=value:...``; errors name the valid policies or parameters."""
    name, *items = [part.strip() for part in text.strip().split(":")]
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown policy {shown(name)}; valid: {', '.join(registry)}")
    defaults = registry[name].defaults
    params: dict[str, ParamValue] = {}
    for item in filter(None, items):
        key, sep, raw = item.partition("=")
        if not sep or key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise ValueError(f"policy {name}: unknown parameter {shown(item)}; valid: {valid}")
        if key in params:  # which one was meant is the writer's, not ours, to say
            raise ValueError(f"policy {name}: parameter {key} is given twice; give it once")
        params[key] = _coerce(name, key, raw, registry[name])
    _check(name, params)
    return PolicySpec(name, params)


def _check(policy: str, params: Mapping[str, ParamValue]) -> None:
    """Every numeric parameter within its kind's bounds (finite: no NaN, infinity or huge int),
    VW's options only those ``vw_options`` allows, and the parameters together as the kind's
    ``check`` wants them (squarecb's ``coarse``, and ``--l2`` not in its ``vw_args``)."""
    kind = _registry()[policy]
    bounds = kind.bounds
    for key, value in params.items():
        if key in bounds:
            try:
                bounds[key].check(key, value)
            except ValueError as e:
                raise ValueError(f"policy {policy}: parameter {e}") from None
    if "vw_args" in params:
        try:
            vw_options(str(params["vw_args"]))
        except ValueError as e:
            raise ValueError(f"policy {policy}: {e}") from None
    if kind.check is not None:
        try:
            kind.check(params)
        except ValueError as e:
            raise ValueError(f"policy {policy}: {e}") from None


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
    _check(spec.name, params)  # the settings' values, and a spec made in code, too
    return params


RunsAs = tuple[str, tuple[tuple[str, ParamValue], ...]]


def runs_as(spec: PolicySpec, settings: Settings | None) -> RunsAs:
    """What a policy runs as: its kind and every parameter it runs with, so ``squarecb`` and
    ``squarecb:gamma_scale=20`` (the default) are one policy, not a champion and its twin."""
    return spec.name, tuple(sorted(_resolve(spec, settings).items()))


def check_arms(spec: PolicySpec, settings: Settings) -> None:
    """A policy that names an arm (``fixed:arm=NAME``) names one of the deployment's arms, and
    LinUCB's matrices for them fit in a model; the simulator's arms come from its file, so it
    does not ask. Its parameters pass its checks with the settings' too (``BANDIT_VW_ARGS``
    with ``--l2`` is not squarecb's): a policy override stored in Redis meets these settings
    only when a process starts."""
    params = _resolve(spec, settings)
    arm = str(params.get("arm", ""))
    if spec.name == "fixed" and settings.arm(arm) is None:
        valid = ", ".join(a.name for a in settings.arms)
        said = f"arm {arm!r} is not an arm" if arm else "names no arm (fixed:arm=NAME)"
        raise ValueError(f"policy fixed: {said}; valid: {valid}")
    if spec.name == "linucb":
        check_size(int(params["dim"]), len(settings.arms))


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
