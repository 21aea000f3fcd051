-- RunStore.record (runs.py): write a row's final result if it has none yet, then count it.
-- KEYS: results hash, done counter, counts hash. ARGV: row, result JSON, status.
-- Returns the run's new done-count, or -1 when the row was final already.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return redis.call('INCR', KEYS[2])
