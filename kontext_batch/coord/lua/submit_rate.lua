-- SubmitRateLimiter.acquire (ratelimit.py): count one submit in this second's window.
-- KEYS: the window's counter ("{ns}:submit-rate:{second}"), which expires 2 s after its first count.
-- Returns the count so far.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], 2000) end
return n
