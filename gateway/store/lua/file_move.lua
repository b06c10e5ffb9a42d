-- Move a file to its next state, or delete it, only from the state the caller saw:
-- a late chunk, an abort and a finish racing cannot undo one another, and a done
-- file is never deleted or rewritten by an upload's calls.
-- ARGV: expected state, new state ('' deletes the file), lifetime in ms (0: none).
-- Returns 1 moved, 0 the file was not in the expected state (or is gone).
local meta_key, data_key = KEYS[1], KEYS[2]
local expected, new_state, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

if redis.call('HGET', meta_key, 'state') ~= expected then return 0 end
if new_state == '' then
  redis.call('DEL', meta_key, data_key)
  return 1
end
redis.call('HSET', meta_key, 'state', new_state)
for _, key in ipairs({meta_key, data_key}) do
  if ttl_ms > 0 then redis.call('PEXPIRE', key, ttl_ms) else redis.call('PERSIST', key) end
end
return 1
