-- Budget.reserve (budget.py): hold a submit's price if spent + reserved + price stays within budget.
-- KEYS: budget hash. ARGV: price. Returns 1 when reserved.
local budget = redis.call('HGET', KEYS[1], 'budget')
local price = tonumber(ARGV[1])
if budget then
  local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
  if spent + reserved + price > tonumber(budget) + 1e-9 then return 0 end
end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', price)
return 1
