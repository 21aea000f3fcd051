-- DelayQueue.take_due (delays.py): take every due entry (once: ZREM in the same script), then
-- append the due time of the next one (or -1).
-- KEYS: the delay zset. ARGV: now ms, limit.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
due[#due + 1] = nxt[2] or '-1'
return due
