-- Slots.remove_run_from_wait (slots.py): take one run's refs out of a wait list in one pass; the
-- other refs keep their order. KEYS: wait list. ARGV: the run's ref prefix ("{run}:").
-- Returns the removed refs.
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local keep, removed = {}, {}
local n = string.len(ARGV[1])
for _, ref in ipairs(all) do
  if string.sub(ref, 1, n) == ARGV[1] then removed[#removed + 1] = ref else keep[#keep + 1] = ref end
end
if #removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 5000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 4999, #keep)))
  end
end
return removed
