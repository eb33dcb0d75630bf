"""The Lua scripts that make accepting and logging a reward atomic."""

from __future__ import annotations

from bandit_router.store.records import MAX_TS

# The counters (the stats hash) are statistics: each script increments them with redis.pcall, so a
# counter that is not a number (written by hand) is left as it is and the script goes on. With
# redis.call the script would stop there, and Redis keeps the writes a script made before an error.

# A key of another type than the service writes there (see keys.KEY_TYPES) fails the command on
# it with WRONGTYPE, after whatever the script wrote before: each script checks the types of the
# keys it reads or writes with redis.call first, and answers {6, key index, type} for the first
# that does not fit, having written nothing. ``want``: key index, type, key index, type, ...
TYPES_LUA = """
local function misfit(want)
  for i = 1, #want, 2 do
    local found = redis.call('TYPE', KEYS[want[i]])['ok']
    if found ~= 'none' and found ~= want[i + 1] then return {6, want[i], found} end
  end
  return nil
end
"""


# KEYS decision, stats, pending, done; ARGV record, ttl, arm, window end, event id.
# Returns false (stored), the stored decision, {6, key index, type}, or {7} when the id's
# decision expired but its done marker (set at the reward, so later) has not: the id is spent.
SAVE_DECISION = (
    TYPES_LUA
    + """
local bad = misfit({1, 'string', 3, 'zset'})
if bad then return bad end
if redis.call('EXISTS', KEYS[1]) == 0 then  -- else the stored decision answers, whatever the marker
  bad = misfit({4, 'string'})
  if bad then return bad end
  if redis.call('EXISTS', KEYS[4]) == 1 then return {7} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.pcall('HINCRBY', KEYS[2], 'decisions:' .. ARGV[3], 1)
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return false
end
return redis.call('GET', KEYS[1])
"""
)


# Lua shared by the reward scripts, whose KEYS are always decision, done, parts, pending, events,
# stats (ADD_PARTS does not use events) and whose ARGV start ttl, wait or maxlen, event id.
# A stored decision may be anything (written by hand, or damaged): each script reads its time and
# arm with decision_of, before it writes anything, and answers {5, why} when they do not read
# (records.read_decision checks the same in Python).
DECISION_LUA = """
local function decision_of(d)  -- the record's time and arm; or nil, nil and why they do not read
  local ok, record = pcall(cjson.decode, d)
  if not ok or type(record) ~= 'table' or record[1] ~= nil then
    return nil, nil, 'not a JSON object'
  end
  local ts, arm = record['ts'], record['arm']
  if type(ts) ~= 'number' or not (ts >= 0 and ts <= MAX_TS) then  -- NaN fails both comparisons
    return nil, nil, 'ts is not a time'
  end
  if type(arm) ~= 'string' then return nil, nil, 'arm is not a string' end
  return ts, arm
end
""".replace("MAX_TS", repr(MAX_TS))


# An event no longer tracked whose decision is still there, and not logged, is one a sweep let
# go with nothing to learn, counted skipped: a part or reward taken before its window closed (by
# the receiving process's clock) that reaches Redis after that sweep brings it back, undoing it.
UNSKIP_LUA = """
local function unskip()
  local skipped = tonumber(redis.pcall('HGET', KEYS[6], 'skipped_no_reward'))
  if skipped and skipped > 0 then redis.pcall('HINCRBY', KEYS[6], 'skipped_no_reward', -1) end
end
"""


PARTS_LUA = """
local function add_parts(first)  -- HSETNX the name/value pairs from ARGV[first]; the repeats
  local dups = {}
  for i = first, #ARGV, 2 do
    if redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]) == 0 then table.insert(dups, ARGV[i]) end
  end
  return dups
end
local function window_end(ts)  -- when the decision's reward window closes (ARGV[2] is the wait)
  return ts + tonumber(ARGV[2])
end
local function hold(d, deadline, dups)  -- keep the parts until the window closes
  redis.call('EXPIRE', KEYS[3], ARGV[1])
  if redis.call('ZADD', KEYS[4], 'NX', deadline, ARGV[3]) == 1 then
    -- No longer tracked (see UNSKIP_LUA): tracked again, the next sweep learns these parts.
    unskip()
    -- Its window ends by the wait in force, which a restart may have raised past the keep time
    -- set at the decision: the decision is kept as one made with this wait is, so the sweep
    -- finds it at the window's end (never shortened).
    local kept = deadline + tonumber(ARGV[1]) - tonumber(ARGV[2])  -- ts + the keep time
    local keep_ms = math.ceil((kept - tonumber(ARGV[4])) * 1000)
    if redis.call('PTTL', KEYS[1]) < keep_ms then redis.call('PEXPIRE', KEYS[1], keep_ms) end
  end
  return {2, d, redis.call('HGETALL', KEYS[3]), dups}
end
"""


LOG_LUA = """
local function log_event(d, arm, maxlen, reward, value)  -- mark done, log, count: once an event
  redis.call('SET', KEYS[2], reward, 'EX', ARGV[1])  -- the marker keeps the reward logged
  local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'd', d, 'r', reward)
  if redis.call('ZREM', KEYS[4], ARGV[3]) == 0 then unskip() end  -- see UNSKIP_LUA
  redis.call('DEL', KEYS[3])
  redis.pcall('HINCRBY', KEYS[6], 'rewards:' .. arm, 1)
  redis.pcall('HINCRBYFLOAT', KEYS[6], 'reward_sum:' .. arm, value)
  return id
end
"""


# ARGV ttl, wait, event id, now, then name/value pairs. Returns {0} unknown, {1} already final,
# {5, why} unreadable, {6, key index, type} a key of another type, {4, window end} when the parts
# come after the window closed (a string: Lua numbers become integers in a reply; with 17
# significant digits, as tostring's 14 rounded a time to a tenth of a millisecond), or
# {2, decision, parts (flat), duplicates}.
ADD_PARTS = (
    TYPES_LUA
    + DECISION_LUA
    + UNSKIP_LUA
    + PARTS_LUA
    + """
local bad = misfit({1, 'string', 2, 'string', 3, 'hash', 4, 'zset'})
if bad then return bad end
local d = redis.call('GET', KEYS[1])
if not d then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local ts, _, why = decision_of(d)
if not ts then return {5, why} end
local deadline = window_end(ts)
if tonumber(ARGV[4]) > deadline then return {4, string.format('%.17g', deadline)} end
return hold(d, deadline, add_parts(5))
"""
)


# ADD_PARTS for a call whose parts make the reward final by themselves (every weighted part, or a
# direct reward): if they are all the event's parts, it is logged at once as by FINALIZE, in the
# same round trip. ARGV ttl, wait, event id, now, maxlen, reward JSON, reward value, then
# name/value pairs. Returns what ADD_PARTS returns, or {3, decision, id}.
ADD_FINAL = (
    TYPES_LUA
    + DECISION_LUA
    + UNSKIP_LUA
    + PARTS_LUA
    + LOG_LUA
    + """
local bad = misfit({1, 'string', 2, 'string', 3, 'hash', 4, 'zset', 5, 'stream'})
if bad then return bad end
local d = redis.call('GET', KEYS[1])
if not d then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local ts, arm, why = decision_of(d)
if not ts then return {5, why} end
local deadline = window_end(ts)
if tonumber(ARGV[4]) > deadline then return {4, string.format('%.17g', deadline)} end
if redis.call('EXISTS', KEYS[3]) == 0 then  -- no part came before: these are all of them
  return {3, d, log_event(d, arm, ARGV[5], ARGV[6], ARGV[7])}
end
local dups = add_parts(8)
if #dups == 0 and redis.call('HLEN', KEYS[3]) == (#ARGV - 7) / 2 then
  return {3, d, log_event(d, arm, ARGV[5], ARGV[6], ARGV[7])}
end
return hold(d, deadline, dups)
"""
)


# ARGV ttl, maxlen, event id, n parts seen, reward JSON, reward value.
# Returns {0} gone (left tracked: the sweep lets it go, counted skipped), {1, done marker} already
# final (the marker holds the reward logged), {5, why} unreadable, {6, key index, type} a key of
# another type, {3} parts changed, {2, id}.
FINALIZE = (
    TYPES_LUA
    + DECISION_LUA
    + UNSKIP_LUA
    + LOG_LUA
    + """
local bad = misfit({1, 'string', 2, 'string', 3, 'hash', 4, 'zset', 5, 'stream'})
if bad then return bad end
local d = redis.call('GET', KEYS[1])
if not d then return {0} end
local done = redis.call('GET', KEYS[2])
if done then  -- logged: nothing left to track (an id chosen again after its decision expired)
  redis.call('ZREM', KEYS[4], ARGV[3])
  return {1, done}
end
local ts, arm, why = decision_of(d)
if not ts then return {5, why} end
if redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[4]) then return {3} end
return {2, log_event(d, arm, ARGV[2], ARGV[5], ARGV[6])}
"""
)


# KEYS pending, stats, then each event's parts hash; ARGV the events' ids, in the same order.
# Stops tracking the events that have no part (counted as skipped); returns the others' ids.
SKIP_SILENT = """
local kept, skipped = {}, 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    table.insert(kept, id)
  elseif redis.call('ZREM', KEYS[1], id) == 1 then
    skipped = skipped + 1
  end
end
if skipped > 0 then redis.pcall('HINCRBY', KEYS[2], 'skipped_no_reward', skipped) end
return kept
"""


# KEYS pending, stats; ARGV event id. Stop tracking an event and count it skipped, only if it was
# still tracked: a concurrent final (or another process's sweep) may have settled it already.
DROP_PENDING = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.pcall('HINCRBY', KEYS[2], 'skipped_no_reward', 1)
  return 1
end
return 0
"""


# KEYS stats; ARGV counter, by. Returns the error of a counter that is not a number, else false.
COUNT = """
local counted = redis.pcall('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if type(counted) == 'table' then return counted['err'] end
return false
"""


# KEYS lease; ARGV holder, ttl ms. Take a free lease or renew our own: 0 when another holds it,
# 1 when renewed, 2 when taken (it was free: a holder whose lease lapsed meanwhile must know).
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if holder then return 1 end
return 2
"""


# KEYS lease, events; ARGV consumer (the learner's name), group, count. Up to count events never
# delivered to the group, now delivered to the consumer, only while it holds the learner's lease
# (else nil). Events read by a learner that had stalled past its lease (before it noticed) were
# learned by none when the learner that took over stopped before claiming them: below its
# watermark, they looked learned. Now that learner reads them itself.
READ_NEW = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return false end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
return redis.call(
  'XREADGROUP', 'GROUP', ARGV[2], ARGV[1], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], '>')
"""


# KEYS events; ARGV group, a consumer to keep ('' for none). Every other consumer of the group
# with nothing pending is deleted: each learner process reads under a name of its own, so one
# per process that ever led would otherwise stay in the group for good. One with events
# pending keeps them for a learner to claim. In one script, so no read lands between the check
# and the deletion.
PRUNE_CONSUMERS = """
local gone = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local field = {}
  for i = 1, #consumer, 2 do field[consumer[i]] = consumer[i + 1] end
  if field['pending'] == 0 and field['name'] ~= ARGV[2] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field['name'])
    gone = gone + 1
  end
end
return gone
"""


# KEYS a key never made. A write that writes nothing: Redis refuses it as any write when it
# refuses writes (see transport.refusal), and the call as any script's when an ACL does.
PROBE = """
redis.call('SET', KEYS[1], '', 'XX')
return 1
"""


RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
