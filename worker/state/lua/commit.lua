-- commit.lua: commit a slice of a batch atomically, whatever its cause (order events, a
-- decay sweep, the indexing of old customers).
-- Compare-and-set every customer state, then write the new states, move each customer in
-- the due index and the segment index, append the changes to the outbox streams and
-- adjust the segment counters. Nothing is written unless every comparison holds (Lua has no rollback: all
-- checks come before the first write). On Redis Cluster a call carries one shard (its
-- keys share the hash tag {NN}: one slot); on a single Redis, several shards at once.
--
-- Key layout (NN = shard 00..63, P = orders-topic partition; worker/state/keys.py):
--   rfm:{NN}:c:<tenant>:<customer_id>   string, the customer's state blob
--   rfm:{NN}:outbox:<P>                 stream of changes waiting for the relay (k, v)
--   rfm:{NN}:due:<P>                    zset, customer key -> instant of its next change
--   rfm:{NN}:counts                     hash "<tenant>\t<rfm>\t<segment>" -> customers
--   rfm:{NN}:flows:<tenant>:<span>:<t>  hash "<from>\t<to>" -> moves (worker/state/flows.py)
--   rfm:{NN}:m:<tenant>:<o>             zset, the segment index (worker/state/segment_index.py)
--
-- KEYS      every key, referenced by index from the plan
-- ARGV[1]   the plan, JSON; every number below indexes KEYS (key, due_*, counts, outbox)
--           or ARGV (expected, new, k, v):
--   {"customers": [[key, expected, new, due_from, due_to, due], ...],
--    "counts":    [[counts, field, delta], ...],
--    "changes":   [[outbox, k, v], ...],
--    "vouched":   [[applied, field, floor], ...],
--    "expire":    [[flows, ttl], ...],
--    "unindex":   [[set, member], ...],
--    "index":     [[set, member], ...],
--    "erase":     [[tombstones, digest, instant], ...]}
--   expected  the value the customer key must hold ("" = absent)
--   new       the new value, or 0 to leave the state as it is (a due-only update); an
--             empty value deletes the state (an erased customer)
--   due_from  the due zset the customer is in now (its previous partition's)
--   due_to    the due zset it belongs in; due is "" (never due: removed) or epoch ms
--   applied   a shard's applied hash, rfm:{NN}:applied ("<topic>:<partition>" -> the
--             offset up to which its state holds that partition's events, see applied.lua)
--   field     "<topic>:<partition>" of the customers' partition; floor (a number) the
--             offset the shard vouched for already: holding less, it lost writes
--   counts    also a flows hash (moves between segments in a time bucket, always + deltas)
--   flows     a flows hash the counts touched, set to expire ttl ms from now
--   set       a segment index set; member (ARGV) added to it with score 0 ("index",
--             first) or removed from it ("unindex")
--   tombstones a shard's rfm:{NN}:erased hash; digest (ARGV) -> instant (ARGV, epoch ms),
--             set unless it holds a later instant already (worker/rules/erasure.py)
-- ARGV[2..] the values referenced by the plan (states, customer ids, change payloads)
--
-- Returns {0, i, ...}: the 1-based indexes of customers whose value differed, nothing
-- written; {2, i, ...}: the indexes of "vouched" entries whose shard holds less than its
-- floor (Redis lost writes), nothing written; or {1, id, ...}: the stream ids of the
-- appended changes, in order; or the error "NOPERM <why>" when a write would be refused
-- (nothing written).

local plan = cjson.decode(ARGV[1])
local customers = plan.customers

-- Redis never rolls a script back: a write refused halfway (an ACL rule, a renamed or
-- disabled command) would keep the writes before it, a state without its changes. So
-- every write this call will make is checked first, each command on each key it touches
-- (redis.acl_check_cmd, Redis 7+); a refusal returns an error and writes nothing. Out of
-- memory needs no check: Redis refuses a script's first write only, never a later one.
local function refusal()
  if not redis.acl_check_cmd then
    return nil
  end
  -- The keys a plan names recur (a shard's due sets, counters, index sets, outbox): each
  -- (command, key) is checked once, gathered first by plain table writes.
  local del, zrem, zadd, hash, expire, xadd, hset = {}, {}, {}, {}, {}, {}, {}
  local states = {} -- the customer keys MSET writes, checked together
  for _, c in ipairs(customers) do
    if c[3] > 0 then
      if ARGV[c[3]] == '' then
        del[c[1]] = true
      else
        states[#states + 1] = KEYS[c[1]]
        states[#states + 1] = 'x'
      end
    end
    zrem[c[4]] = true
    zrem[c[5]] = true
    zadd[c[5]] = true
  end
  for _, d in ipairs(plan.counts) do
    hash[d[1]] = true
  end
  for _, e in ipairs(plan.expire or {}) do
    expire[e[1]] = true
  end
  for _, e in ipairs(plan.unindex or {}) do
    zrem[e[1]] = true
  end
  for _, e in ipairs(plan.index or {}) do
    zadd[e[1]] = true
  end
  for _, ch in ipairs(plan.changes) do
    xadd[ch[1]] = true
  end
  for _, e in ipairs(plan.erase or {}) do
    hset[e[1]] = true
  end
  local function check(command, indexes, ...)
    for index in pairs(indexes) do
      local known, allowed = pcall(redis.acl_check_cmd, command, KEYS[index], ...)
      if not known then
        return command .. ' is not a command of this server (renamed or disabled?)'
      elseif not allowed then
        return 'this user may not run ' .. command .. ' on ' .. KEYS[index]
      end
    end
  end
  local why = check('DEL', del) or check('ZREM', zrem, 'x') or check('ZADD', zadd, '0', 'x')
    or check('HINCRBY', hash, 'x', '1') or check('HDEL', hash, 'x')
    or check('PEXPIRE', expire, '1') or check('XADD', xadd, '*', 'k', 'v')
    or check('HSET', hset, 'x', '1')
  if why then
    return why
  end
  for i = 1, #states, 1000 do -- a Lua stack of limited size: in chunks, as below
    local known, allowed = pcall(redis.acl_check_cmd, 'MSET',
      unpack(states, i, math.min(i + 999, #states)))
    if not known then
      return 'MSET is not a command of this server (renamed or disabled?)'
    elseif not allowed then
      return 'this user may not run MSET on the customer keys (' .. states[i] .. ', ...)'
    end
  end
end
local refused = refusal()
if refused then
  return redis.error_reply('NOPERM ' .. refused)
end

-- A shard that lost what it vouched for is not written on: the caller replays first.
local lost = {2}
for i, v in ipairs(plan.vouched or {}) do
  if tonumber(redis.call('HGET', KEYS[v[1]], ARGV[v[2]]) or '-1') < v[3] then
    lost[#lost + 1] = i
  end
end
if #lost > 1 then
  return lost
end

-- Commands take their arguments from a Lua stack of limited size: long lists go in chunks
-- (an even size, for ZADD's score/member pairs).
local function each_chunk(list, call)
  for i = 1, #list, 1000 do
    call(unpack(list, i, math.min(i + 999, #list)))
  end
end

-- One command per kind of write rather than per customer: a call from Lua costs more than
-- the write itself.
local keys, values = {}, {}
for i, c in ipairs(customers) do
  keys[i] = KEYS[c[1]]
end
for i = 1, #keys, 1000 do
  local stored = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
  for j, value in ipairs(stored) do -- a missing key is false, not nil
    values[i + j - 1] = value or ''
  end
end
local conflicts = {0}
for i, c in ipairs(customers) do
  if values[i] ~= ARGV[c[2]] then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 1 then
  return conflicts
end

local states = {}           -- key, value, ... for MSET
local leave, enter = {}, {} -- due zset index -> members to remove / score, member, ... to add
-- (one function per arity: a vararg's table per value costs more than the write)
local function push(groups, index, v)
  local list = groups[index]
  if list then
    list[#list + 1] = v
  else
    groups[index] = {v}
  end
end
local function push2(groups, index, v, w)
  local list = groups[index]
  if list then
    local n = #list
    list[n + 1], list[n + 2] = v, w
  else
    groups[index] = {v, w}
  end
end
for _, c in ipairs(customers) do
  local key = KEYS[c[1]]
  if c[3] > 0 and ARGV[c[3]] == '' then
    redis.call('DEL', key)
  elseif c[3] > 0 then
    states[#states + 1] = key
    states[#states + 1] = ARGV[c[3]]
  end
  if c[4] ~= c[5] then
    push(leave, c[4], key)
  end
  if c[6] == '' then
    push(leave, c[5], key)
  else
    push2(enter, c[5], c[6], key)
  end
end
each_chunk(states, function(...) redis.call('MSET', ...) end)
-- Additions before removals (no member is in both for one key): a due set emptied by its
-- removals is not written to again in this script (see the segment index below).
for index, pairs_ in pairs(enter) do
  each_chunk(pairs_, function(...) redis.call('ZADD', KEYS[index], ...) end)
end
for index, members in pairs(leave) do
  each_chunk(members, function(...) redis.call('ZREM', KEYS[index], ...) end)
end

-- The segment index: a customer whose place or rank moved is added under its new member,
-- then removed under its old one (never the same member). Adding first, no set is emptied
-- (and so deleted) before it is written to again: on a cluster slot being migrated, a
-- script may not write a key that does not exist (Redis answers "non local key", after
-- the writes before it were made).
local unindexed, indexed = {}, {}
for _, e in ipairs(plan.unindex or {}) do
  push(unindexed, e[1], ARGV[e[2]])
end
for _, e in ipairs(plan.index or {}) do
  push2(indexed, e[1], '0', ARGV[e[2]])
end
for index, pairs_ in pairs(indexed) do
  each_chunk(pairs_, function(...) redis.call('ZADD', KEYS[index], ...) end)
end
for index, members in pairs(unindexed) do
  each_chunk(members, function(...) redis.call('ZREM', KEYS[index], ...) end)
end

-- Counters and sums: the increments first, then the decrements (a field that reaches 0 is
-- deleted), so that no hash is emptied and then written to again in this script.
for pass = 1, 2 do
  for _, d in ipairs(plan.counts) do
    if (d[3] > 0) == (pass == 1) then
      if redis.call('HINCRBY', KEYS[d[1]], d[2], d[3]) <= 0 then
        redis.call('HDEL', KEYS[d[1]], d[2])
      end
    end
  end
end

for _, e in ipairs(plan.expire or {}) do
  redis.call('PEXPIRE', KEYS[e[1]], e[2])
end

for _, e in ipairs(plan.erase or {}) do
  local at = tonumber(redis.call('HGET', KEYS[e[1]], ARGV[e[2]]) or '-1')
  if at < tonumber(ARGV[e[3]]) then
    redis.call('HSET', KEYS[e[1]], ARGV[e[2]], ARGV[e[3]])
  end
end

local ids = {1}
for _, ch in ipairs(plan.changes) do
  ids[#ids + 1] = redis.call('XADD', KEYS[ch[1]], '*', 'k', ARGV[ch[2]], 'v', ARGV[ch[3]])
end
return ids
