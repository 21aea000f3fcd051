-- where(): the node a script runs on, as {role, connected replicas, replication id}, so that a
-- write and the check of it (kontext_batch.coord.replicas) are known to be on the same node.
-- {'unknown', 0, ''} when the user may not run INFO.
local function where()
  local info = redis.pcall('INFO', 'replication')
  if type(info) ~= 'string' then return {'unknown', 0, ''} end
  return {
    string.match(info, 'role:(%a+)') or 'unknown',
    tonumber(string.match(info, 'connected_slaves:(%d+)') or '0'),
    string.match(info, 'master_replid:(%x+)') or '',
  }
end
