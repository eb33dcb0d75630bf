"""bandit-router: a contextual bandit that learns which LLM size should answer each query."""

from bandit_router.app import create_app
from bandit_router.features import Features, extract
from bandit_router.policies import Arm, Decision, Policy, build_policy, load_policy, policy_names
from bandit_router.rewards import RewardConfig, RewardParts
from bandit_router.settings import Settings

__all__ = [
    "Arm",
    "Decision",
    "Features",
    "Policy",
    "RewardConfig",
    "RewardParts",
    "Settings",
    "build_policy",
    "create_app",
    "extract",
    "load_policy",
    "policy_names",
]
