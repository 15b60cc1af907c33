-- One atomic commit of a batch whose rows were computed by the worker: compare-and-set on
-- the offsets, then on the model's stamp, then plain writes (no arithmetic here). Runs
-- after batch.lua (refused_move, refused_dim, count_docs, finish).
-- KEYS[1] meta hash, KEYS[2] offsets hash, KEYS[3] clusters hash, KEYS[4] topics hash
-- ARGV: expected stamp ('<version>/<epoch>' of meta: see below), n_docs_in_batch, dim,
--       n_moves, n_moves x (field, expected, new), m, m x cluster id, records blob (m
--       records, stream.state.redis_store.record_dtype), n_gone, n_gone x cluster id,
--       all-clusters card JSON ('' = topics unchanged), n_cards, n_cards x (cluster id,
--       card JSON), n_gone_cards, n_gone_cards x cluster id
-- Returns {'rejected', field, found} (another worker moved a partition: nothing written),
-- {'stale', stamp} (the model moved past the version the rows were computed from, or was
-- replaced: nothing written; send the delta through commit.lua instead), {'bad_dim', dim}
-- or {'ok', version, n_docs, epoch}. The epoch is set when a model is created (by either
-- script, or by an import), so a model deleted and grown again to the same version does
-- not pass for the one the rows were computed from.
local refusal = refused_move()
if refusal then return refusal end
local stamp = (redis.call('HGET', KEYS[1], 'version') or '0') .. '/' ..
  (redis.call('HGET', KEYS[1], 'epoch') or '')
if stamp ~= ARGV[1] then
  return {'stale', stamp}
end
local dim = tonumber(ARGV[3])
refusal = refused_dim(dim)
if refusal then return refusal end
local t = count_docs(tonumber(ARGV[2]), dim)
local i = 5 + 3 * tonumber(ARGV[4])

local size = 40 + 4 * dim
local m = tonumber(ARGV[i])
local ids_at = i + 1
local blob = ARGV[ids_at + m]
for j = 0, m - 1 do
  redis.call('HSET', KEYS[3], ARGV[ids_at + j], string.sub(blob, j * size + 1, (j + 1) * size))
end
local k = ids_at + m + 1
local n_gone = tonumber(ARGV[k])
k = k + 1
for _ = 1, n_gone do
  redis.call('HDEL', KEYS[3], ARGV[k])
  k = k + 1
end

if ARGV[k] ~= '' then
  redis.call('HSET', KEYS[4], 'all', ARGV[k])
end
k = k + 1
local n_cards = tonumber(ARGV[k])
k = k + 1
for _ = 1, n_cards do
  redis.call('HSET', KEYS[4], ARGV[k], ARGV[k + 1])
  k = k + 2
end
local n_gone_cards = tonumber(ARGV[k])
k = k + 1
for _ = 1, n_gone_cards do
  redis.call('HDEL', KEYS[4], ARGV[k])
  k = k + 1
end

local version = finish()
return {'ok', version, t, redis.call('HGET', KEYS[1], 'epoch') or ''}
