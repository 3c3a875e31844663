-- wrk script for bench/webhooks.py: POST pre-signed Stripe events, each sent once.
-- BENCH_EVENTS: a file of "<Stripe-Signature>\t<body>" lines; BENCH_THREADS: wrk's -t.
-- Thread k of n sends lines k, k+n, k+2n... so no two requests carry the same event
-- (until the file runs out; a repeat is answered 200 as a duplicate and counted apart).

local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local events = {}
local i = 0

function init(args)
  local n = tonumber(os.getenv("BENCH_THREADS") or "1")
  local k = 0
  for line in io.lines(os.getenv("BENCH_EVENTS")) do
    if k % n == id then
      local tab = line:find("\t", 1, true)
      events[#events + 1] = { line:sub(1, tab - 1), line:sub(tab + 1) }
    end
    k = k + 1
  end
end

function request()
  i = i % #events + 1
  local e = events[i]
  return wrk.format("POST", "/api/user-management/webhook/stripe", {
    ["Content-Type"] = "application/json",
    ["Stripe-Signature"] = e[1],
  }, e[2])
end
