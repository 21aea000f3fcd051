-- reserve(budget key, price): hold a submit's price if spent + reserved + price stays within the
-- run's budget (none set: always). Returns 1 reserved, 0 not. Not a script of its own: jobs.py puts
-- it before submitting.lua, so that the reservation and the job's write before its POST are one.
local function reserve(bk, price)
  local budget = redis.call('HGET', bk, 'budget')
  local p = tonumber(price)
  if budget then
    local spent = tonumber(redis.call('HGET', bk, 'spent') or '0')
    local reserved = tonumber(redis.call('HGET', bk, 'reserved') or '0')
    if spent + reserved + p > tonumber(budget) + 1e-9 then return 0 end
  end
  redis.call('HINCRBYFLOAT', bk, 'reserved', p)
  return 1
end
