-- Jobs.webhook_arrived (jobs.py): keep a webhook's result on the job it names and take a new token.
-- KEYS: job hash, watch. ARGV: task id, result JSON, ref, watch deadline.
-- Returns {token, slot id}, or false (another task's webhook, a duplicate, or not polling).
if redis.call('HGET', KEYS[1], 'bfl_task_id') ~= ARGV[1] then return false end
if redis.call('HGET', KEYS[1], 'state') ~= 'polling' then return false end
if redis.call('HEXISTS', KEYS[1], 'webhook_result') == 1 then return false end
local step = redis.call('HINCRBY', KEYS[1], 'step', 1)
redis.call('HSET', KEYS[1], 'webhook_result', ARGV[2], 'busy', '0', 'holder', '')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return {step, redis.call('HGET', KEYS[1], 'gate')}
