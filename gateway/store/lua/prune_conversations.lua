-- Drop the direct conversations whose history has expired, with their cursors.
local conversations, cursors = KEYS[1], KEYS[2]
local before_ms = ARGV[1]
local gone = redis.call('ZRANGE', conversations, '-inf', '(' .. before_ms, 'BYSCORE', 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', conversations, unpack(gone))
  redis.call('HDEL', cursors, unpack(gone))
end
return #gone
