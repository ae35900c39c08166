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
--           or ARGV (expected, new, k, v). Each list is flat, its entries one after the
--           other (a table per entry would cost more to decode than its writes):
--   {"customers": [key, expected, new, due_from, due_to, due, ...],
--    "counts":    [counts, field, delta, ...],
--    "changes":   [outbox, k, v, ...],
--    "vouched":   [applied, field, floor, ...],
--    "expire":    [flows, ttl, ...],
--    "unindex":   [set, first, count, ...],
--    "index":     [set, first, count, ...],
--    "erase":     [tombstones, digest, instant, ...]}
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
--   set       a segment index set; the `count` members ARGV[first], ARGV[first + 1], ...
--             are added to it with score 0 ("index", first) or removed from it ("unindex")
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
local customers = plan.customers -- six values per customer (see above)
local counts, changes, vouched = plan.counts or {}, plan.changes or {}, plan.vouched or {}
local expire, erase = plan.expire or {}, plan.erase or {}
local index, unindex = plan.index or {}, plan.unindex or {}

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
  local del, zrem, zadd, hash, pexpire, xadd, hset = {}, {}, {}, {}, {}, {}, {}
  local states = {} -- the customer keys MSET writes, checked together
  for i = 1, #customers, 6 do
    local new = customers[i + 2]
    if new > 0 then
      if ARGV[new] == '' then
        del[customers[i]] = true
      else
        states[#states + 1] = KEYS[customers[i]]
        states[#states + 1] = 'x'
      end
    end
    zrem[customers[i + 3]] = true
    zrem[customers[i + 4]] = true
    zadd[customers[i + 4]] = true
  end
  for i = 1, #counts, 3 do
    hash[counts[i]] = true
  end
  for i = 1, #expire, 2 do
    pexpire[expire[i]] = true
  end
  for i = 1, #unindex, 3 do
    zrem[unindex[i]] = true
  end
  for i = 1, #index, 3 do
    zadd[index[i]] = true
  end
  for i = 1, #changes, 3 do
    xadd[changes[i]] = true
  end
  for i = 1, #erase, 3 do
    hset[erase[i]] = true
  end
  local function check(command, indexes, ...)
    for k in pairs(indexes) do
      local known, allowed = pcall(redis.acl_check_cmd, command, KEYS[k], ...)
      if not known then
        return command .. ' is not a command of this server (renamed or disabled?)'
      elseif not allowed then
        return 'this user may not run ' .. command .. ' on ' .. KEYS[k]
      end
    end
  end
  local why = check('DEL', del) or check('ZREM', zrem, 'x') or check('ZADD', zadd, '0', 'x')
    or check('HINCRBY', hash, 'x', '1') or check('HDEL', hash, 'x')
    or check('PEXPIRE', pexpire, '1') or check('XADD', xadd, '*', 'k', 'v')
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
for i = 1, #vouched, 3 do
  local held = tonumber(redis.call('HGET', KEYS[vouched[i]], ARGV[vouched[i + 1]]) or '-1')
  if held < vouched[i + 2] then
    lost[#lost + 1] = (i + 2) / 3
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
for i = 1, #customers, 6 do
  keys[#keys + 1] = KEYS[customers[i]]
end
for i = 1, #keys, 1000 do
  local stored = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
  for j, value in ipairs(stored) do -- a missing key is false, not nil
    values[i + j - 1] = value or ''
  end
end
local conflicts = {0}
for n = 1, #keys do
  if values[n] ~= ARGV[customers[6 * n - 4]] then
    conflicts[#conflicts + 1] = n
  end
end
if #conflicts > 1 then
  return conflicts
end

local states = {}           -- key, value, ... for MSET
local leave, enter = {}, {} -- due zset index -> members to remove / score, member, ... to add
-- (one function per arity: a vararg's table per value costs more than the write)
local function push(groups, at, v)
  local list = groups[at]
  if list then
    list[#list + 1] = v
  else
    groups[at] = {v}
  end
end
local function push2(groups, at, v, w)
  local list = groups[at]
  if list then
    local n = #list
    list[n + 1], list[n + 2] = v, w
  else
    groups[at] = {v, w}
  end
end
for n = 1, #keys do
  local i = 6 * n - 5
  local key, new, from, to = keys[n], customers[i + 2], customers[i + 3], customers[i + 4]
  local due = customers[i + 5]
  if new > 0 and ARGV[new] == '' then
    redis.call('DEL', key)
  elseif new > 0 then
    states[#states + 1] = key
    states[#states + 1] = ARGV[new]
  end
  if from ~= to then
    push(leave, from, key)
  end
  if due == '' then
    push(leave, to, key)
  else
    push2(enter, to, due, key)
  end
end
each_chunk(states, function(...) redis.call('MSET', ...) end)
-- Additions before removals (no member is in both for one key): a due set emptied by its
-- removals is not written to again in this script (see the segment index below).
for at, pairs_ in pairs(enter) do
  each_chunk(pairs_, function(...) redis.call('ZADD', KEYS[at], ...) end)
end
for at, members in pairs(leave) do
  each_chunk(members, function(...) redis.call('ZREM', KEYS[at], ...) end)
end

-- The segment index: a customer whose place or rank moved is added under its new member,
-- then removed under its old one (never the same member). Adding first, no set is emptied
-- (and so deleted) before it is written to again: on a cluster slot being migrated, a
-- script may not write a key that does not exist (Redis answers "non local key", after
-- the writes before it were made). Each set's members come as one run of ARGV.
for i = 1, #index, 3 do
  local set, first, count = KEYS[index[i]], index[i + 1], index[i + 2]
  for from = first, first + count - 1, 500 do
    local args = {}
    for k = from, math.min(from + 499, first + count - 1) do
      args[#args + 1] = '0'
      args[#args + 1] = ARGV[k]
    end
    redis.call('ZADD', set, unpack(args))
  end
end
for i = 1, #unindex, 3 do
  local set, first, count = KEYS[unindex[i]], unindex[i + 1], unindex[i + 2]
  for from = first, first + count - 1, 1000 do
    redis.call('ZREM', set, unpack(ARGV, from, math.min(from + 999, first + count - 1)))
  end
end

-- Counters and sums: the increments first, then the decrements (a field that reaches 0 is
-- deleted), so that no hash is emptied and then written to again in this script.
for pass = 1, 2 do
  for i = 1, #counts, 3 do
    local delta = counts[i + 2]
    if (delta > 0) == (pass == 1) then
      if redis.call('HINCRBY', KEYS[counts[i]], counts[i + 1], delta) <= 0 then
        redis.call('HDEL', KEYS[counts[i]], counts[i + 1])
      end
    end
  end
end

for i = 1, #expire, 2 do
  redis.call('PEXPIRE', KEYS[expire[i]], expire[i + 1])
end

for i = 1, #erase, 3 do
  local at = tonumber(redis.call('HGET', KEYS[erase[i]], ARGV[erase[i + 1]]) or '-1')
  if at < tonumber(ARGV[erase[i + 2]]) then
    redis.call('HSET', KEYS[erase[i]], ARGV[erase[i + 1]], ARGV[erase[i + 2]])
  end
end

local ids = {1}
for i = 1, #changes, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[changes[i]], '*', 'k', ARGV[changes[i + 1]],
    'v', ARGV[changes[i + 2]])
end
return ids
