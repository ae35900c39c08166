-- topic.lua: the applied offsets of a topic belong to one incarnation of it, named by
-- Kafka's topic id. A topic deleted and recreated under the same name starts its offsets
-- again at 0: offsets recorded for the old incarnation say nothing of the new one, and a
-- worker that seeked to them would skip the new topic's first records. So each shard
-- records the id its offsets belong to, and drops them when the id changes (the worker
-- then applies the new topic from its start: events already applied count once).
--
-- Key layout (worker/state/keys.py):
--   rfm:{NN}:applied   hash "<topic>:<partition>" -> next offset the shard's state holds,
--                           and "<topic>:id" -> the topic id those offsets belong to
--
-- KEYS      the applied hashes of the shards (one per call on Redis Cluster: one slot)
-- ARGV[1]   the topic; ARGV[2] its id now
--
-- Returns the id a shard's offsets were recorded for, when it differed from ARGV[2] and
-- they were dropped; false when no shard held another incarnation's offsets. A shard
-- with offsets but no id (recorded before ids were) takes the id and keeps its offsets.

local field, prefix = ARGV[1] .. ':id', ARGV[1] .. ':'
local previous = false
for _, key in ipairs(KEYS) do
  local recorded = redis.call('HGET', key, field)
  if recorded ~= ARGV[2] then
    if recorded then
      previous = recorded
      for _, name in ipairs(redis.call('HKEYS', key)) do
        if name ~= field and string.sub(name, 1, #prefix) == prefix then
          redis.call('HDEL', key, name)
        end
      end
    end
    redis.call('HSET', key, field, ARGV[2])
  end
end
return previous
