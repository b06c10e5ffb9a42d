-- One chunk of an upload in progress, on the file's two keys: checked against the
-- declared size (every chunk full but the last) and stored, and the upload's lifetime
-- starts again. Returns 1 stored, 0 no such upload (expired, aborted, or already
-- finishing), -1 index out of range, -2 wrong length for that index.
local meta_key, data_key = KEYS[1], KEYS[2]
local field, chunk = ARGV[1], ARGV[2]
local index, chunk_bytes, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[3]), ARGV[4]

local meta = redis.call('HMGET', meta_key, 'state', 'size', 'chunks')
if meta[1] ~= 'uploading' then return 0 end
local size, chunks = tonumber(meta[2]), tonumber(meta[3])
if not index or index < 0 or index >= chunks then return -1 end
local want = chunk_bytes
if index == chunks - 1 then want = size - (chunks - 1) * chunk_bytes end
if #chunk ~= want then return -2 end
redis.call('HSET', data_key, field, chunk)
redis.call('PEXPIRE', meta_key, ttl_ms)
redis.call('PEXPIRE', data_key, ttl_ms)
return 1
