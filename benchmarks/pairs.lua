-- /choose then /reward for the decision it made: every answered /choose is rewarded.
-- Per-thread counters are summed in done(); ids wait in a queue until a connection is free.
local bodies = {
  '{"query":"Write a Python function that merges two sorted lists","features":{"task":"code"}}',
  '{"query":"What is the capital of Australia?","features":{"task":"qa"}}',
  '{"query":"Explain step by step why the sky is blue","features":{"task":"reasoning"}}',
  '{"query":"Solve the equation 3x + 7 = 22","features":{"task":"math"}}',
}
local threads = {}
local queue, head, tail = {}, 1, 0
local i = 0
chooses, rewards, failed, pending = 0, 0, 0, 0

setup = function(thread) table.insert(threads, thread) end

init = function(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

request = function()
  if head <= tail then
    local id = queue[head]
    queue[head] = nil
    head = head + 1
    pending = pending + 1
    return wrk.format(nil, "/reward", nil,
      '{"event_id":"' .. id .. '","accuracy":1,"rating":4,"latency_ms":840}')
  end
  i = i % #bodies + 1
  return wrk.format(nil, "/choose", nil, bodies[i])
end

response = function(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
    return
  end
  local id = body:match('"event_id":"([^"]+)","arm"')
  if body:find('"status"', 1, true) then
    rewards = rewards + 1
  elseif id then
    chooses = chooses + 1
    tail = tail + 1
    queue[tail] = id
  end
end

done = function(summary, latency, requests)
  local c, r, f = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("chooses"); r = r + t:get("rewards"); f = f + t:get("failed")
  end
  io.write(string.format("PAIRS chooses=%d rewards=%d failed=%d\n", c, r, f))
end
