-- Begin a login, in one step on one user's keys: is the address one the owner
-- logged in from before; may the attempt go on (the (name, address) and per-name
-- counters, checked as login_attempt checks them; the per-name one not from a
-- known address); if so, reserve it on the (name, address) counter (given back
-- if it turns out right) and read the account. The per-address counter is in
-- another slot: the caller checks it afterwards.
-- KEYS: known addresses, the (name, address) counter, the name's counter, the
-- account. Each counter expires with its window.
-- ARGV: address ('' for none), pair limit, window_s, per-name limit (0: not checked).
-- Returns {denied, retry_after_s, known, name or false, pw hash or false}.
local addrs, pair, names, account = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local address = ARGV[1]
local known = 0
if address ~= '' and redis.call('ZSCORE', addrs, address) then known = 1 end
local function wait(key, limit)
  if limit > 0 and tonumber(redis.call('GET', key) or '0') >= limit then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    return ttl
  end
  return false
end
local per_name = tonumber(ARGV[4])
if known == 1 then per_name = 0 end
local retry = wait(pair, tonumber(ARGV[2])) or wait(names, per_name)
if retry then return {1, retry, known, false, false} end
if redis.call('INCR', pair) == 1 then redis.call('EXPIRE', pair, ARGV[3]) end
local stored = redis.call('HMGET', account, 'name', 'pw')
return {0, 0, known, stored[1], stored[2]}
