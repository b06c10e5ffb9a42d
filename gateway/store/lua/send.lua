-- One message, one atomic step on one conversation's keys: check the sender may
-- write here (a room's member), dedupe by client id, check the replied-to message,
-- number it, append (marked if it was scheduled, with its file if it carries one),
-- trim now and then, count it in its thread, remember the client id, log it in the
-- sender's log (on a single Redis; on a cluster that key is in another slot: logged
-- after), publish.
-- Returns {1, id} stored, {0, id} a retry of a stored message, {-1, ''} no such
-- reply_to, {-2, ''} not a member of the room.
local stream, cid_key, seq_key = KEYS[1], KEYS[2], KEYS[3]
local members_key, replies_key, thread_key = KEYS[4], KEYS[5], KEYS[6]
local log_key = KEYS[7]
local from, to, text, reply_to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cid_ttl_s, has_cid = ARGV[5], ARGV[6] == '1'
local min_id, max_len, json_tail = ARGV[7], ARGV[8], ARGV[9]
local member, ttl_ms, re_from, re_text = ARGV[10], tonumber(ARGV[11]), ARGV[12], ARGV[13]
local scheduled = ARGV[14] == '1'
local file = ARGV[15]  -- the file's JSON object, '' for a text message
local log_max_len = ARGV[16]  -- '' when the sender's log is written after this step
local first_channel = 17

if member ~= '' and not redis.call('ZSCORE', members_key, member) then
  return {-2, ''}
end
if has_cid then
  local seen = redis.call('GET', cid_key)
  if seen then return {0, seen} end
end
if reply_to ~= '' and #redis.call('XRANGE', stream, reply_to, reply_to) == 0 then
  return {-1, ''}
end
-- n numbers the conversation's messages, so unread counts are a subtraction.
local n = redis.call('INCR', seq_key)
local fields = {'from', from, 'to', to, 'text', text, 'n', n}
if reply_to ~= '' then
  for _, v in ipairs({'reply_to', reply_to, 're_from', re_from, 're_text', re_text}) do
    fields[#fields + 1] = v
  end
end
if scheduled then
  fields[#fields + 1] = 'sched'
  fields[#fields + 1] = '1'
end
if file ~= '' then
  fields[#fields + 1] = 'file'
  fields[#fields + 1] = file
end
local id = redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', unpack(fields))
if reply_to ~= '' then
  -- Threads: a count per message and the list of its replies, beside the stream
  -- (never rewritten); they live as long as the messages do.
  redis.call('HINCRBY', replies_key, reply_to, 1)
  redis.call('RPUSH', thread_key, id)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', replies_key, ttl_ms)
    redis.call('PEXPIRE', thread_key, ttl_ms)
  end
end
-- Expired entries go every 16th message (reads skip them meanwhile; the worker
-- trims quiet conversations).
if min_id ~= '' and n % 16 == 0 then redis.call('XTRIM', stream, 'MINID', '~', min_id) end
if has_cid then redis.call('SET', cid_key, id, 'EX', cid_ttl_s) end
if log_max_len ~= '' then
  local entry = {'id', id, 'to', to, 'text', text}
  if reply_to ~= '' then
    entry[#entry + 1] = 'reply_to'
    entry[#entry + 1] = reply_to
  end
  if file ~= '' then
    entry[#entry + 1] = 'file'
    entry[#entry + 1] = file
  end
  redis.call('XADD', log_key, 'MAXLEN', '~', log_max_len, '*', unpack(entry))
end
local payload = '{"type":"message","id":"' .. id .. '","ts":' ..
  string.match(id, '^(%d+)') .. json_tail
for i = first_channel, #ARGV do redis.call('PUBLISH', ARGV[i], payload) end
return {1, id}
