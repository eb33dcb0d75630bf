"""Sequences of calls, as a buggy client or an attacker makes them, against a live service.

A hypothesis state machine drives one real service (uvicorn on loopback, real Redis, three
deployments) over HTTP: decisions with and without ids, ids replayed (with other arms, through
another deployment, with the deployment's prefix written out), rewards in parts, twice, after
the event was learned, for unknown ids, after the window closed; the same id chosen, the same
event rewarded and the policy switched on several connections at once; policy switches,
promotions, snapshots, resets and a restart. After every step: no 5xx and no traceback
anywhere; every read endpoint answers and parses; each event learned is in the log once, with
the reward the client was told; the model's version counts each learned event once; the
counters and metrics agree with what the client was told. The ``late`` deployment's window is
1 s: answers near its end may be either, and are taken as the service gave them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from prometheus_client.parser import text_string_to_metric_families

from bandit_router.rewards import PART_BOUNDS, PART_FIELDS, RewardConfig, RewardParts
from tests.conftest import SettingsFactory
from tests.live import Servers, serve  # noqa: F401  (fixture)

ADMIN = "adm-key"
WAIT_S = 1  # the "late" deployment's reward window
WEIGHTS = {"accuracy": 0.6, "rating": 0.2, "latency": 0.2}
ARMS: dict[str, list[str]] = {
    "default": ["4b", "7b", "14b"],
    "support": ["4b", "14b"],
    "late": ["4b", "7b", "14b"],
}
DEPLOYMENTS: dict[str, dict[str, float]] = {  # each deployment's reward weights
    "default": WEIGHTS,
    "support": {"rating": 0.7, "latency": 0.3},
    "late": WEIGHTS,
}
DEPLOYMENTS_TOML = f"""
[deployments.support]
arms = "4b:4:0.1,14b:14:0.4"
policy = "linucb"
reward_weights = {{rating = 0.7, latency = 0.3}}

[deployments.late]
reward_wait_s = {WAIT_S}
sweep_s = 0.2
"""
READS = [
    "/healthz",
    "/arms",
    "/arms?deployment=support",
    "/deployments",
    "/stats",
    "/stats?deployment=support&window=50&buckets=3",
    "/stats?deployment=late",
    "/v1/models",
]
TRACEBACK = ("Traceback (most recent call last)", 'File "/')


@dataclass
class Decision:
    deployment: str
    answer: dict[str, Any]
    arms: list[str]
    chose_after: float  # client time the /choose answer came back
    chose_before: float
    parts: dict[str, float] = field(default_factory=dict)
    final: bool = False
    reward: float | None = None
    uncertain: bool = False  # a reward near the window's end: either answer was right


def _named(deployment: str) -> dict[str, Any]:
    return {} if deployment == "default" else {"deployment": deployment}


def _stored_id(deployment: str, given: str) -> str | None:
    """The id ``deployment`` stores ``given`` under, or None when it refuses it (422)."""
    head, sep, _ = given.partition(":")
    owner = head if sep and head in ("support", "late") else "default"
    if deployment == "default" and owner != "default":
        return None
    stored = (
        given
        if deployment == "default" or given.startswith(deployment + ":")
        else f"{deployment}:{given}"
    )
    return stored if len(stored) <= 128 else None


def _owner(event_id: str) -> str:
    head, sep, _ = event_id.partition(":")
    return head if sep and head in ("support", "late") else "default"


def _weighted(deployment: str) -> set[str]:
    return {PART_FIELDS[k] for k, w in DEPLOYMENTS[deployment].items() if w > 0}


def _combine(deployment: str, parts: dict[str, float]) -> float:
    return RewardConfig(DEPLOYMENTS[deployment]).combine(RewardParts.from_mapping(parts))


def _clean(response: httpx.Response) -> None:
    """No 5xx, and nothing of a traceback in the body."""
    assert response.status_code < 500, (response.status_code, response.text)
    for mark in TRACEBACK:
        assert mark not in response.text, response.text


def _error(response: httpx.Response, status: int | set[int], field: str | None) -> None:
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail", "field"} and body["detail"], body
    if field is not None:
        assert body["field"] == field, body


# strategies


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four, else ``odd``."""
    return st.sampled_from([usual, usual, usual, odd]).flatmap(lambda s: s)


queries = mostly(
    st.sampled_from(["what is 2+2?", "def f(x): return x", "summarise this report", "é ✓ 中文"]),
    st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(["", " ", "\n\t"])),
)
good_values = st.one_of(
    st.text(max_size=10),
    st.booleans(),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from(["", "x" * 256, 1e15, -1e15, 0.0, -0.0, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
)
bad_values = st.sampled_from(["x" * 257, 1e15 + 1e3, -(10**15) - 1])
good_keys = st.one_of(
    st.sampled_from(["task", "tier", "k" * 64, "é"]), st.text(min_size=1, max_size=5)
)
features = mostly(
    st.one_of(st.none(), st.dictionaries(good_keys, good_values, max_size=4)),
    st.one_of(
        st.dictionaries(st.just("k" * 65), good_values, min_size=1),
        st.dictionaries(good_keys, bad_values, min_size=1),
        st.just({f"f{i}": i for i in range(65)}),
        st.just({f"f{i}": i for i in range(64)}),
    ),
)
arm_lists = mostly(
    st.one_of(st.none(), st.lists(st.sampled_from(["4b", "7b", "14b"]), min_size=1, max_size=4)),
    st.sampled_from([["70b"], [], ["4b", "70b"], ["14b", "14b"]]),
)
deployments = st.sampled_from(["default", "support", "late"])
base_ids = st.sampled_from(["a", "b", "c", "d", "x" * 120])
id_prefixes = mostly(st.just(""), st.sampled_from(["support:", "late:", "default:", "nobody:"]))
part_values = {
    "latency_ms": mostly(
        st.sampled_from([0, 0.0, 840, 86_400_000, 1999.9, 1e-300]),
        st.sampled_from([86_400_000.5, -1]),
    ),
    "accuracy": mostly(
        st.sampled_from([0, 1, 0.5, -0.0, 5e-324]), st.sampled_from([1.0000001, -0.1])
    ),
    "rating": mostly(st.sampled_from([1, 5, 3.5]), st.sampled_from([0.99, 6])),
    "cost_usd": mostly(st.sampled_from([0, 1000, 0.0004]), st.just(1000.5)),
    "reward": mostly(st.sampled_from([0, 1, 0.25, 1e-200]), st.sampled_from([1.5, -0.1])),
}
reward_bodies = mostly(
    st.dictionaries(
        st.sampled_from(sorted(part_values)), st.just(None), min_size=1, max_size=3
    ).flatmap(lambda d: st.fixed_dictionaries({k: part_values[k] for k in d})),
    st.fixed_dictionaries({}, optional={**part_values, "final": st.sampled_from([True, False])}),
)
POLICIES = [
    "squarecb",
    "egreedy",
    "linucb",
    "random",
    "fixed:arm=4b",
    "fixed:arm=7b",
    "ts",
    "squarecb:gamma_scale=nan",
    "nonsense",
    "linucb:alpha=0.5",
]


@dataclass
class Service:
    base: str
    redis: redis.Redis
    prefix: str
    restart: Callable[[], str]

    def key(self, deployment: str, name: str) -> str:
        p = self.prefix if deployment == "default" else f"{self.prefix}:{deployment}"
        return "{" + p + "}:" + name


class Sequences(RuleBasedStateMachine):
    service: Service  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(base_url=self.service.base, timeout=30)
        self.waited = False
        self.restarted = False
        self.tag = uuid.uuid4().hex[:8]  # this example's ids: none met before
        self.events: dict[str, Decision] = {}
        self.rewards_ok = {d: 0 for d in DEPLOYMENTS}  # 2xx /reward calls (this process)
        self.made = {d: 0 for d in DEPLOYMENTS}  # new decisions (this process)
        self.policy: dict[str, str | None] = {d: None for d in DEPLOYMENTS}
        # events the served model has learned, once seen (not "late": its sweep learns too)
        self.version: dict[str, int | None] = {d: None for d in DEPLOYMENTS}
        self.log_from = {d: self._last_id(d) for d in DEPLOYMENTS}
        self.counters0 = {d: self._counters(d) for d in DEPLOYMENTS}
        self.metrics0 = self._metrics()

    # helpers

    def _last_id(self, deployment: str) -> str:
        key = self.service.key(deployment, "events")
        last: Any = self.service.redis.xrevrange(key, count=1)
        return str(last[0][0].decode()) if last else "0-0"

    def _counters(self, deployment: str) -> dict[str, float]:
        raw: Any = self.service.redis.hgetall(self.service.key(deployment, "stats"))
        return {k.decode(): float(v) for k, v in raw.items()}

    def _logged(self, deployment: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        key = self.service.key(deployment, "events")
        entries: Any = self.service.redis.xrange(key, min="(" + self.log_from[deployment])
        return [(json.loads(f[b"d"]), json.loads(f[b"r"])) for _, f in entries]

    def _metrics(self) -> dict[tuple[str, str], float]:
        response = self.http.get("/metrics")
        _clean(response)
        assert response.status_code == 200
        found: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in ("bandit_decisions_total", "bandit_rewards_received_total"):
                    k = (sample.name, sample.labels.get("deployment", "default"))
                    found[k] = found.get(k, 0.0) + sample.value
        return found

    def _version(self, deployment: str, seen: int) -> None:
        """A single process learns each reward before it answers: its model's version counts
        every event learned, once."""
        if deployment == "late":
            return
        if self.version[deployment] is None:
            self.version[deployment] = seen
        assert seen == self.version[deployment], (deployment, seen, self.version)

    def _id(self, base: str, prefix: str) -> str:
        if not base:  # an id as it is
            return prefix
        return f"{prefix}{base}-{self.tag}" if len(base) < 100 else f"{prefix}{self.tag}{base}"

    # rules: choosing

    @rule(
        deployment=deployments,
        query=queries,
        features=features,
        arms=arm_lists,
        given=st.one_of(st.none(), st.tuples(base_ids, id_prefixes)),
    )
    def choose(
        self,
        deployment: str,
        query: str,
        features: dict[str, Any] | None,
        arms: list[str] | None,
        given: tuple[str, str] | None,
    ) -> None:
        body: dict[str, Any] = {"query": query, **_named(deployment)}
        if features is not None:
            body["features"] = features
        if arms is not None:
            body["arms"] = arms
        event_id = self._id(*given) if given else None
        if event_id is not None:
            body["event_id"] = event_id
        before = time.time()
        response = self.http.post("/choose", json=body)
        after = time.time()
        _clean(response)
        # what the contract refuses, whatever the state: every field at fault, the first named
        valid = ARMS[deployment]
        wrong = []
        if not query:
            wrong.append("query")
        if features is not None and (
            any(len(k) > 64 for k in features)
            or any(isinstance(v, str) and len(v) > 256 for v in features.values())
            or any(not isinstance(v, (str, bool)) and abs(v) > 1e15 for v in features.values())
        ):
            wrong.append("features")
        if arms == []:
            wrong.append("arms")
        if event_id is not None and len(event_id) > 128:
            wrong.append("event_id")
        if wrong:
            return _error(response, 422, wrong[0])
        stored = None
        if event_id is not None:
            stored = _stored_id(deployment, event_id)
            if stored is None:
                return _error(response, 422, "event_id")
        if not query.strip():
            return _error(response, 422, "query")
        if features is not None and len(features) > 64:
            return _error(response, 422, "features")
        if arms is not None and any(a not in valid for a in arms):
            return _error(response, 422, "arms")
        known = self.events.get(stored) if stored else None
        if known is not None and arms is not None and set(arms) != set(known.arms):
            return _error(response, 409, "arms")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["degraded"] is False
        if known is not None:
            assert answer == known.answer, (answer, known.answer)
            return
        if stored is not None:
            assert answer["event_id"] == stored
        elif deployment != "default":
            assert answer["event_id"].startswith(deployment + ":")
        assert answer["event_id"] not in self.events
        eligible = list(dict.fromkeys(arms)) if arms else valid
        assert set(answer["probabilities"]) == set(eligible), answer
        assert answer["arm"] in eligible
        assert abs(sum(answer["probabilities"].values()) - 1) < 1e-6, answer
        assert answer["probability"] == answer["probabilities"][answer["arm"]]
        if self.policy[deployment] is not None:
            assert answer["policy"] == self.policy[deployment], (answer, self.policy)
        self._version(deployment, answer["model_version"])
        self.events[answer["event_id"]] = Decision(deployment, answer, eligible, after, before)
        self.made[deployment] += 1

    @precondition(lambda self: self.events)
    @rule(data=st.data(), query=queries, features=features, arms=arm_lists, via_other=st.booleans())
    def choose_again(
        self,
        data: st.DataObject,
        query: str,
        features: dict[str, Any] | None,
        arms: list[str] | None,
        via_other: bool,
    ) -> None:
        """A known id again: as /choose answered it, or without its deployment's prefix."""
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        deployment = self.events[event_id].deployment
        if via_other and deployment != "default":
            event_id = event_id.removeprefix(deployment + ":")
        self.choose(deployment, query, features, arms, ("", event_id))

    # rules: rewarding

    def _expect_reward(
        self, event_id: str, body: dict[str, Any], response: httpx.Response, sent: float
    ) -> None:
        """Check the answer to a reward ``body`` for ``event_id`` sent at ``sent`` (client time)
        against what the service answered before; take what it accepted."""
        deployment = _owner(event_id)
        present = {k: v for k, v in body.items() if k != "final"}
        final = body.get("final") is True
        wrong = ["event_id"] if len(event_id) > 128 else []
        for name in ("latency_ms", "accuracy", "rating", "cost_usd", "reward"):  # schema order
            value = present.get(name, 0.5 if name != "rating" else 3)
            low, high = PART_BOUNDS[name]
            if not low <= value <= high:
                wrong.append(name)
        if wrong:
            return _error(response, 422, wrong[0])
        if not present and not final:
            return _error(response, 422, None)
        known = self.events.get(event_id)
        if known is not None:
            deployment = known.deployment
        if present and "reward" not in present and not present.keys() & _weighted(deployment):
            return _error(response, 422, "reward")
        if known is None:
            return _error(response, 404, "event_id")
        answered = time.time()
        if known.deployment == "late" and not known.final:
            ends_early, ends_late = known.chose_before + WAIT_S, known.chose_after + WAIT_S
            if answered < ends_early - 0.05:
                pass  # in time
            elif sent > ends_late + 0.05:  # past the window
                _error(response, {404, 409}, "event_id")
                if response.status_code == 409:
                    assert known.parts, "a window with no part was settled"
                    known.final = True  # the sweep learned it
                return
            else:
                known.uncertain = True
                if response.status_code != 200:
                    return _error(response, {404, 409}, "event_id")
        if known.final:
            return _error(response, 409, "event_id")
        if not present and not known.parts:  # final alone, nothing to learn
            return _error(response, 422, "reward")
        assert response.status_code == 200, response.text
        self.rewards_ok[known.deployment] += 1
        answer = response.json()
        assert answer["event_id"] == event_id and answer["arm"] == known.answer["arm"]
        dups = sorted(k for k in present if k in known.parts)
        assert sorted(answer["duplicates"]) == dups, (answer, known.parts)
        merged = {**present, **known.parts}
        assert answer["parts"] == {k: float(v) for k, v in merged.items()}, (answer, merged)
        complete = final or "reward" in merged or _weighted(known.deployment) <= merged.keys()
        known.parts = {k: float(v) for k, v in merged.items()}
        if complete:
            assert answer["status"] == "final", answer
            expected = _combine(known.deployment, merged)
            assert answer["reward"] == pytest.approx(expected), (answer, expected)
            known.final, known.reward = True, answer["reward"]
            if self.version[known.deployment] is not None:
                self.version[known.deployment] += 1  # type: ignore[operator]
            self._version(known.deployment, answer["model_version"])
        else:
            self._version(known.deployment, answer["model_version"])
            assert answer["status"] == "pending" and answer["reward"] is None, answer

    # What a rule draws must not depend on what the service answered: the answers to calls at
    # once (or near a window's end) differ from run to run, and hypothesis replays the draws.
    @precondition(lambda self: self.events)
    @rule(data=st.data(), part=st.sampled_from(sorted(part_values)), final=st.booleans())
    def reward_a_part(self, data: st.DataObject, part: str, final: bool) -> None:
        """One part of a known event, as a well-behaved app sends it."""
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        body: dict[str, Any] = {part: data.draw(part_values[part])}
        if final:
            body["final"] = True
        sent = time.time()
        response = self.http.post("/reward", json={"event_id": event_id, **body})
        _clean(response)
        self._expect_reward(event_id, body, response, sent)

    @precondition(lambda self: self.events)
    @rule(data=st.data(), body=reward_bodies)
    def reward_known(self, data: st.DataObject, body: dict[str, Any]) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        sent = time.time()
        response = self.http.post("/reward", json={"event_id": event_id, **body})
        _clean(response)
        self._expect_reward(event_id, body, response, sent)

    @rule(base=base_ids, prefix=id_prefixes, body=reward_bodies)
    def reward_any(self, base: str, prefix: str, body: dict[str, Any]) -> None:
        """An id as a client might make it up, or send it without the prefix /choose added."""
        event_id = self._id(base, prefix)
        sent = time.time()
        response = self.http.post("/reward", json={"event_id": event_id, **body})
        _clean(response)
        self._expect_reward(event_id, body, response, sent)

    @precondition(lambda self: self.events)
    @rule(data=st.data())
    def reward_twice_at_once(self, data: st.DataObject) -> None:
        """The same final reward sent twice back to back (a client retrying)."""
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        body = {"event_id": event_id, "reward": 0.5}
        sent = time.time()
        first = self.http.post("/reward", json=body)
        second = self.http.post("/reward", json=body)
        _clean(first)
        _clean(second)
        self._expect_reward(event_id, {"reward": 0.5}, first, sent)
        self._expect_reward(event_id, {"reward": 0.5}, second, sent)

    @precondition(lambda self: self.events)
    @rule(data=st.data(), bodies=st.lists(reward_bodies, min_size=2, max_size=4))
    def rewards_at_once(self, data: st.DataObject, bodies: list[dict[str, Any]]) -> None:
        """Parts of one event sent at once, on separate connections: whatever the order Redis
        takes them in, the event is learned once, with the first value of each part."""
        event_id = data.draw(st.sampled_from(sorted(self.events)))
        known = self.events[event_id]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(
                pool.map(
                    lambda b: httpx.post(
                        f"{self.service.base}/reward", json={"event_id": event_id, **b}, timeout=30
                    ),
                    bodies,
                )
            )
        finals = []
        for response in responses:
            _clean(response)
            if response.status_code == 200:
                self.rewards_ok[known.deployment] += 1
                answer = response.json()
                if answer["status"] == "final":
                    finals.append(answer)
            else:
                _error(response, {404, 409, 422}, None)
        parts = self._parts_after(event_id)
        if finals:
            # every call that said final said the same reward, of the parts logged
            assert len({a["reward"] for a in finals}) == 1, finals
            known.final, known.reward = True, finals[0]["reward"]
        if self.version[known.deployment] is not None and known.deployment != "late":
            self.version[known.deployment] = None  # which answer saw which version is a race
        known.uncertain = known.uncertain or known.deployment == "late"
        if not known.final and parts is not None:
            known.parts = parts

    def _parts_after(self, event_id: str) -> dict[str, float] | None:
        """The parts Redis holds for a pending event; None when it has none (or is final)."""
        deployment = self.events[event_id].deployment
        raw: Any = self.service.redis.hgetall(self.service.key(deployment, f"parts:{event_id}"))
        return {k.decode(): float(v) for k, v in raw.items()} if raw else None

    @rule(
        deployment=deployments,
        arms=st.lists(
            st.one_of(st.none(), st.sampled_from([["4b"], ["14b"], ["4b", "14b"]])),
            min_size=2,
            max_size=4,
        ),
        base=base_ids,
    )
    def choose_at_once(self, deployment: str, arms: list[list[str] | None], base: str) -> None:
        """One new id chosen at once on separate connections, with the same or other arms: one
        decision is stored; every other answer is that decision, or a 409 for other arms."""
        event_id = f"race-{self.tag}-{len(self.events)}-{base}"[:100]

        def post(subset: list[str] | None) -> httpx.Response:
            body: dict[str, Any] = {"query": "q", "event_id": event_id, **_named(deployment)}
            if subset is not None:
                body["arms"] = subset
            return httpx.post(f"{self.service.base}/choose", json=body, timeout=30)

        before = time.time()
        with ThreadPoolExecutor(len(arms)) as pool:
            responses = list(pool.map(post, arms))
        after = time.time()
        answers = []
        for response in responses:
            _clean(response)
            if response.status_code == 200:
                answers.append(response.json())
            else:
                _error(response, 409, "arms")
        assert answers, [r.text for r in responses]
        assert all(a == answers[0] for a in answers), answers
        winner = set(answers[0]["probabilities"])
        for subset, response in zip(arms, responses, strict=True):
            agrees = subset is None or set(subset) == winner
            assert (response.status_code == 200) == agrees, (subset, response.text, winner)
        stored = answers[0]["event_id"]
        self._version(deployment, answers[0]["model_version"])
        self.events[stored] = Decision(deployment, answers[0], sorted(winner), after, before)
        self.made[deployment] += 1

    @rule(
        policies=st.lists(
            st.sampled_from(["linucb", "egreedy", "squarecb", "random"]), min_size=2, max_size=3
        ),
        promote=st.booleans(),
    )
    def admin_at_once(self, policies: list[str], promote: bool) -> None:
        """Switches (or promotions) of the default deployment at once: whatever wins, the policy
        stored, the one listed and the one that decides next agree."""
        path = "/admin/promote" if promote else "/admin/policy"

        def post(policy: str) -> httpx.Response:
            return httpx.post(
                f"{self.service.base}{path}",
                json={"policy": policy},
                headers={"x-api-key": ADMIN},
                timeout=60,
            )

        with ThreadPoolExecutor(len(policies)) as pool:
            responses = list(pool.map(post, policies))
        for response in responses:
            _clean(response)
            if response.status_code != 200:
                _error(response, {409, 422}, "policy")
        if not promote:
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        listed = self.http.get("/deployments").json()["deployments"][0]
        assert listed["name"] == "default"
        override: Any = self.service.redis.get(self.service.key("default", "policy"))
        if any(r.status_code == 200 for r in responses):
            assert override is not None and override.decode() == listed["policy"], (
                override,
                listed,
            )
        self.policy["default"] = listed["policy"]
        self.version["default"] = None  # which relearning came last is a race

    @precondition(lambda self: not self.restarted)
    @rule()
    def restart(self) -> None:
        """Stop the service (it publishes, releases the lease) and start it again: what it
        answered before still holds."""
        self.restarted = True
        self.http.close()
        self.service.base = self.service.restart()
        self.http = httpx.Client(base_url=self.service.base, timeout=30)
        self.metrics0 = self._metrics()
        self.made = {d: 0 for d in DEPLOYMENTS}
        self.rewards_ok = {d: 0 for d in DEPLOYMENTS}

    @precondition(
        lambda self: not self.waited and any(e.deployment == "late" for e in self.events.values())
    )
    @rule()
    def wait_for_the_window(self) -> None:
        """Once an example: the late deployment's windows close, and its sweep runs."""
        self.waited = True
        time.sleep(WAIT_S + 0.7)

    # rules: admin

    @rule(deployment=st.sampled_from(["default", "support"]), policy=st.sampled_from(POLICIES))
    def switch_policy(self, deployment: str, policy: str) -> None:
        params = {} if deployment == "default" else {"deployment": deployment}
        response = self.http.post(
            "/admin/policy", json={"policy": policy}, params=params, headers={"x-api-key": ADMIN}
        )
        _clean(response)
        if response.status_code == 200:
            self.policy[deployment] = response.json()["policy"]
            if deployment != "late":  # relearned from the whole log
                self.version[deployment] = self.service.redis.xlen(
                    self.service.key(deployment, "events")
                )
            self._version(deployment, response.json()["model_version"])
        else:
            _error(response, 422, "policy")
            assert (
                "nan" in policy
                or "nonsense" in policy
                or (deployment == "support" and policy == "fixed:arm=7b")
            ), response.text

    @rule(
        policy=st.sampled_from(["linucb", "egreedy", "squarecb", "ts", "random"]),
        deployment=deployments,
    )
    def promote(self, policy: str, deployment: str) -> None:
        params = {} if deployment == "default" else {"deployment": deployment}
        response = self.http.post(
            "/admin/promote", json={"policy": policy}, params=params, headers={"x-api-key": ADMIN}
        )
        _clean(response)
        if response.status_code == 200:
            self.policy[deployment] = response.json()["to_policy"]
            self._version(deployment, response.json()["model_version"])
        else:
            _error(response, {409, 422}, "policy")

    @rule(
        path=st.sampled_from(
            [
                "/admin/snapshot",
                "/admin/reset",
                "/admin/policy",
                "/admin/promote",
                "/choose",
                "/stats",
                "/arms",
            ]
        ),
        deployment=deployments,
        key=mostly(st.just(ADMIN), st.sampled_from(["wrong", ""])),
    )
    def admin(self, path: str, deployment: str, key: str) -> None:
        if key == "" or not path.startswith("/admin"):
            return self.unknown_deployment(path)
        params = {} if deployment == "default" else {"deployment": deployment}
        body = {"policy": "random"} if path in ("/admin/policy", "/admin/promote") else None
        key = "wrong" if body is not None else key
        response = self.http.post(path, params=params, json=body, headers={"x-api-key": key})
        _clean(response)
        if key != ADMIN:  # (the policy routes with their key: the rules above)
            return _error(response, 401, None)
        assert response.status_code == 200, response.text
        version = response.json()["model_version"]
        if path == "/admin/reset":
            assert version == 0
            self.version[deployment] = 0
        self._version(deployment, version)

    def unknown_deployment(self, path: str) -> None:
        if path == "/choose":
            response = self.http.post(path, json={"query": "q", "deployment": "nobody"})
        elif path.startswith("/admin"):
            response = self.http.post(
                path,
                json={"policy": "random"},
                params={"deployment": "nobody"},
                headers={"x-api-key": ADMIN},
            )
        else:
            response = self.http.get(path, params={"deployment": "nobody"})
        _clean(response)
        _error(response, 422, "deployment")

    # invariants

    @invariant()
    def reads_answer(self) -> None:
        for path in READS:
            response = self.http.get(path)
            _clean(response)
            assert response.status_code == 200, (path, response.text)
            doc = response.json()
            if path.startswith("/stats"):  # only the service wrote the log: all of it reads
                assert doc["recent"]["unreadable_events"] == 0, doc["recent"]
                assert doc["recent"]["dropped_values"] == 0, doc["recent"]
        page = self.http.get("/dashboard")
        _clean(page)
        assert page.status_code == 200

    @invariant()
    def each_event_is_logged_once(self) -> None:
        for deployment in DEPLOYMENTS:
            logged = self._logged(deployment)
            ids = [d["event_id"] for d, _ in logged]
            assert len(ids) == len(set(ids)), ids
            mine = {e: r for (d, r) in logged if (e := d["event_id"]) in self.events}
            for event_id, decision in self.events.items():
                if decision.deployment != deployment:
                    continue
                if decision.final and not decision.uncertain:
                    assert event_id in mine, event_id
                    if decision.reward is not None:
                        assert mine[event_id]["reward"] == pytest.approx(decision.reward)
                elif not decision.final and deployment != "late":
                    assert event_id not in mine, event_id
                elif event_id in mine and not decision.uncertain:  # settled by the sweep
                    assert mine[event_id]["parts"] == decision.parts, (mine[event_id], decision)
                    expected = _combine(deployment, decision.parts)
                    assert mine[event_id]["reward"] == pytest.approx(expected)
            if deployment != "late":  # there, the sweep settles earlier examples' windows too
                assert set(ids) <= set(self.events), set(ids) - set(self.events)
            # the counters: one decision per new id, one reward per logged event
            now, then = self._counters(deployment), self.counters0[deployment]
            made = sum(1 for e in self.events.values() if e.deployment == deployment)
            decided = sum(now.get(k, 0) - then.get(k, 0) for k in now if k.startswith("decisions:"))
            assert decided == made, (deployment, decided, made)
            rewarded = sum(now.get(k, 0) - then.get(k, 0) for k in now if k.startswith("rewards:"))
            assert rewarded == len(logged), (deployment, rewarded, len(logged))

    @invariant()
    def metrics_agree(self) -> None:
        now = self._metrics()
        for deployment in DEPLOYMENTS:
            made = self.made[deployment]
            k = ("bandit_decisions_total", deployment)
            assert now.get(k, 0) - self.metrics0.get(k, 0) == made, (deployment, now, made)
            k = ("bandit_rewards_received_total", deployment)
            got = now.get(k, 0) - self.metrics0.get(k, 0)
            assert got == self.rewards_ok[deployment], (deployment, got, self.rewards_ok)

    def teardown(self) -> None:
        self.http.close()


@pytest.fixture
def service(make_settings: SettingsFactory, tmp_path: Path, redis_url: str) -> Iterator[Service]:
    file = tmp_path / "deployments.toml"
    file.write_text(DEPLOYMENTS_TOML)
    settings = make_settings(
        key_prefix=f"seq-{uuid.uuid4().hex[:10]}",
        deployments_file=str(file),
        admin_key=ADMIN,
        challengers=["linucb", "egreedy"],
        stats_cache_s=0,
    )
    running = [Servers()]

    def start() -> str:
        port = running[-1].start_service(settings, log_level="warning")
        return f"http://127.0.0.1:{port}"

    def restart() -> str:
        running[-1].stop()
        running.append(Servers())
        return start()

    client = redis.Redis.from_url(redis_url)
    yield Service(start(), client, settings.key_prefix, restart)
    client.close()
    running[-1].stop()


@pytest.mark.timeout(600)  # 30 sequences of 25 calls with restarts: past the 120 s guard when busy
@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)  # one backend: time
def test_sequences_of_calls(service: Service) -> None:
    Sequences.service = service
    run_state_machine_as_test(
        Sequences,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_a_tiny_reward_or_feature_leaves_the_model_choosing(serve: Callable[..., str]) -> None:  # noqa: F811
    """A reward of 1e-200 (within 0..1) on a fresh model, then choices: VW read its cost as NaN
    and every later /choose was a 500. A feature of 1e-200 was a 500 itself."""
    with httpx.Client(base_url=serve(), timeout=30) as http:
        first = http.post("/choose", json={"query": "what is 2+2?"}).json()
        done = http.post("/reward", json={"event_id": first["event_id"], "reward": 1e-200})
        assert done.status_code == 200, done.text
        for features in (None, {"n": 1e-200}, {"n": -3e-204}):
            answer = http.post("/choose", json={"query": "what is 2+2?", "features": features})
            assert answer.status_code == 200, answer.text
