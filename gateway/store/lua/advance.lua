-- Move a user's cursors forward only. ARGV: conversation, id, conversation, id, ...
local cursors = KEYS[1]

local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am then return true end
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

for i = 1, #ARGV, 2 do
  local conversation, id = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', cursors, conversation)
  if not current or older(current, id) then redis.call('HSET', cursors, conversation, id) end
end
return 1
