-- A right password, in one step: the (name, address) counter goes (the owner is
-- in) and the address is remembered as one the owner uses, the last few kept.
-- KEYS: the (name, address) counter, known addresses.
-- ARGV: address ('' for none: nothing to remember), now_ms, how many to keep.
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]) - 1)
end
return 1
