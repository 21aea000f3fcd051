-- Jobs.submitting (jobs.py): the job's write before its POST, fenced by the held token, and the
-- submit's price reserved in its run's budget, in one script (runs after reserve.lua and where.lua).
-- KEYS: job hash, budget hash. ARGV: held token, price, then field/value pairs.
-- Returns {1, where()...} written and reserved (and the node that took it), {0} fenced off,
-- {-1} over budget (neither writes anything).
if redis.call('HGET', KEYS[1], 'step') ~= ARGV[1] then return {0} end
if reserve(KEYS[2], ARGV[2]) == 0 then return {-1} end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local node = where()
return {1, node[1], node[2], node[3]}
