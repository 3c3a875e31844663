-- wrk script for bench/metering.py: POST /usage/events, batches of BENCH_BATCH events spread
-- over BENCH_USERS users (a server key names each event's user), every event id new.
-- BENCH_KEY: the server key's secret; BENCH_DELAY_MS: optional mean pause (half load).

local key = os.getenv("BENCH_KEY")
local users = tonumber(os.getenv("BENCH_USERS") or "200")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local counter = 0
local tag = ""
local cursor = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tag", "t" .. threads .. "-" .. tostring(math.random(1, 1e9)))
end

function init(args)
  cursor = math.random(users)
end

local function user_id(n)
  return string.format("00000000-0000-4000-8000-%012d", n)
end

function request()
  counter = counter + 1
  local parts = {}
  for k = 1, batch do
    cursor = cursor % users + 1
    parts[k] = '{"id":"' .. tag .. "-" .. counter .. "-" .. k .. '","user_id":"'
      .. user_id(cursor) .. '","credits":1,"endpoint":"/v1/bench"}'
  end
  return wrk.format("POST", "/api/user-management/usage/events", {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
  }, '{"events":[' .. table.concat(parts, ",") .. "]}")
end

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause and pause > 0 then
  function delay()
    return math.floor(-pause * math.log(1 - math.random()) + 0.5)
  end
end
