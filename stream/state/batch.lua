-- What both commit scripts (commit.lua, write_rows.lua) do the same way; the store puts it
-- in front of each when it registers them (Redis scripts cannot include one another).
-- KEYS[1] meta hash, KEYS[2] offsets hash; ARGV[4] n_moves, then from ARGV[5] n_moves x
-- (field, expected, new).

-- The compare-and-set on the offsets (the fencing): nil when every partition stands where
-- the batch began, else the refusal to return. Reads only.
local function refused_move()
  local i = 5
  for _ = 1, tonumber(ARGV[4]) do
    local found = redis.call('HGET', KEYS[2], ARGV[i]) or '-1'
    if found ~= ARGV[i + 1] then
      return {'rejected', ARGV[i], found}
    end
    i = i + 3
  end
  return nil
end

-- nil when the model takes vectors of width dim (or has none yet), else the refusal.
local function refused_dim(dim)
  local stored_dim = redis.call('HGET', KEYS[1], 'dim')
  if stored_dim and tonumber(stored_dim) ~= dim then
    return {'bad_dim', stored_dim}
  end
  return nil
end

-- The batch's documents on the clock, which it returns (the stream time of the batch).
local function count_docs(n, dim)
  local t = redis.call('HINCRBY', KEYS[1], 'n_docs', n)
  redis.call('HSET', KEYS[1], 'dim', dim)
  return t
end

-- The last writes of a commit: the offsets move, the version counts it; a new model gets
-- its epoch (see write_rows.lua). Returns the new version.
local function finish()
  local i = 5
  for _ = 1, tonumber(ARGV[4]) do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    i = i + 3
  end
  local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
  if version == 1 then
    local now = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'epoch', now[1] .. '.' .. now[2])
  end
  return version
end

