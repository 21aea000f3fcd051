-- Slots.dispatch (slots.py): hand free slots of the candidate keys to waiting rows, in turn, oldest
-- row first. A grant starts its job too (token, state, slot id and pool on the job hash; a watch
-- entry), in this same script, so a slot and its job's first token are never seen apart.
-- KEYS: wait list, watch. ARGV: now, lease ms, limit, job prefix, lease prefix, endpoint, pool id,
-- watch deadline, then a slot to free first as (ref, fp, endpoint) or ('', '', ''), then
-- (fp, endpoint cap, total cap) per candidate key. Returns (ref, token, fp) per grant, flat.
local now = tonumber(ARGV[1])
local lease_exp = now + tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local jp, lp, ep, pool, deadline = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if ARGV[9] ~= '' then
  redis.call('ZREM', lp .. ARGV[10], ARGV[9])
  redis.call('ZREM', lp .. ARGV[10] .. ':' .. ARGV[11], ARGV[9])
end
local fps, room = {}, {}
local nk = (#ARGV - 11) / 3
for i = 1, nk do
  local fp = ARGV[9 + 3 * i]
  local kt, ke = lp .. fp, lp .. fp .. ':' .. ep
  redis.call('ZREMRANGEBYSCORE', kt, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', ke, '-inf', now)
  fps[i] = fp
  room[i] = math.min(tonumber(ARGV[11 + 3 * i]) - redis.call('ZCARD', kt),
                     tonumber(ARGV[10 + 3 * i]) - redis.call('ZCARD', ke))
end
local out, granted, progress = {}, 0, true
while progress and granted < limit do
  progress = false
  for i = 1, nk do
    if room[i] > 0 and granted < limit then
      local ref = redis.call('LPOP', KEYS[1])
      if not ref then return out end
      local fp = fps[i]
      redis.call('ZADD', lp .. fp, lease_exp, ref)
      redis.call('ZADD', lp .. fp .. ':' .. ep, lease_exp, ref)
      redis.call('ZADD', KEYS[2], deadline, ref)
      local jk = jp .. ref
      local step = redis.call('HINCRBY', jk, 'step', 1)
      redis.call('HSET', jk, 'state', 'granted', 'gate', fp .. '|' .. ep, 'pool', pool, 'busy', '0', 'holder', '')
      out[#out + 1] = ref
      out[#out + 1] = step
      out[#out + 1] = fp
      room[i] = room[i] - 1
      granted = granted + 1
      progress = true
    end
  end
end
return out
