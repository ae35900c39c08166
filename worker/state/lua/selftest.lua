-- selftest.lua: run every command the worker's scripts run (commit.lua, applied.lua,
-- clock.lua, topic.lua), once each, on scratch keys, and say which ones the server
-- refuses (an ACL rule, a renamed or disabled command). Run at start, before the first
-- event (worker/state/permissions.py), so a missing permission is named then rather than
-- met in the middle of the stream.
--
-- KEYS[1], KEYS[2]  scratch strings; KEYS[3] a scratch hash; KEYS[4] a scratch zset;
--                   KEYS[5] a scratch stream: rfm:{selftest}:<nonce>:<kind>, one slot
--
-- Returns {command, error, command, error, ...} for the refused commands (empty: all ran).
-- Every scratch key is deleted by the caller, and expires within a minute anyway.

local refused = {}
local function try(command, ...)
  local ok, err = pcall(redis.call, command, ...)
  if not ok then
    refused[#refused + 1] = command
    refused[#refused + 1] = type(err) == 'table' and err.err or tostring(err)
  end
end

try('SET', KEYS[1], '1')
try('GET', KEYS[1])
try('MSET', KEYS[1], '1', KEYS[2], '2')
try('MGET', KEYS[1], KEYS[2])
try('HSET', KEYS[3], 'f', '1')
try('HGET', KEYS[3], 'f')
try('HINCRBY', KEYS[3], 'g', 1)
try('HDEL', KEYS[3], 'g')
try('HKEYS', KEYS[3])
try('ZADD', KEYS[4], 1, 'm')
try('ZREM', KEYS[4], 'm')
try('XADD', KEYS[5], '*', 'k', 'v')
for i = 1, 5 do
  try('PEXPIRE', KEYS[i], 60000)
end
return refused
