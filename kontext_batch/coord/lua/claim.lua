-- Jobs.claim (jobs.py): take the job for one step if the message's token is current, and bump it.
-- KEYS: job hash, watch. ARGV: token, watch deadline, ref, lease prefix, lease expiry, holder.
-- Returns the job's fields, or false for a stale token. Runs after renew.lua.
local step = redis.call('HGET', KEYS[1], 'step')
if not step or step ~= ARGV[1] then return false end
redis.call('HINCRBY', KEYS[1], 'step', 1)
redis.call('HSET', KEYS[1], 'busy', '1', 'holder', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
renew(KEYS[1], ARGV[4], ARGV[5], ARGV[3])
return redis.call('HGETALL', KEYS[1])
