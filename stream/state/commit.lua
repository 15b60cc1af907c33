-- One atomic commit of a batch: compare-and-set on the offsets, then the clusterer delta.
-- KEYS[1] meta hash (n_docs, version, dim), KEYS[2] offsets hash, KEYS[3] clusters hash
-- ARGV: n_docs_in_batch, half_life ('' = no decay), dim, n_moves,
--       n_moves x (field, expected, new), m, m x cluster id, records blob
-- A record (stored or delta) is '<dddd' weight, count, last_t, created_t, then dim float32.
-- The arithmetic is stream.clustering.base.apply_delta's; a test holds the two together.
local n = tonumber(ARGV[1])
local hl = tonumber(ARGV[2])
local dim = tonumber(ARGV[3])
local n_moves = tonumber(ARGV[4])
local i = 5
for _ = 1, n_moves do
  local found = redis.call('HGET', KEYS[2], ARGV[i]) or '-1'
  if found ~= ARGV[i + 1] then
    return {'rejected', ARGV[i], found}
  end
  i = i + 3
end
local stored_dim = redis.call('HGET', KEYS[1], 'dim')
if stored_dim and tonumber(stored_dim) ~= dim then
  return {'bad_dim', stored_dim}
end
local t = redis.call('HINCRBY', KEYS[1], 'n_docs', n)
redis.call('HSET', KEYS[1], 'dim', dim)
local m = tonumber(ARGV[i])
local ids_at = i + 1
local blob = ARGV[ids_at + m]
local size = 32 + 4 * dim
local vfmt = '<' .. string.rep('f', dim)
for j = 0, m - 1 do
  local id = ARGV[ids_at + j]
  local rec = string.sub(blob, j * size + 1, (j + 1) * size)
  local dw, dc = struct.unpack('<dd', rec)
  local cur = redis.call('HGET', KEYS[3], id)
  local out
  if cur then
    local w, c, lt, ct = struct.unpack('<dddd', cur)
    local f = 1.0
    if hl then f = 0.5 ^ ((t - lt) / hl) end
    local v = {struct.unpack(vfmt, cur, 33)}
    local dv = {struct.unpack(vfmt, rec, 33)}
    for q = 1, dim do v[q] = v[q] * f + dv[q] end
    out = struct.pack('<dddd', w * f + dw, c + dc, t, ct) .. struct.pack(vfmt, unpack(v, 1, dim))
  else
    out = struct.pack('<dddd', dw, dc, t, t) .. string.sub(rec, 33)
  end
  redis.call('HSET', KEYS[3], id, out)
end
i = 5
for _ = 1, n_moves do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  i = i + 3
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
return {'ok', version, t}
