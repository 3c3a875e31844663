-- wrk script for bench/metering.py: holds opened and captured in pairs, each thread with one
-- connection (so its requests and responses alternate): open a hold (POST /credits/holds),
-- then capture part of it with the same user's token. BENCH_TOKENS: one access token per
-- line, rotated per pair.

local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  tokens[#tokens + 1] = line
end
local i = 0
local hold = nil  -- the hold opened by the last response, waiting for its capture

function init(args)
  i = math.random(#tokens)
end

local function post(path, body)
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, body)
end

function request()
  if hold then
    local id = hold
    hold = nil
    return post("/api/user-management/credits/holds/" .. id .. "/capture", '{"credits":3}')
  end
  i = i % #tokens + 1
  return post("/api/user-management/credits/holds",
              '{"credits":5,"ttl_s":600,"endpoint":"/v1/bench"}')
end

function response(status, headers, body)
  if status == 201 then
    hold = string.match(body, '"hold_id":"([%x%-]+)"')
  end
end
