-- commit.lua: commit one shard's slice of a batch atomically, whatever its cause
-- (order events, a decay sweep, the indexing of old customers).
-- Compare-and-set every customer state, then write the new states, move each customer in
-- the due index, append the changes to the outbox streams and adjust the segment
-- counters. All keys share the shard's hash tag {NN}, so the script is valid on Redis
-- Cluster. Nothing is written unless every comparison holds (Lua has no rollback: all
-- checks come before the first write).
--
-- Key layout (NN = shard 00..63, P = orders-topic partition; worker/keys.py):
--   rfm:{NN}:c:<tenant>:<customer_id>   string, the customer's state blob
--   rfm:{NN}:outbox:<P>                 stream of changes waiting for the relay (k, v)
--   rfm:{NN}:due:<P>                    zset, customer key -> instant of its next change
--   rfm:{NN}:counts                     hash "<tenant>\t<rfm>\t<segment>" -> customers
--
-- KEYS[1]   the counts hash; KEYS[2..] every other key, referenced by index from the plan
-- ARGV[1]   the plan, JSON; every number below indexes KEYS (key, due_*, outbox) or
--           ARGV (expected, new, k, v):
--   {"customers": [[key, expected, new, due_from, due_to, due], ...],
--    "counts":    [[field, delta], ...],
--    "changes":   [[outbox, k, v], ...]}
--   expected  the value the customer key must hold ("" = absent)
--   new       the new value, or 0 to leave the state as it is (a due-only update)
--   due_from  the due zset the customer is in now (its previous partition's)
--   due_to    the due zset it belongs in; due is "" (never due: removed) or epoch ms
-- ARGV[2..] the values referenced by the plan (states, customer ids, change payloads)
--
-- Returns {0, i, ...}: the 1-based indexes of customers whose value differed, nothing
-- written; or {1, id, ...}: the stream ids of the appended changes, in order.

local plan = cjson.decode(ARGV[1])

local conflicts = {0}
for i, c in ipairs(plan.customers) do
  if (redis.call('GET', KEYS[c[1]]) or '') ~= ARGV[c[2]] then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 1 then
  return conflicts
end

for _, c in ipairs(plan.customers) do
  local key = KEYS[c[1]]
  if c[3] > 0 then
    redis.call('SET', key, ARGV[c[3]])
  end
  if c[4] ~= c[5] then
    redis.call('ZREM', KEYS[c[4]], key)
  end
  if c[6] == '' then
    redis.call('ZREM', KEYS[c[5]], key)
  else
    redis.call('ZADD', KEYS[c[5]], c[6], key)
  end
end

for _, d in ipairs(plan.counts) do
  if redis.call('HINCRBY', KEYS[1], d[1], d[2]) <= 0 then
    redis.call('HDEL', KEYS[1], d[1])
  end
end

local ids = {1}
for _, ch in ipairs(plan.changes) do
  ids[#ids + 1] = redis.call('XADD', KEYS[ch[1]], '*', 'k', ARGV[ch[2]], 'v', ARGV[ch[3]])
end
return ids
