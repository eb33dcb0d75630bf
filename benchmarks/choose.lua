-- POST /choose with a rotating set of realistic queries (the same bodies for every target).
local bodies = {
  '{"query":"Write a Python function that merges two sorted lists","features":{"task":"code","tier":"pro"}}',
  '{"query":"What is the capital of Australia?","features":{"task":"qa","tier":"free"}}',
  '{"query":"Explain step by step why the sky is blue, and compare it with sunsets.","features":{"task":"reasoning","lang":"en"}}',
  '{"query":"Solve the equation 3x + 7 = 22 and show your work","features":{"task":"math","tier":"pro","n_turns":3}}',
  '{"query":"Translate to French: the meeting is moved to Thursday afternoon","features":{"task":"translate"}}',
  '{"query":"Summarise this:\\n- item one is late\\n- item two shipped\\n- item three is blocked","features":{"task":"summary","premium":true}}',
}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/choose", nil, bodies[i])
end
