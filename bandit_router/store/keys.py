"""The Redis key layout; {p} is the key prefix wrapped as a hash tag."""

from __future__ import annotations

KEY_DECISION = "{p}:decision:{event_id}"  # JSON decision record
KEY_PARTS = "{p}:parts:{event_id}"  # hash: reward parts received so far
KEY_DONE = "{p}:done:{event_id}"  # marker: this event's reward is final and logged
KEY_PENDING = "{p}:pending"  # sorted set: event id -> time its reward window closes
KEY_EVENTS = "{p}:events"  # stream of joined events: the training log
KEY_MODEL = "{p}:model"  # hash: policy, version, stream_id, data
KEY_POLICY = "{p}:policy"  # policy spec set by an admin, overriding the settings
KEY_LEASE = "{p}:learner"  # the learner's lease: holder name, with a TTL
KEY_STATS = "{p}:stats"  # counters
KEY_WORD_SECRET = "{p}:word_secret"  # the secret that keys query words' hashes, no TTL
KEY_CHALLENGERS = "{p}:challengers"  # hash: the challengers' models and scores, with the model
KEY_PROMOTIONS = "{p}:promotions"  # list of JSON records: every promotion of a challenger
KEY_PROBE = "{p}:probe"  # never made: the write that writes nothing of /healthz (Store.ping)

# The Redis type of each key the service writes (TYPE's answer). A key holding another type
# (written by hand, or by another program on the prefix) is refused before anything is written
# on the reward path; elsewhere it is read as absent, or stops what needs it (repository.STOPS).
KEY_TYPES = {
    KEY_DECISION: "string",
    KEY_DONE: "string",
    KEY_PARTS: "hash",
    KEY_PENDING: "zset",
    KEY_EVENTS: "stream",
    KEY_STATS: "hash",
    KEY_LEASE: "string",
    KEY_MODEL: "hash",
    KEY_POLICY: "string",
    KEY_WORD_SECRET: "string",
    KEY_CHALLENGERS: "hash",
    KEY_PROMOTIONS: "list",
}
EVENT_KEYS = (KEY_DECISION, KEY_DONE, KEY_PARTS)  # one event's: the others are the deployment's

GROUP = "learners"  # the learners' consumer group on KEY_EVENTS
