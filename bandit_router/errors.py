"""Domain errors. Each carries a message naming the bad value; the app maps them once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

# What an error answer repeats of a client's value: a request of a megabyte must not get one (or
# two: the gateway says its message twice) back.
ECHO_CHARS = 64  # of one value the client sent (a field name, a model, a header)
DETAIL_CHARS = 2000  # of a whole message, whatever it holds


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut from {len(text)} characters)"


def echo(value: str) -> str:
    """A client's value as an error message quotes it: repr (control characters escaped), cut to
    ``ECHO_CHARS`` characters."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


class RouterError(Exception):
    """Base of every error a client can cause or should be told about."""

    status_code = 422
    field: str | None = None
    retry_after_s: int | None = None  # when set, answered as Retry-After (a 503 the load sets)

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field


class UnknownEvent(RouterError):
    status_code = 404
    field = "event_id"

    def __init__(self, event_id: str, more: str = "") -> None:
        super().__init__(
            f"unknown or expired event_id {event_id!r}: no decision is waiting for a reward "
            f"under that id (decisions wait BANDIT_REWARD_WAIT_S seconds){more}"
        )


class WindowClosed(RouterError):
    status_code = 404
    field = "event_id"

    def __init__(self, event_id: str, closed_at: float, wait_s: int) -> None:
        when = datetime.fromtimestamp(closed_at, UTC).isoformat(timespec="milliseconds")
        super().__init__(
            f"the reward window of event {event_id!r} closed at {when} ({wait_s} s after its "
            "decision, BANDIT_REWARD_WAIT_S): parts sent after it are refused"
        )
        self.closed_at = closed_at


class UnreadableEvent(RouterError):
    """What Redis holds for an event id is not what the service wrote there (written by hand,
    by a bug, or by another program on the key prefix). 409, like the other answers about the
    event's stored state: the client did nothing wrong, but the same request cannot succeed
    later either, so it must not retry."""

    status_code = 409
    field = "event_id"

    def __init__(self, event_id: str, what: str, problem: str) -> None:
        super().__init__(
            f"the {what} stored for event_id {event_id!r} is unreadable ({problem}): the event "
            "cannot be rewarded or chosen again; send a new /choose, with a new event_id"
        )


class UnreadableDecision(UnreadableEvent):
    """The decision stored under an event id is not a record the service wrote."""

    def __init__(self, event_id: str, problem: str) -> None:
        super().__init__(event_id, "decision", problem)


class ArmsConflict(RouterError):
    status_code = 409
    field = "arms"

    def __init__(self, event_id: str, decided: Sequence[str], asked: Sequence[str]) -> None:
        super().__init__(
            f"event_id {event_id!r} was decided over the arms {', '.join(decided)}, not "
            f"{', '.join(asked)}: the same event_id returns the same decision, so send it with "
            "the same arms (or none), or send a new event_id"
        )


class AlreadyRewarded(RouterError):
    status_code = 409
    field = "event_id"

    def __init__(
        self, event_id: str, logged: dict[str, Any] | None = None, spent: bool = False
    ) -> None:
        super().__init__(
            f"event_id {event_id!r} was rewarded and learned, and its decision has expired: "
            "an event_id names one query, send a new event_id"
            if spent  # a /choose reusing it
            else f"event {event_id!r} already has a reward and was learned; "
            "each event is learned once, send a new /choose for a new query"
        )
        self.logged = logged  # the reward logged ({"parts", "reward", ...}), when known


class InvalidArm(RouterError):
    status_code = 422
    field = "arms"

    def __init__(self, name: str, valid: Sequence[str]) -> None:
        super().__init__(f"unknown arm {name!r}; valid: {', '.join(valid)}")


class InvalidReward(RouterError):
    status_code = 422


class PolicyConflict(RouterError):
    """An admin's request that another admin change in flight would contradict."""

    status_code = 409
    field = "policy"


class SwitchArrived(PolicyConflict):
    """A promotion refused as it is published: the policy override changed (an admin's ``POST
    /admin/policy`` on another process) after the learner found no switch pending. The switch
    wins: nothing of the promotion is written."""

    def __init__(self, policy: str | None) -> None:
        to = "" if policy is None else f" to {policy:.100}"  # a value written by hand: clipped
        super().__init__(
            f"the policy was switched{to} by POST /admin/policy while this promotion was being "
            "made: the switch serves, and the promotion is not made"
        )
        self.policy = policy


class NotLearner(RouterError):
    status_code = 409

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "this process does not hold the learner lease; ask the learner's process, or "
            "wait: it publishes every BANDIT_PUBLISH_S seconds"
        )

    @classmethod
    def asked(cls, asked: str, apart: bool) -> NotLearner:
        """For an admin request to ``asked`` (``publish``, ``reset the model``, ...) made of a
        process that does not lead. ``apart``: its processes never learn
        (BANDIT_LEARN_IN_WORKERS=false), the learner being a ``bandit-router learn``, which
        serves no HTTP: "ask the learner's process" cannot be done."""
        if asked == "publish":
            if not apart:
                return cls()
            return cls(
                "this process does not learn (BANDIT_LEARN_IN_WORKERS=false): the learner, "
                "`bandit-router learn`, publishes every BANDIT_PUBLISH_S seconds and when it stops"
            )
        if not apart:
            return cls(
                f"this process does not hold the learner lease: to {asked}, send this request "
                f'to the process that does (its GET /healthz says "learner": true)'
            )
        return cls(
            f"this process does not learn (BANDIT_LEARN_IN_WORKERS=false), and the learner, "
            f"`bandit-router learn`, serves no HTTP: to {asked}, stop it and send this request "
            f"to a service started with BANDIT_LEARN_IN_WORKERS=true, which takes the lease"
        )


class Stopping(RouterError):
    """The process was told to stop (SIGTERM, Ctrl-C) during a request's long work (a policy
    switch's relearning of the log), which it left undone; the message says what holds."""

    status_code = 503


class StoreUnavailable(RouterError):
    """Redis cannot serve the call. ``refused``: it is up and refuses this service (its
    credentials, an ACL, a full memory, a disk it cannot write) until an operator acts, so a
    retry alone does not help."""

    status_code = 503

    def __init__(self, detail: str, *, refused: bool = False) -> None:
        self.detail, self.refused = detail, refused
        said = "unavailable, retry later"
        if refused:
            said = "up but refusing, retry once an operator acts"
        super().__init__(f"state store (Redis) {said}: {detail}")


class StoreDamaged(RouterError):
    """A key of the whole deployment holds another Redis type than the service keeps there
    (written by hand, or by another program on the key prefix): no retry helps until an operator
    deletes it. 503, as for Redis down, but not ``StoreUnavailable``: no decision is buffered for
    it, and a client is told what must happen."""

    status_code = 503

    def __init__(
        self, key: str, found: str, expected: str, consequence: str, caveat: str = ""
    ) -> None:
        super().__init__(
            f"Redis key {key!r} holds a {found}, not the {expected} this service keeps there "
            f"(written by hand, or by another program on the key prefix): {consequence} until an "
            f"operator deletes it (DEL {key})" + (f"; {caveat}" if caveat else "")
        )
        self.key = key
