//! The Redis key schema (docs/PRESENCE.md) and the Lua scripts that keep
//! each device's entry consistent. Every script but the `_MANY` ones touches
//! exactly one key, so it runs unchanged on Redis Cluster; the `_MANY` ones
//! apply the same script to many devices in one call, on a single Redis
//! only (device keys of a cluster live in different slots).

/// Device entry: HASH { node, sid, since, epoch }.
pub fn device(device_id: &str) -> String {
    format!("miop:dev:{device_id}")
}

/// Node lease: STRING (the node's incarnation) with a TTL, refreshed on a timer.
pub fn lease(node: &str) -> String {
    format!("miop:node:{{{node}}}:lease")
}

/// Devices this node has written as online: SET, for cleanup and reconciliation.
pub fn node_devices(node: &str) -> String {
    format!("miop:node:{{{node}}}:devices")
}

/// Claim on cleaning a dead node's entries (SET NX with a TTL).
pub fn cleanup_claim(node: &str) -> String {
    format!("miop:node:{{{node}}}:cleanup")
}

/// Every node that has ever written presence: SET of node ids.
pub const NODES: &str = "miop:nodes";

/// Sharded pub/sub channel on which a node hears "your session was replaced".
pub fn kick_channel(node: &str) -> String {
    format!("miop:kick:{{{node}}}")
}

/// Sharded pub/sub channel carrying pushes for devices held by `node`
/// (same hash tag as its kick channel: one slot, one subscription).
pub fn push_channel(node: &str) -> String {
    format!("miop:push:{{{node}}}")
}

/// Pub/sub channel every node subscribes to: topic pushes and broadcasts.
pub const FANOUT: &str = "miop:push:all";

/// Messages kept for an offline device: LIST of JSON entries, oldest first,
/// bounded; the list expires some time after its longest-lived message.
pub fn offline(device_id: &str) -> String {
    format!("miop:offline:{device_id}")
}

/// Appends an offline message, keeps the newest ARGV[2], and extends the
/// list's expiry to ARGV[3] ms if that is longer. KEYS[1] = offline key;
/// ARGV = entry, max entries, ttl ms. Returns the list length.
pub const STORE_OFFLINE: &str = r#"
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return redis.call('LLEN', KEYS[1])
"#;

/// Removes delivered (or expired) offline messages, each by its exact entry
/// (`LREM 1`): the list is read with `LRANGE` and only what was delivered is
/// removed afterwards, so a reply lost to a timeout or a reconnect loses no
/// message (it is delivered again: at-least-once), and entries appended
/// meanwhile stay. KEYS[1] = offline key; ARGV = entries. Returns how many
/// were removed.
pub const REMOVE_OFFLINE: &str = r#"
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
return n
"#;

/// Marks the device online on this node unless a later bind (by bind time) on
/// another node holds it; this node's own entry is always replaced (its device
/// index is the truth for its sessions, whatever its clock did). Returns
/// `{won, previous node, previous session}`.
/// KEYS[1] = device key; ARGV = node, session tag, since (unix ms).
pub const ONLINE: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'node', 'sid', 'since')
if cur[1] and cur[1] ~= ARGV[1] and cur[3] and tonumber(cur[3]) > tonumber(ARGV[3]) then
  return {0, cur[1], cur[2]}
end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'sid', ARGV[2], 'since', ARGV[3])
return {1, cur[1] or '', cur[2] or ''}
"#;

/// [`ONLINE`] for each of many devices, in one call. KEYS = device keys;
/// ARGV = node, then a session tag and a since (unix ms) per key, in the
/// keys' order. Returns `{won, previous node, previous session}` per key,
/// flattened.
pub const ONLINE_MANY: &str = r#"
local node = ARGV[1]
local out = {}
for i = 1, #KEYS do
  local sid, since = ARGV[2 * i], ARGV[2 * i + 1]
  local cur = redis.call('HMGET', KEYS[i], 'node', 'sid', 'since')
  if cur[1] and cur[1] ~= node and cur[3] and tonumber(cur[3]) > tonumber(since) then
    out[#out + 1] = 0
  else
    redis.call('HINCRBY', KEYS[i], 'epoch', 1)
    redis.call('HSET', KEYS[i], 'node', node, 'sid', sid, 'since', since)
    out[#out + 1] = 1
  end
  out[#out + 1] = cur[1] or ''
  out[#out + 1] = cur[2] or ''
end
return out
"#;

/// [`PURGE`] for each of many devices, in one call. KEYS = device keys;
/// ARGV = node. Returns how many entries were removed.
pub const PURGE_MANY: &str = r#"
local n = 0
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'node') == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
"#;

/// Removes the entry if the given node holds it, whatever the session: used
/// when that node does not hold the device now (its index is the truth), and
/// for dead nodes. A bind on another node is never removed. KEYS[1] = device
/// key; ARGV = node.
pub const PURGE: &str = r#"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;
