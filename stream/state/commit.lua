-- One atomic commit of a batch: compare-and-set on the offsets, then the clusterer delta.
-- KEYS[1] meta hash (n_docs, version, dim), KEYS[2] offsets hash, KEYS[3] clusters hash,
-- KEYS[4] topics hash (cluster id or 'all' -> JSON card)
-- ARGV: n_docs_in_batch, half_life ('' = no decay), dim, n_moves,
--       n_moves x (field, expected, new), m, m x cluster id, records blob,
--       n_merges, n_merges x (src, dst), n_removed, n_removed x id,
--       topic delta JSON ('' = none), keyword_capacity, vocabulary_capacity, n_exemplars,
--       alpha, max_gap_buckets
-- A record (stored or delta) is '<ddddd' weight, count, last_t, created_t, label, then dim
-- float32. The arithmetic is stream.clustering.base.apply_delta's, then
-- stream.topics.apply_topic_delta's, step for step; tests hold them together.
-- Runs after batch.lua (refused_move, refused_dim, count_docs, finish).
local n = tonumber(ARGV[1])
local hl = tonumber(ARGV[2])
local dim = tonumber(ARGV[3])
local refusal = refused_move() or refused_dim(dim)
if refusal then return refusal end
local t = count_docs(n, dim)
local i = 5 + 3 * tonumber(ARGV[4])
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

-- 4. topic cards: stream.topics.apply_topic_delta
local topics_json = ARGV[k]
if topics_json and topics_json ~= '' then
  local cap, vcap = tonumber(ARGV[k + 1]), tonumber(ARGV[k + 2])
  local nex, alpha, maxgap = tonumber(ARGV[k + 3]), tonumber(ARGV[k + 4]), tonumber(ARGV[k + 5])
  local td = cjson.decode(topics_json)

  local function scaled(terms, f)
    local out = {}
    for key, v in pairs(terms) do out[key] = v * f end
    return out
  end

  -- (terms decayed by f) + extra, then the `limit` heaviest (ties: the smaller term); as
  -- stream.topics.add_terms, the weights alone are sorted: the drop-th smallest is the cut
  local function add_terms(terms, f, extra, limit)
    local out = scaled(terms, f)
    for key, v in pairs(extra) do out[key] = (out[key] or 0) + v end
    local vals, n = {}, 0
    for _, v in pairs(out) do
      n = n + 1
      vals[n] = v
    end
    local drop = n - limit
    if drop <= 0 then return out end
    table.sort(vals)
    local cut, below, tied = vals[drop], 0, {}
    for key, v in pairs(out) do
      if v < cut then
        out[key] = nil  -- clearing a field during the traversal is allowed
        below = below + 1
      elseif v == cut then
        tied[#tied + 1] = key
      end
    end
    table.sort(tied)
    for q = #tied - (drop - below) + 1, #tied do out[tied[q]] = nil end
    return out
  end

  local function best(a, b)
    local seen, order = {}, {}
    for _, src in ipairs({a, b}) do
      for _, e in ipairs(src) do
        local cur = seen[e[3]]
        if not cur then order[#order + 1] = e[3] end
        if not cur or e[1] > cur[1] then seen[e[3]] = e end
      end
    end
    local list = {}
    for _, text in ipairs(order) do list[#list + 1] = seen[text] end
    table.sort(list, function(x, y)
      if x[1] ~= y[1] then return x[1] > y[1] end
      return x[2] < y[2]
    end)
    local out = {}
    for q = 1, math.min(nex, #list) do out[q] = list[q] end
    return out
  end

  local function ewma(mean, var, x)
    local d = x - mean
    local inc = alpha * d
    return mean + inc, (1.0 - alpha) * (var + d * inc)
  end

  local function roll(c, bucket)
    if c.b < 0 then c.b, c.n = bucket, 0.0 return end
    if bucket <= c.b then return end
    c.m, c.v = ewma(c.m, c.v, c.n)
    for _ = 1, math.min(bucket - c.b - 1, maxgap) do c.m, c.v = ewma(c.m, c.v, 0.0) end
    c.b, c.n = bucket, 0.0
  end

  local function load(id)
    local raw = redis.call('HGET', KEYS[4], id)
    if not raw then return nil end
    local c = cjson.decode(raw)
    if type(c.x) ~= 'table' then c.x = {} end
    return c
  end

  local all = load('all') or {w = {}, t = 0}
  all.w = add_terms(all.w, decay(all.t), td.w, vcap)
  all.t = t
  redis.call('HSET', KEYS[4], 'all', cjson.encode(all))

  -- alerted flag, first and last document time, size: the same for a card delta and a card
  local function absorb_counts(c, d)
    if d.a == 1 then c.a = 1 end
    c.f = math.min(c.f, d.f)
    c.l = math.max(c.l, d.l)
    c.s = c.s + d.s
  end

  local cards = {}
  for id, d in pairs(td.c) do
    local c = load(id)
    if not c then
      c = {w = {}, t = t, x = {}, b = -1, n = 0.0, m = 0.0, v = 0.0, a = 0, f = d.f, l = d.l, s = 0}
    end
    c.w = add_terms(c.w, decay(c.t), d.w, cap)
    c.t = t
    c.x = best(c.x, d.x)
    for _, bc in ipairs(d.b) do
      roll(c, bc[1])
      c.n = c.n + bc[2]
    end
    absorb_counts(c, d)
    cards[id] = c
  end

  local function card(id)
    if cards[id] == nil then cards[id] = load(id) or false end
    return cards[id] or nil
  end

  for _, pair in ipairs(td.m) do
    local src, dst = tostring(pair[1]), tostring(pair[2])
    local a, b = card(src), card(dst)
    if src ~= dst and a and b then
      b.w = add_terms(b.w, decay(b.t), scaled(a.w, decay(a.t)), cap)
      b.t = t
      b.x = best(b.x, a.x)
      if a.b >= 0 then
        local top = math.max(a.b, b.b)
        roll(b, top)
        roll(a, top)
        b.n = b.n + a.n
        b.m = b.m + a.m
        b.v = b.v + a.v
      end
      absorb_counts(b, a)
      cards[src] = false
    end
  end
  for _, id in ipairs(td.r) do cards[tostring(id)] = false end

  for id, c in pairs(cards) do
    if c then
      redis.call('HSET', KEYS[4], id, cjson.encode(c))
    else
      redis.call('HDEL', KEYS[4], id)
    end
  end
end

return {'ok', finish(), t}
