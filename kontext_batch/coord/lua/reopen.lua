-- RunStore.reopen (runs.py): forget a row's result if its status is one of those given (retry).
-- KEYS: results hash, done counter, counts hash. ARGV: row, then the statuses.
-- Returns 1 when forgotten.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local st = cjson.decode(old)['status']
local wanted = false
for i = 2, #ARGV do if ARGV[i] == st then wanted = true end end
if not wanted then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], st, -1)
redis.call('DECR', KEYS[2])
return 1
