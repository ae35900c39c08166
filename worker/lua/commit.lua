-- commit.lua: commit one shard's slice of a batch atomically.
-- Compare-and-set every customer state, then append the changes to the outbox streams
-- and adjust the segment counters. All keys share the shard's hash tag {NN}, so the
-- script is valid on Redis Cluster. Nothing is written unless every comparison holds
-- (Lua has no rollback: all checks come before the first write).
--
-- Key layout (NN = shard, 00..63):
--   rfm:{NN}:c:<tenant>:<customer_id>   string, the customer's state blob (worker/customer.py)
--   rfm:{NN}:outbox:<partition>         stream of changes waiting for the relay (k, v)
--   rfm:{NN}:counts                     hash "<tenant>\t<rfm>\t<segment>" -> customers
--
-- KEYS[1]                 the counts hash
-- KEYS[2 .. n+1]          the n customer keys
-- KEYS[n+2 .. n+1+c]      the outbox stream of each of the c changes (may repeat)
-- ARGV[1]                 n
-- ARGV[2 .. n+1]          the value each customer key is expected to hold ("" = absent)
-- ARGV[n+2 .. 2n+1]       the new value of each customer key
-- ARGV[2n+2]              d, the number of counter deltas, then d pairs: field, delta
-- then c pairs            customer_id, payload of each change (stream fields k, v)
--
-- Returns {0, i, ...}: the 1-based indexes of customers whose value differed, nothing
-- written; or {1, id, ...}: the stream ids of the appended changes, in order.

local n = tonumber(ARGV[1])
local conflicts = {}
for i = 1, n do
  local current = redis.call('GET', KEYS[1 + i])
  if (current or '') ~= ARGV[1 + i] then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 0 then
  table.insert(conflicts, 1, 0)
  return conflicts
end

for i = 1, n do
  redis.call('SET', KEYS[1 + i], ARGV[1 + n + i])
end

local a = 2 * n + 2
local d = tonumber(ARGV[a])
for j = 1, d do
  local field = ARGV[a + 2 * j - 1]
  if redis.call('HINCRBY', KEYS[1], field, ARGV[a + 2 * j]) <= 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end

local ids = {1}
local c0 = a + 2 * d
local c = (#ARGV - c0) / 2
for j = 1, c do
  ids[#ids + 1] = redis.call('XADD', KEYS[n + 1 + j], '*',
    'k', ARGV[c0 + 2 * j - 1], 'v', ARGV[c0 + 2 * j])
end
return ids
