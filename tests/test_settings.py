from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bandit_router.cli.main import main
from bandit_router.settings import (
    DEFAULT_ARMS,
    MAX_WAIT_MS,
    Settings,
    check_weights,
    parse_weights,
    unknown_variables,
)
from bandit_router.store.transport import DEFAULT_TIMEOUT_S


def test_defaults() -> None:
    s = Settings()
    assert [a.name for a in s.arms] == ["4b", "7b", "14b"] == [a.name for a in DEFAULT_ARMS]
    assert s.policy == "squarecb"
    assert s.reward_weights == {"accuracy": 0.6, "rating": 0.2, "latency": 0.2}


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_ARMS", "small:3:0.1,big:70")
    monkeypatch.setenv("BANDIT_REWARD_WEIGHTS", "accuracy=1,latency=0.5")
    monkeypatch.setenv("BANDIT_POLICY", "linucb:alpha=0.3")
    monkeypatch.setenv("BANDIT_EPSILON", "0.2")
    s = Settings()
    assert [(a.name, a.params_b, a.usd_per_mtok) for a in s.arms] == [
        ("small", 3.0, 0.1),
        ("big", 70.0, None),
    ]
    assert s.reward_weights == {"accuracy": 1.0, "latency": 0.5}
    assert s.epsilon == 0.2


def test_arms_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_ARMS", '[{"name": "a", "params_b": 1}, {"name": "b"}]')
    assert [a.name for a in Settings().arms] == ["a", "b"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("policy", "egredy", "unknown policy 'egredy'; valid: egreedy, squarecb"),
        ("policy", "egreedy:eps=1", "unknown parameter 'eps=1'; valid: epsilon"),
        ("policy", "linucb:alpha=x", "alpha must be a float"),
        ("epsilon", 1.5, "less than or equal to 1"),
        ("reward_weights", "accuracy=1,speed=2", "unknown reward part 'speed'"),
        ("reward_weights", "accuracy=0", "at least one reward weight must be > 0"),
        ("arms", "a,a", "arm names must be unique, repeated: a"),
        ("arms", "", "at least one arm"),
        ("arms", "a:1:0.1:9", r"arm 'a:1:0.1:9': expected name\[:params_b\[:usd_per_mtok\]\]"),
        ("gateway_parts", "latency,speed", "unknown gateway part 'speed'; valid: latency, cost"),
        (
            "gateway_preferences",
            '{"fast": {"latency": 1}, "quick": {"speed": 1}}',
            "preference 'quick': unknown reward part 'speed'",
        ),
        ("latency_budget_ms", 0, "greater than 0"),
        ("admin_key", "cl\u00e9", "key 1 of 1 holds a character that is not printable ASCII"),
        ("api_keys", "a,b\x01", "key 2 of 2 holds a character that is not printable ASCII"),
        ("snapshot_every", 2_000_000, r"\(BANDIT_SNAPSHOT_EVERY\) 2000000 must be at most"),
        ("challenger_window", 10, r"\(BANDIT_CHALLENGER_WINDOW\) 10 must be at least"),
        ("sweep_s", 3600, r"\(BANDIT_SWEEP_S\) 3600.0 must be less than 3600 s"),
    ],
)
def test_bad_settings_name_the_problem(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match="epsilonn"):
        Settings(epsilonn=0.1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "value",
    [
        "accuracy=nan",
        "accuracy=inf",
        "accuracy=1e400",
        "accuracy=1e308,latency=1e308",  # each finite, their sum not
        '{"accuracy": NaN}',
        '{"accuracy": Infinity}',
        '{"accuracy": 1' + "0" * 400 + "}",
        '{"accuracy": true}',
        '{"accuracy": "1"}',
    ],
)
def test_reward_weights_must_be_bounded_numbers(value: str) -> None:
    """As a request's ``x-bandit-preference`` gives them (no conversion), and as settings."""
    message = "reward weight accuracy must be a number in 0..1000"
    with pytest.raises(ValueError, match=message):
        check_weights(parse_weights(value))
    if "NaN" in value or "Inf" in value or "=" in value:  # settings convert the others first
        for field in ("reward_weights", "gateway_reward_weights"):
            values: dict[str, Any] = {field: value}
            with pytest.raises(ValidationError, match=f"{message}|finite number"):
                Settings(**values)


def test_reward_weights_nested_deeply_are_refused_with_a_message() -> None:
    deep: Any = '{"accuracy": ' * 5000 + "1" + "}" * 5000
    with pytest.raises(ValidationError, match="a flat JSON object is expected"):
        Settings(reward_weights=deep)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("POLICY", "squarecb:gamma_scale=nan", "gamma_scale must be in (0, 10000], got nan"),
        ("POLICY", "squarecb:gamma_scale=1e400", "gamma_scale must be in (0, 10000], got inf"),
        ("POLICY", "egreedy:epsilon=inf", "parameter epsilon must be in [0, 1], got inf"),
        ("POLICY", "ts:discount=NaN", "parameter discount must be in (0, 1], got nan"),
        ("POLICY", "bag:bag=" + "9" * 400, "parameter bag must be in [1, 100], got 9999"),
        ("CHALLENGERS", "linucb:dim=100000000", "parameter dim must be in [12, 1024]"),
        ("CHALLENGERS", "squarecb,softmax:lambda=-inf", "parameter lambda must be in [0, 1000]"),
        ("VW_ARGS", "-f {tmp}/x.model", "vw_args: '-f' is not an allowed VW option; allowed:"),
        ("VW_ARGS", "--power_t nan", "vw_args: --power_t must be in [0, 1], got nan"),
        # Allowed for the other VW policies; the default's own --l2 is its parameter l2 (VW
        # said only "Disagreeing option values for 'l2'").
        (
            "VW_ARGS",
            "--l2 0.01",
            "squarecb sets --l2 from its parameter l2: write squarecb:l2=0.01",
        ),
        ("LINUCB_ALPHA", "inf", "Input should be a finite number"),
        ("LINUCB_ALPHA", "nan", "Input should be a finite number"),
        ("LINUCB_ALPHA", "101", "less than or equal to 100"),
    ],
)
def test_a_non_finite_or_huge_policy_value_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"BANDIT_{env}", value.replace("{tmp}", str(tmp_path)))
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("REWARD_WAIT_S", "9" * 23, "less than or equal to 31536000"),
        ("STREAM_MAXLEN", "9" * 23, "less than or equal to 10000000000"),
        ("CLAIM_IDLE_S", "inf", "finite number"),
        ("LEARNER_LEASE_S", "inf", "finite number"),
        ("LEARNER_LEASE_S", "1e300", "less than or equal to 3600"),
        ("SWEEP_S", "inf", "finite number"),
        ("LATENCY_BUDGET_MS", "nan", "finite number"),
        ("SEED", "-1", "greater than or equal to 0"),
        ("SEED", "9" * 23, "less than or equal to 4294967295"),
        ("LOG_LEVEL", "bogus", "'critical', 'error', 'warning', 'info', 'debug' or 'trace'"),
        ("MAX_FEATURES", "9" * 23, "less than or equal to 10000"),
        ("ARMS", "4b:inf:inf,7b", "finite number"),
    ],
)
def test_a_setting_past_what_the_service_can_use_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    """Each of these passed start-up once and broke the service after it: a TTL past int64
    milliseconds (every /choose 500), an infinite lease or claim (the learner's task died), a
    seed VW refuses, a log level uvicorn does not know, an arm's size exports cannot write."""
    monkeypatch.setenv(f"BANDIT_{env}", value)
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        Settings()
    assert env.lower() in str(refused.value)


def test_the_log_level_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDIT_LOG_LEVEL", "WARNING")
    assert Settings().log_level == "warning"


def test_the_admin_key_is_stripped_as_the_other_keys_are() -> None:
    """A key read from a secret file keeps its trailing newline, which no request can send."""
    assert Settings(admin_key="secret\n").admin_key == "secret"
    assert Settings(admin_key=" \n").admin_key is None  # unset: the admin endpoints are off


def test_a_variable_that_names_no_setting_is_said_with_the_closest(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BANDIT_LEARN_IN_WORKER=false (an S short) was ignored unsaid: two learners competed."""
    environ = {
        "BANDIT_LEARN_IN_WORKER": "false",
        "bandit_log_level": "info",  # read in any case: a setting
        "BANDIT_URL": "http://x",  # the clients'
        "BANDIT_ZZZ": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [
        "BANDIT_LEARN_IN_WORKER is not a setting and is ignored; did you mean "
        "BANDIT_LEARN_IN_WORKERS?",
        "BANDIT_ZZZ is not a setting and is ignored",
    ]
    monkeypatch.setenv("BANDIT_POLCY", "linucb")
    said = "BANDIT_POLCY is not a setting and is ignored; did you mean BANDIT_POLICY?"
    assert main(["config"]) == 0
    assert said in capsys.readouterr().err
    # serve and learn say it in their log before anything else (here: a Redis that is not there)
    monkeypatch.setenv("BANDIT_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("BANDIT_STARTUP_WAIT_S", "0")
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        assert main(["learn"]) == 1
    assert said in caplog.messages


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        (
            "ARMS",
            "[" * 3000 + "]" * 3000,
            "arms (BANDIT_ARMS): a JSON list of arms is expected; this one is nested too deep",
        ),
        (
            "ARMS",
            '[{"name": ' * 3000 + "1" + "}" * 3000 + "]",
            "arms (BANDIT_ARMS): a JSON list of arms is expected; this one is nested too deep",
        ),
        ("ARMS", "[{", "arms (BANDIT_ARMS): not JSON: Expecting property name"),
        ("ARMS", '{"name": "a"}', "arms (BANDIT_ARMS): a JSON list of arms is expected"),
        ("ARMS", "a:b", "arms (BANDIT_ARMS): arm 'a:b': params_b 'b' is not a number"),
        ("ARMS", "a:1:x", "arms (BANDIT_ARMS): arm 'a:1:x': usd_per_mtok 'x' is not a number"),
        (
            "GATEWAY_PREFERENCES",
            '{"a": ' * 3000 + "1" + "}" * 3000,
            "(BANDIT_GATEWAY_PREFERENCES): a JSON object of named weights is expected; this one",
        ),
        ("GATEWAY_PREFERENCES", "{", "(BANDIT_GATEWAY_PREFERENCES): not JSON: Expecting"),
    ],
)
def test_a_json_setting_nested_too_deep_or_malformed_is_said_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(f"BANDIT_{env}", value)
    assert main(["config"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("wait", "sweep", "refused"), [(60, 900, True), (7200, 3600, False)])
def test_a_sweep_slower_than_a_decision_is_kept_is_refused(
    wait: int, sweep: float, refused: bool
) -> None:
    """A decision is kept ``max(BANDIT_REWARD_WAIT_S, 600)`` s after its window closes, for the
    sweep to learn it: a sweep period as long found many decisions expired, their parts (each
    answered 200) never learned. Refused at start, naming both settings."""
    if not refused:
        assert Settings(reward_wait_s=wait, sweep_s=sweep).sweep_s == sweep
        return
    with pytest.raises(ValidationError) as error:
        Settings(reward_wait_s=wait, sweep_s=sweep)
    said = str(error.value)
    assert "BANDIT_SWEEP_S" in said and "BANDIT_REWARD_WAIT_S" in said


def _bound_holds(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, refused: bool, said: str
) -> None:
    """``BANDIT_{env}=value`` is taken as that number, or refused saying ``said`` and naming
    the setting."""
    monkeypatch.setenv(f"BANDIT_{env}", value)
    if not refused:
        assert getattr(Settings(), env.lower()) == float(value)
        return
    with pytest.raises(ValidationError, match=re.escape(said)) as no:
        Settings()
    assert env.lower() in str(no.value)


@pytest.mark.parametrize("env", ["SWEEP_S", "MODEL_REFRESH_S", "PUBLISH_S", "CLAIM_IDLE_S"])
@pytest.mark.parametrize(("value", "refused"), [("1e-9", True), ("0.009", True), ("0.01", False)])
def test_a_period_below_its_floor_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, refused: bool
) -> None:
    """``BANDIT_SWEEP_S=1e-9`` or ``BANDIT_MODEL_REFRESH_S=1e-9`` passed start-up and made the
    job a busy loop: an idle worker at 84% CPU and 6,000 Redis commands a second."""
    _bound_holds(monkeypatch, env, value, refused, "greater than or equal to 0.01")


@pytest.mark.parametrize(("value", "refused"), [("0.0009", True), ("0.02", True), ("0.5", False)])
def test_a_lease_the_learner_cannot_renew_in_time_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, refused: bool
) -> None:
    """The learner renews its lease between steps, 50 ms apart at the least: a lease of 0.02 s
    lapsed between them (the learner led anew from Redis at each step, reloading the snapshot
    and replaying the log after it, with a warning each time), and one below a millisecond
    failed start-up with Redis's "invalid expire time" traceback, which named no setting."""
    _bound_holds(monkeypatch, "LEARNER_LEASE_S", value, refused, "greater than or equal to 0.5")


@pytest.mark.parametrize(("value", "refused"), [("8000", True), ("4001", True), ("4000", False)])
def test_a_replica_wait_longer_than_a_redis_round_trip_may_take_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, refused: bool
) -> None:
    """A write's WAIT ends its round trip to Redis, which is given 5 s: with
    ``BANDIT_REDIS_WAIT_TIMEOUT_MS=8000`` and no replica, a write failed after 5 s with "no
    reply from Redis in 5.0 s" (an outage, not the replicas, said), and the learner's lease
    renewal with it. The bound leaves the writes before the WAIT a second."""
    assert MAX_WAIT_MS <= DEFAULT_TIMEOUT_S * 1000 - 1000
    _bound_holds(monkeypatch, "REDIS_WAIT_TIMEOUT_MS", value, refused, "less than or equal to 4000")


@pytest.mark.parametrize(
    "env", ["HEAD_TIMEOUT_S", "BODY_TIMEOUT_S", "SEND_TIMEOUT_S", "GATEWAY_TIMEOUT_S"]
)
@pytest.mark.parametrize(("value", "refused"), [("1e-9", True), ("0.09", True), ("0.1", False)])
def test_a_timeout_no_client_or_upstream_can_meet_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, refused: bool
) -> None:
    """``BANDIT_HEAD_TIMEOUT_S=1e-9`` passed start-up, and a local client's connections were
    closed at random before their request was read (8 of 20 /choose)."""
    _bound_holds(monkeypatch, env, value, refused, "greater than or equal to 0.1")


def test_an_upstream_timeout_no_upstream_can_meet_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "timeout_s": 1e-9}
    monkeypatch.setenv("BANDIT_ARMS", json.dumps([{"name": "a", "upstream": upstream}]))
    with pytest.raises(ValidationError, match=re.escape("greater than or equal to 0.1")):
        Settings()


@pytest.mark.parametrize(
    "variable",
    ["BANDIT_SEED", "BANDIT_DEFAULT_REWARD", "BANDIT_HASH_KEY", "BANDIT_GATEWAY_REWARD_WEIGHTS"],
)
def test_an_empty_optional_variable_is_unset(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compose file's ``BANDIT_SEED=`` (its variable unset) stopped the start: "unable to
    parse string as an integer". Empty is unset, as README says, for every optional setting."""
    monkeypatch.setenv(variable, "")
    field = variable.removeprefix("BANDIT_").lower()
    assert getattr(Settings(), field) is None


def test_linucb_whose_matrices_would_not_fit_a_model_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dim 1024 with 64 arms dumped 537,396,968 bytes: over the 512 MiB a Redis string holds,
    so the model could never be published. Refused at the start, naming what fits."""
    arms = ",".join(f"a{i}:1" for i in range(64))
    monkeypatch.setenv("BANDIT_ARMS", arms)
    for variable in ("BANDIT_POLICY", "BANDIT_CHALLENGERS"):
        monkeypatch.setenv(variable, "linucb:dim=1024")
        with pytest.raises(ValidationError, match=r"dim 1024 with 64 arms .* at most 56 arms"):
            Settings()
        monkeypatch.delenv(variable)
    monkeypatch.setenv("BANDIT_POLICY", "linucb:dim=950")  # 441 MiB: fits
    assert Settings().policy == "linucb:dim=950"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379", "must specify one of the following schemes"),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("rediss://h:6380/0?ssl_cert_reqs=strict", "ssl_cert_reqs is 'strict': one of none,"),
        ("rediss://h:6380/0?ssl_ca_certs=/nonexistent/ca.pem", "'/nonexistent/ca.pem' cannot be"),
        ("redis://h:6380/0?ssl_ca_certs=/etc/hostname", "in a redis:// URL, which does not use"),
        ("redis://h:6379/three", "names the database 'three': a database is a number"),
        ("redis://:Zq9@x:wo/rd@h:6379/0", "must be percent-encoded (@ as %40"),
        ("redis://:Zq9#x@h:6379/0", "must be percent-encoded (@ as %40"),
        # a password of digits then #: the digits read as the port, and no host before them
        ("redis://:9#Zq9x@h:6379/0", "must be percent-encoded (@ as %40"),
        ("redis:///0", "does not read as scheme://[USER:PASSWORD@]HOST[:PORT][/DB]"),
        ("redis+cluster://:Zq9?x@h1:7000,h2:7000", "must be percent-encoded (@ as %40"),
        # a user's password of digits then / (base64's): the rest read as the database
        ("redis://default:38/Zq9x@h:6379/0", "must be percent-encoded (@ as %40"),
        ("rediss://u:4/Zq9?x@h:6380", "must be percent-encoded (@ as %40"),
        # a full-width # or @: urlsplit's error quoted the netloc, password and all
        ("redis://:Zq9\uff03x@h:6379/0", "must be percent-encoded (@ as %40"),
        ("redis+cluster://u:Zq9\uff20x@h1:7000,h2:7000", "must be percent-encoded (@ as %40"),
    ],
)
def test_a_redis_url_redis_py_cannot_use_or_reads_otherwise_is_refused_at_start_up(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL redis-py refuses stopped the commands with its traceback, once they connected (an
    unknown ssl_cert_reqs; a CA file that is not there, as 'Error 2 connecting', an outage to
    wait for), or was read as another Redis: a database that is no number as 0, a password
    with # or ? in it as localhost:6379. Said at start-up now, naming BANDIT_REDIS_URL and
    never the password."""
    monkeypatch.setenv("BANDIT_REDIS_URL", url)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "redis_url (BANDIT_REDIS_URL): " in err and says in err, err
    assert "Traceback" not in err and "Zq9" not in err, err


@pytest.mark.parametrize(
    "url",
    [
        "redis://:p%40ss%3Aw%2Frd%25@h:6379/3",
        "rediss://u:pw@h:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false",
        "unix:///run/redis.sock?db=2",
        "redis+cluster://:pw@h1:7000,h2:7000",
        "redis://h",
        "redis://[::1]:6379/0",
        "redis://router@h:6379/0",
        "redis://:@h:6379/0",
        "unix:///run/redis.sock?db=2&password=pw",
        "unix://:pw@/run/redis.sock?db=2",
        "redis+cluster://u:pw@h1:7000,h2:7001,[::1]:7002",
        "rediss://h:6380/0?ssl_ca_path=/etc",
        "redis://h:6379/0?socket_timeout=5&health_check_interval=30&protocol=2",
        "redis://h:6379/0?password=p@ss",
        "redis://:Zq9%EF%BC%83x@h:6379/0",
    ],
)
def test_the_redis_urls_redis_py_takes_are_taken(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url
