-- applied.lua: record that each given shard's state holds a partition's events up to an
-- offset (the offset after the last event of a batch that is fully done), unless a shard
-- holds less than it already vouched for: then Redis lost writes (a restart without the
-- data, a FLUSHALL, a failover to a replica that missed them) and nothing is written, so
-- the loss stays visible until the worker has replayed from the true point.
--
-- Key layout (worker/state/keys.py):
--   rfm:{NN}:applied   hash "<topic>:<partition>" -> next offset the shard's state holds
--
-- KEYS      the applied hashes of the shards (one per call on Redis Cluster: one slot)
-- ARGV      triples: field, floor, offset
--   field   "<topic>:<partition>"
--   floor   the offset every shard held already for it (-1: nothing vouched for yet)
--   offset  the new one; a shard that holds more (another owner went further) keeps it
--
-- Returns {} when written, or the 1-based indexes of the KEYS that hold less than a
-- floor (nothing written).

local lost = {}
for i, key in ipairs(KEYS) do
  for j = 1, #ARGV, 3 do
    if tonumber(redis.call('HGET', key, ARGV[j]) or '-1') < tonumber(ARGV[j + 1]) then
      lost[#lost + 1] = i
      break
    end
  end
end
if #lost > 0 then
  return lost
end
for _, key in ipairs(KEYS) do
  for j = 1, #ARGV, 3 do
    if tonumber(redis.call('HGET', key, ARGV[j]) or '-1') < tonumber(ARGV[j + 2]) then
      redis.call('HSET', key, ARGV[j], ARGV[j + 2])
    end
  end
end
return lost
