-- clock.lua: advance the event clock (RFM_CLOCK=event) monotonically.
-- KEYS[1]  rfm:clock   string, epoch milliseconds of the latest occurred_at seen
-- ARGV[1]  a candidate instant (epoch ms)
-- Returns the clock after the call: max(stored, candidate). Time never moves back.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local candidate = tonumber(ARGV[1])
if candidate > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return candidate
end
return current
