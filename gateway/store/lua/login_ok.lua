-- A login attempt turned out not to be a wrong guess: give it back.
-- The first ARGV[1] keys are deleted (the (name, address) counter: the owner is
-- in), the others are decremented.
local deletes = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if i <= deletes then
    redis.call('DEL', key)
  elseif redis.call('DECR', key) <= 0 then
    redis.call('DEL', key)
  end
end
return 1
