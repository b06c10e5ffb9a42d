-- Claim a name if nobody has.
local account = KEYS[1]
local name, password_hash, created_ms = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', account) == 1 then return 0 end
redis.call('HSET', account, 'name', name, 'pw', password_hash, 'created', created_ms)
return 1
