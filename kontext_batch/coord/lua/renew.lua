-- renew(job key, lease prefix, expiry ms, ref): extend the job's leases, read from its slot id (the
-- job hash's field "gate"). XX: a released lease is never re-created. Not a script of its own:
-- jobs.py puts it before claim.lua, update.lua and claim_expired.lua.
local function renew(jk, lp, exp, ref)
  local gate = redis.call('HGET', jk, 'gate')
  if gate then
    local fp, ep = string.match(gate, '^([^|]*)|(.*)$')
    redis.call('ZADD', lp .. fp, 'XX', exp, ref)
    redis.call('ZADD', lp .. fp .. ':' .. ep, 'XX', exp, ref)
  end
end
