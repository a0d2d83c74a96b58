-- wrk script: GET /api/agent-base, cycling through the bearer tokens listed
-- (one per line) in the file named by the first script argument.
local requests = {}
local n = 0
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    requests[n] = wrk.format("GET", "/api/agent-base", { ["Authorization"] = "Bearer " .. line })
  end
  -- Threads start at different offsets so they do not move in lockstep.
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return requests[i]
end
