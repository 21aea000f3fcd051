-- set_demand (demand.py): make the demand list's length the number asked, in one atomic step:
-- LLEN, then grow with RPUSH in chunks or shrink with LTRIM (DEL at 0).
-- KEYS: the demand list. ARGV: the length wanted. Returns it.
local want = tonumber(ARGV[1])
local have = redis.call('LLEN', KEYS[1])
if want == 0 then
  redis.call('DEL', KEYS[1])
elseif want < have then
  redis.call('LTRIM', KEYS[1], 0, want - 1)
else
  while have < want do
    local n = math.min(want - have, 1000)
    local items = {}
    for i = 1, n do items[i] = '1' end
    redis.call('RPUSH', KEYS[1], unpack(items))
    have = have + n
  end
end
return want
