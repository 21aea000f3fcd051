-- Jobs.claim (jobs.py): take the job for one step if the message's token is current, and bump it.
-- KEYS: job hash, watch. ARGV: token, watch deadline, ref, lease prefix, lease expiry, holder,
-- claim id (new for each claim), the step's deadline ms.
-- The same claim sent again (its reply was lost when Redis restarted, and redis-py retried the
-- call) finds the token already bumped by itself: it gets the job again, not a refusal, or the job
-- would stay busy with a live holder and no step working on it.
-- Returns the job's fields, or false for a stale token. Runs after renew.lua.
local step = redis.call('HGET', KEYS[1], 'step')
if not step then return false end
if step == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'step', 1)
  redis.call('HSET', KEYS[1], 'busy', '1', 'holder', ARGV[6], 'claim', ARGV[7], 'busy_until', ARGV[8])
elseif not (tonumber(step) == tonumber(ARGV[1]) + 1 and redis.call('HGET', KEYS[1], 'claim') == ARGV[7]) then
  return false
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
renew(KEYS[1], ARGV[4], ARGV[5], ARGV[3])
return redis.call('HGETALL', KEYS[1])
