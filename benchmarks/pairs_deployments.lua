-- /choose then /reward, as pairs.lua, with the /choose bodies spread round the deployments named
-- in the script's arguments (wrk ... -s pairs_deployments.lua URL -- default app1 app2 ...).
local names = {}
local threads = {}
local queue, head, tail = {}, 1, 0
local i = 0
chooses, rewards, failed = 0, 0, 0

setup = function(thread) table.insert(threads, thread) end

init = function(args)
  for _, name in ipairs(args) do table.insert(names, name) end
  if #names == 0 then names = {"default"} end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

request = function()
  if head <= tail then
    local id = queue[head]
    queue[head] = nil
    head = head + 1
    return wrk.format(nil, "/reward", nil,
      '{"event_id":"' .. id .. '","accuracy":1,"rating":4,"latency_ms":840}')
  end
  i = i + 1
  local name = names[i % #names + 1]
  return wrk.format(nil, "/choose", nil,
    '{"query":"What is the capital of Australia? ' .. i .. '","features":{"task":"qa"},' ..
    '"deployment":"' .. name .. '"}')
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
