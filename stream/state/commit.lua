-- One atomic commit of a batch: compare-and-set on the offsets, then the clusterer delta.
-- KEYS[1] meta hash (n_docs, version, dim), KEYS[2] offsets hash, KEYS[3] clusters hash
-- ARGV: n_docs_in_batch, half_life ('' = no decay), dim, n_moves,
--       n_moves x (field, expected, new), m, m x cluster id, records blob,
--       n_merges, n_merges x (src, dst), n_removed, n_removed x id
-- A record (stored or delta) is '<ddddd' weight, count, last_t, created_t, label, then dim
-- float32. The arithmetic is stream.clustering.base.apply_delta's, step for step; a test
-- holds the two together.
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
local head = 40
local size = head + 4 * dim
local vfmt = '<' .. string.rep('f', dim)

local function decay(lt)
  if hl then return 0.5 ^ (math.max(t - lt, 0) / hl) end
  return 1.0
end

-- 1. touched rows
local m = tonumber(ARGV[i])
local ids_at = i + 1
local blob = ARGV[ids_at + m]
for j = 0, m - 1 do
  local id = ARGV[ids_at + j]
  local rec = string.sub(blob, j * size + 1, (j + 1) * size)
  local dw, dc, _, _, dl = struct.unpack('<ddddd', rec)
  local cur = redis.call('HGET', KEYS[3], id)
  local out
  if cur then
    local w, c, lt, ct = struct.unpack('<dddd', cur)
    local f = decay(lt)
    local v = {struct.unpack(vfmt, cur, head + 1)}
    local dv = {struct.unpack(vfmt, rec, head + 1)}
    for q = 1, dim do v[q] = v[q] * f + dv[q] end
    out = struct.pack('<ddddd', w * f + dw, c + dc, t, ct, dl) .. struct.pack(vfmt, unpack(v, 1, dim))
  else
    out = struct.pack('<ddddd', dw, dc, t, t, dl) .. string.sub(rec, head + 1)
  end
  redis.call('HSET', KEYS[3], id, out)
end

-- 2. merges: dst absorbs src; rows labelled src take dst's label
local k = ids_at + m + 1
local n_merges = tonumber(ARGV[k] or '0')
k = k + 1
for _ = 1, n_merges do
  local src, dst = ARGV[k], ARGV[k + 1]
  k = k + 2
  local a = redis.call('HGET', KEYS[3], src)
  local b = redis.call('HGET', KEYS[3], dst)
  if a and b and src ~= dst then
    local wa, ca, lta, cta = struct.unpack('<dddd', a)
    local wb, cb, ltb, ctb, lb = struct.unpack('<ddddd', b)
    local fa, fb = decay(lta), decay(ltb)
    local va = {struct.unpack(vfmt, a, head + 1)}
    local vb = {struct.unpack(vfmt, b, head + 1)}
    for q = 1, dim do vb[q] = vb[q] * fb + va[q] * fa end
    redis.call('HSET', KEYS[3], dst, struct.pack('<ddddd', wb * fb + wa * fa, cb + ca, t,
      math.min(cta, ctb), lb) .. struct.pack(vfmt, unpack(vb, 1, dim)))
    redis.call('HDEL', KEYS[3], src)
    local srcl = tonumber(src)
    local all = redis.call('HGETALL', KEYS[3])
    for p = 1, #all, 2 do
      local rec = all[p + 1]
      local w, c, lt, ct, l = struct.unpack('<ddddd', rec)
      if l == srcl then
        redis.call('HSET', KEYS[3], all[p], struct.pack('<ddddd', w, c, lt, ct, lb) ..
          string.sub(rec, head + 1))
      end
    end
  end
end

-- 3. removals
local n_removed = tonumber(ARGV[k] or '0')
k = k + 1
for _ = 1, n_removed do
  redis.call('HDEL', KEYS[3], ARGV[k])
  k = k + 1
end

i = 5
for _ = 1, n_moves do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  i = i + 3
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
return {'ok', version, t}
