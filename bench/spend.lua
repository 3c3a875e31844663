-- wrk script for bench/spend.py: POST /credits/use, rotating bearer tokens of many users.
-- BENCH_TOKENS: a file with one access token per line; BENCH_DELAY_MS: optional mean pause
-- before each request (used to hold a steady, lower rate for the half-load run).

local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  tokens[#tokens + 1] = line
end
local i = 0
local body = '{"credits":1,"description":"bench","endpoint":"/v1/bench"}'

function init(args)
  -- Threads start at different users so they do not walk the list in step.
  i = math.random(#tokens)
end

function request()
  i = i % #tokens + 1
  return wrk.format("POST", "/api/user-management/credits/use", {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, body)
end

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause and pause > 0 then
  -- Exponential pauses of that mean (the default): independent clients, arriving at random.
  -- BENCH_DELAY_FIXED=1: every pause the same, which keeps the connections in lockstep.
  local fixed = os.getenv("BENCH_DELAY_FIXED") == "1"
  function delay()
    if fixed then
      return pause
    end
    return math.floor(-pause * math.log(1 - math.random()) + 0.5)
  end
end
