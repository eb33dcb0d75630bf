"""Deployments: named routers served by one service, each with its own settings and keys.

The environment's settings are the deployment ``default``. ``BANDIT_DEPLOYMENTS_FILE`` (TOML or
JSON) adds more, each a table of the settings it changes from the environment's:

    [deployments.support]
    arms = "4b:4:0.1,7b:7:0.2"
    policy = "linucb"
    reward_weights = {rating = 0.7, latency = 0.3}
    api_keys = ["support-key"]     # valid for this deployment only (BANDIT_API_KEYS: for all)

A deployment is a value handed down (``Deployment``): its name, its ``Settings`` and its key
prefix, which is the hash tag of every one of its Redis keys, so each deployment sits in one
Redis Cluster slot of its own and never shares a key with another.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bandit_router.inputs import read_bounded, unique_keys
from bandit_router.settings import Settings

DEFAULT = "default"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Settings of the process as a whole, not of one deployment: a deployment table may not set them.
PROCESS_SETTINGS = frozenset(
    {
        "host",
        "port",
        "workers",
        "shutdown_timeout_s",
        "log_level",
        "loop",
        "redis_url",
        "redis_cluster",
        "data_dir",
        "deployments_file",
        "startup_wait_s",
        "learn_in_workers",
        "admin_key",
        "ops_keys",
        "max_body_bytes",
        "body_timeout_s",
        "head_timeout_s",
        "send_timeout_s",
        "gateway_max_concurrency",  # one pool of upstream calls serves every deployment's
    }
)


class DeploymentsError(ValueError):
    """The deployments file is unreadable or wrong; the message names the file, the deployment
    and the setting at fault."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One router's configuration: its name, its settings, its key prefix (its hash tag)."""

    name: str
    settings: Settings

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    def event_id(self, given: str) -> str:
        """The id this deployment stores an event under: a named deployment's ids start with
        ``NAME:`` so ``/reward`` finds the deployment from the id alone."""
        if self.name == DEFAULT or given.startswith(self.name + ":"):
            return given
        return f"{self.name}:{given}"


def deployment_settings() -> list[str]:
    """The settings a deployment table may set."""
    return sorted(set(Settings.model_fields) - PROCESS_SETTINGS)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            text = read_bounded(f, "the file")  # not UTF-8, or over 4 MiB (/dev/zero): refused
    except OSError as e:
        raise DeploymentsError(f"deployments file {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise DeploymentsError(f"deployments file {path}: {e}") from None
    is_json = path.suffix.lower() == ".json"
    kind = "JSON" if is_json else "TOML"
    try:
        data = json.loads(text, object_pairs_hook=unique_keys) if is_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise DeploymentsError(f"deployments file {path}: not valid {kind}: {e}") from e
    except RecursionError:
        raise DeploymentsError(f"deployments file {path}: {kind} nested too deeply") from None
    except ValueError as e:  # a key twice (as TOML refuses it), or too many digits
        raise DeploymentsError(f"deployments file {path}: {e}") from None
    if not isinstance(data, dict) or set(data) != {"deployments"}:
        raise DeploymentsError(
            f"deployments file {path}: expected one top-level table, `deployments`, holding a "
            "table per deployment"
        )
    tables = data["deployments"]
    if not isinstance(tables, dict):
        raise DeploymentsError(f"deployments file {path}: `deployments` must be a table")
    return tables


def _one(path: Path, base: Settings, name: str, table: Any) -> Deployment:
    where = f"deployments file {path}: deployment {name!r}"
    if name == DEFAULT:
        raise DeploymentsError(f"{where}: the name is reserved for the environment's settings")
    if not NAME_PATTERN.match(name):
        raise DeploymentsError(
            f"{where}: a name is 1-32 characters of a-z, 0-9, _ and -, starting with a letter "
            "or digit"
        )
    if not isinstance(table, dict):
        raise DeploymentsError(f"{where}: must be a table of settings")
    for key in table:
        if key in PROCESS_SETTINGS:
            raise DeploymentsError(
                f"{where}: {key} is a setting of the whole service (BANDIT_{key.upper()}), not "
                "of a deployment"
            )
        if key not in Settings.model_fields:
            raise DeploymentsError(
                f"{where}: unknown setting {key!r}; valid: {', '.join(deployment_settings())}"
            )
    # The environment's values as they are: a dump would drop fields excluded from dumps (an
    # arm's upstream) and the deployment's gateway would lose them.
    values = {field: getattr(base, field) for field in Settings.model_fields}
    values.update(table)
    if "key_prefix" not in table:
        values["key_prefix"] = f"{base.key_prefix}:{name}"
    # The service's keys are valid everywhere; a deployment's own keys only for it.
    values["api_keys"] = [*base.api_keys, *_keys(where, table.get("api_keys", []))]
    try:
        settings = Settings.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "?"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise DeploymentsError(f"{where}: {field}: {message}") from e
    return Deployment(name, settings)


def _keys(where: str, keys: Any) -> list[str]:
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise DeploymentsError(f"{where}: api_keys must be a list of non-empty strings")
    return keys


def load_deployments(base: Settings) -> dict[str, Deployment]:
    """Every deployment: ``default`` (the environment's settings) first, then the file's."""
    found = {DEFAULT: Deployment(DEFAULT, base)}
    if not base.deployments_file:  # unset, or empty as a compose file leaves it
        return found
    path = Path(base.deployments_file)
    prefixes = {base.key_prefix: DEFAULT}
    for name, table in _read(path).items():
        deployment = _one(path, base, name, table)
        other = prefixes.get(deployment.prefix)
        if other is not None:
            raise DeploymentsError(
                f"deployments file {path}: deployment {name!r} has the key prefix "
                f"{deployment.prefix!r} of deployment {other!r}; each needs its own"
            )
        prefixes[deployment.prefix] = name
        found[name] = deployment
    _models_apart(path, found)
    return found


def _models_apart(path: Path, found: dict[str, Deployment]) -> None:
    """A gateway request's ``model`` naming a deployment lets that deployment choose: an arm
    with an upstream, or a deployment's ``gateway_model``, named as another deployment could
    never be asked for by that name (as an arm named as ``gateway_model`` is refused)."""
    named = set(found) - {DEFAULT}
    for name, deployment in found.items():
        where = f"deployments file {path}: deployment {name!r}"
        settings = deployment.settings
        for arm in settings.arms:
            if arm.upstream is not None and arm.name in named:
                raise DeploymentsError(
                    f"{where}: arm {arm.name!r} has an upstream and is named as deployment "
                    f"{arm.name!r}, which the gateway's model names to let that deployment "
                    "choose: rename the arm or the deployment"
                )
        if settings.gateway_model in named and settings.gateway_model != name:
            setting = "gateway_model" if name != DEFAULT else "BANDIT_GATEWAY_MODEL"
            raise DeploymentsError(
                f"{where}: its {setting} {settings.gateway_model!r} is the name of deployment "
                f"{settings.gateway_model!r}, which the gateway's model names to let that "
                "deployment choose: rename the deployment, or set another gateway_model"
            )


def deployment_of_event(event_id: str, names: Any) -> str:
    """The deployment an event id belongs to: ``NAME:...`` for a named one, else ``default``."""
    head, sep, _ = event_id.partition(":")
    return head if sep and head != DEFAULT and head in names else DEFAULT


def setting_named(deployment: str | None, env: str, key: str) -> str:
    """A deployment's setting as a message names it: the variable ``env`` for ``default``, the
    file's ``key`` for a named deployment (which takes ``env`` where its table sets none)."""
    if deployment is None or deployment == DEFAULT:
        return env
    return f"deployment {deployment}'s {key}: BANDIT_DEPLOYMENTS_FILE, or {env} when it sets none"


def settings_of(base: Settings, name: str | None) -> Settings:
    """The settings of deployment ``name`` (None: ``default``, the environment's)."""
    if name is None or name == DEFAULT:
        return base
    found = load_deployments(base)
    if name not in found:
        where = base.deployments_file or "no BANDIT_DEPLOYMENTS_FILE set"
        raise DeploymentsError(f"unknown deployment {name!r} ({where}); valid: {', '.join(found)}")
    return found[name].settings
