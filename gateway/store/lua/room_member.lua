-- A change to a room's members, atomic on the room's keys. ``actor`` asks for it
-- about ``user`` (both lower case). Modes:
--   invite   owner adds a user at once            approve  owner admits a pending user
--   deny     owner drops a pending request        public   a user joins a public room
--   request  a user asks to join (by link)        leave    a member leaves
-- Returns {status, detail}: status is one of joined, member (already one), pending,
-- denied, left, handed (detail: the new owner), closed (the last member left),
-- no_room, forbidden, not_pending, not_member.
local room_key, members_key, pending_key = KEYS[1], KEYS[2], KEYS[3]
local mode, actor, user, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local owner = redis.call('HGET', room_key, 'owner')
if not owner then return {'no_room', ''} end
local is_member = redis.call('ZSCORE', members_key, user) ~= false

if mode == 'leave' then
  if not is_member then return {'not_member', ''} end
  redis.call('ZREM', members_key, user)
  if owner ~= user then return {'left', ''} end
  -- The owner left: the longest-standing member takes over; nobody left closes it.
  local next_owner = redis.call('ZRANGE', members_key, 0, 0)[1]
  if next_owner then
    redis.call('HSET', room_key, 'owner', next_owner)
    return {'handed', next_owner}
  end
  for i = 1, #KEYS do redis.call('UNLINK', KEYS[i]) end
  return {'closed', ''}
end

if mode == 'invite' or mode == 'approve' or mode == 'deny' then
  if actor ~= owner then return {'forbidden', ''} end
end
if mode == 'public' and redis.call('HGET', room_key, 'private') == '1' then
  return {'forbidden', ''}
end
if is_member then
  redis.call('ZREM', pending_key, user)
  return {'member', ''}
end
if mode == 'request' then
  redis.call('ZADD', pending_key, 'NX', now, user)
  return {'pending', owner}
end
if mode == 'approve' or mode == 'deny' then
  if redis.call('ZREM', pending_key, user) == 0 then return {'not_pending', ''} end
  if mode == 'deny' then return {'denied', ''} end
end
redis.call('ZREM', pending_key, user)
redis.call('ZADD', members_key, now, user)
return {'joined', owner}
