-- Jobs.claim_expired (jobs.py): the watch entries past their deadline. A busy job of a live holder
-- (its proc key exists) whose step is within its own deadline (busy_until; a job claimed by an
-- older release has none) has its watch and leases extended; any other gets a new token, to re-drive.
-- KEYS: watch. ARGV: now, hold ms, job prefix, limit, proc prefix, lease prefix, lease ms.
-- Returns (ref, token, state, slot id, pool id, why) per job to re-drive, flat; why is "deadline"
-- for a step past its deadline, "gone" for a watch entry whose job hash is missing (its row final,
-- or the hash lost from Redis: the caller tells which), else "". Runs after renew.lua.
local now = tonumber(ARGV[1])
local refs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, ref in ipairs(refs) do
  local jk = ARGV[3] .. ref
  if redis.call('EXISTS', jk) == 0 then
    redis.call('ZREM', KEYS[1], ref)
    for _, v in ipairs({ref, 0, '', '', '', 'gone'}) do out[#out + 1] = v end
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ref)
    local holder = redis.call('HGET', jk, 'holder') or ''
    local busy = redis.call('HGET', jk, 'busy') == '1' and holder ~= ''
    local live = busy and redis.call('EXISTS', ARGV[5] .. holder) == 1
    local until_ms = tonumber(redis.call('HGET', jk, 'busy_until') or '')
    local late = live and until_ms ~= nil and now >= until_ms
    if live and not late then
      renew(jk, ARGV[6], now + tonumber(ARGV[7]), ref)
    else
      local step = redis.call('HINCRBY', jk, 'step', 1)
      out[#out + 1] = ref
      out[#out + 1] = step
      out[#out + 1] = redis.call('HGET', jk, 'state') or ''
      out[#out + 1] = redis.call('HGET', jk, 'gate') or ''
      out[#out + 1] = redis.call('HGET', jk, 'pool') or ''
      out[#out + 1] = late and 'deadline' or ''
      redis.call('HSET', jk, 'busy', '0', 'holder', '')
    end
  end
end
return out
