-- Jobs.update and Jobs.handoff (jobs.py): write job fields if the step still holds the token.
-- KEYS: job hash, watch. ARGV: held token, watch deadline ('' = keep), ref, lease prefix, lease
-- expiry, then field/value pairs. Returns 1 written, 0 fenced off. Runs after renew.lua.
if redis.call('HGET', KEYS[1], 'step') ~= ARGV[1] then return 0 end
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  renew(KEYS[1], ARGV[4], ARGV[5], ARGV[3])
end
return 1
