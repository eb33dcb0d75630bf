"""``bandit-router train``: a policy learned from history, written as a snapshot file.

The file is what ``bandit-router snapshot`` writes, so ``bandit-router restore FILE`` publishes
it: the service then serves the trained model and keeps learning from live traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bandit_router.cli.commands import add_deployment, deployment_settings, summary_out
from bandit_router.inputs import reopenable
from bandit_router.offline.train import (
    arms_seen,
    dsjson_records,
    full_feedback,
    is_dsjson,
    logged,
    teach,
)
from bandit_router.policies.base import Arm, Policy
from bandit_router.policies.registry import build_policy, check_arms, parse_policy_spec
from bandit_router.service.backup import to_json, write_file
from bandit_router.service.router import reward_config
from bandit_router.settings import ArmSpec, Settings
from bandit_router.sim import dataset, replay
from bandit_router.store.records import Snapshot


def train(args: argparse.Namespace) -> int:
    """Learn a policy from a full-feedback replay file (every arm's outcome teaches that arm) or
    an exported DSJSON log (each logged choice, weighted by its propensity), and write a snapshot
    file for `bandit-router restore`. Reward weights and budgets are the BANDIT_* settings."""
    settings = deployment_settings(args)  # its policy, reward weights and budgets
    out = Path(args.out)
    try:
        _check_out(out)  # before training, not after a long run
        spec = parse_policy_spec(args.policy or settings.policy)
        policy = build_policy(spec, settings, settings.seed)
        with reopenable(args.file) as path:  # a pipe read twice would lose rows
            if out.resolve() in {
                path.resolve(),
                *([Path(args.arms).resolve()] if args.arms else []),
            }:
                raise ValueError(f"--out {out}: is the file trained on; give another name")
            learned, arms, kind, words = _teach(args, path, settings, policy)
        specs = [
            ArmSpec(name=a.name, params_b=a.params_b, usd_per_mtok=a.usd_per_mtok) for a in arms
        ]
        trained = settings.model_copy(update={"arms": specs})
        check_arms(spec, trained)  # fixed:arm=NAME names one of the file's arms
    except (ValueError, OSError) as e:
        print(f"bandit-router train: {e}", file=sys.stderr)
        return 2
    snapshot = Snapshot(str(spec), learned, "0-0", policy.dumps())
    doc = to_json(snapshot, trained, words)
    try:
        write_file(out, doc)
    except OSError as e:  # a disk that filled up during training, say
        print(f"bandit-router train: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {
        "file": str(out),
        "trained_on": f"{args.file} ({kind})",
        "policy": str(spec),
        "examples_learned": learned,
        "arms": [a.name for a in arms],
    }
    print(json.dumps(summary, indent=1), file=summary_out(out))
    return 0


def _teach(
    args: argparse.Namespace, path: Path, settings: Settings, policy: Policy
) -> tuple[int, list[Arm], str, str | None]:
    """Teach ``policy`` the file at ``path``: the examples learned, the file's arms, its kind
    and, for a replay file, the fingerprint of the key its words were hashed under (a log's
    were hashed under its deployment's)."""
    if is_dsjson(path):
        if args.arms:
            raise ValueError(
                "--arms is a replay file's; a DSJSON log names its arms (and their prices)"
            )
        # Taught as read: a bad line stops it before anything is written, as before.
        seen: dict[str, Arm] = {}
        records = arms_seen(dsjson_records(path, settings.max_features), seen)
        return teach(policy, logged(records)), list(seen.values()), "DSJSON log", None
    try:
        data = dataset.load(
            path, args.arms and Path(args.arms), args.skip_bad, None, settings.max_features
        )
    except dataset.ReplayError as e:
        raise ValueError(
            f"{e}; read as a replay file, since the first row has no _label_cost (what "
            "an exported DSJSON event has)"
        ) from e
    key = dataset.replay_words(settings.hash_key)  # as `simulate` hashes words
    prepared = dataset.prepare(data, reward_config(settings), key, args.skip_bad)
    rows = dataset.order(len(prepared.replay.rows), settings.seed or 0, in_order=False)
    examples = full_feedback(
        prepared.features,
        prepared.eligible,
        lambda i: replay.outcomes(prepared, i),
        (int(i) for i in rows),
        settings.seed or 0,
    )
    return teach(policy, examples), data.arms, "replay file", key.fingerprint


def _check_out(out: Path) -> None:
    """Refuse an output path the snapshot cannot be written to (no such folder, a folder, not
    writable), so a long training run does not end in an error."""
    folder = out.parent
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; give a file name")
    if not folder.is_dir():
        raise ValueError(f"--out {out}: no such directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out {out}: not writable")


def add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="learn a policy from history", description=train.__doc__)
    p.add_argument(
        "file", help="a replay file (JSON rows with every arm's outcome) or DSJSON (- for stdin)"
    )
    p.add_argument("--out", required=True, help="the snapshot file to write")
    p.add_argument("--arms", help="the replay file's arms file (.arms.json)")
    p.add_argument("--policy", help="the policy spec to train (default BANDIT_POLICY)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed replay rows")
    add_deployment(p)
    p.set_defaults(func=train)
