-- Give back the quota a send took when the send itself was refused (no such
-- reply_to, not a member) or failed, so a rejected send uses no quota.
local quota_key, cid_key = KEYS[1], KEYS[2]
local used = tonumber(redis.call('GET', quota_key) or '0') or 0
if used > 0 then redis.call('DECR', quota_key) end
redis.call('DEL', cid_key)
return used
