//! The GCRA limiter in Redis: one atomic Lua script per decision, on the Redis server's clock
//! (`TIME`), so every node shares one bucket per tenant and node clocks do not matter. The same
//! script counts the request in the tenant's usage for the current fixed window.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{Decision, Quota, Usage};
use crate::tenant::TenantId;

/// KEYS[1] bucket, KEYS[2] usage hash. ARGV: interval µs, tolerance µs, window s.
/// Returns {allowed, remaining, reset µs, retry µs, window start s}.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local start = math.floor(tonumber(t[1]) / window) * window
local usage = KEYS[2] .. ':' .. start
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local diff = new_tat - now
if diff > tolerance then
  redis.call('HINCRBY', usage, 'limited', 1)
  redis.call('EXPIRE', usage, window * 2)
  return {0, 0, tat - now, new_tat - tolerance - now, start}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor(diff / 1000) + 1)
redis.call('HINCRBY', usage, 'allowed', 1)
redis.call('EXPIRE', usage, window * 2)
return {1, math.floor((tolerance - diff) / interval), diff, 0, start}
"#;

/// A Redis-backed limiter. Cheap to clone.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    /// Key namespace (the deployment's role prefix), so deployments can share a Redis.
    namespace: String,
}

/// Removes every key matching `pattern` (a tenant's own, so `SCAN` in batches rather than one
/// `KEYS` that would block Redis).
pub(crate) async fn unlink_matching(
    conn: &mut ConnectionManager,
    pattern: &str,
) -> Result<(), redis::RedisError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

impl RedisLimiter {
    /// Connects lazily: a Redis that is down at start-up is a fallback, not a start failure.
    /// Operations time out quickly so a hung Redis costs a request milliseconds, not seconds.
    pub fn new(url: &str, namespace: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(100)))
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            script: Script::new(SCRIPT),
            namespace: namespace.to_owned(),
        })
    }

    fn keys(&self, tenant: &TenantId, quota: &Quota) -> (String, String) {
        (
            format!(
                "{}:rl:{tenant}:{}:{}:{}",
                self.namespace,
                quota.requests,
                quota.window.as_secs(),
                quota.burst
            ),
            format!("{}:usage:{tenant}", self.namespace),
        )
    }

    pub async fn check(
        &self,
        tenant: &TenantId,
        quota: &Quota,
    ) -> Result<Decision, redis::RedisError> {
        let (bucket, usage) = self.keys(tenant, quota);
        let mut conn = self.conn.clone();
        let interval_us = (quota.interval_nanos() / 1000).max(1);
        let tolerance_us = quota.tolerance_nanos() / 1000;
        let window = quota.window.as_secs().max(1);
        let r: Vec<i64> = self
            .script
            .key(&bucket)
            .key(&usage)
            .arg(interval_us)
            .arg(tolerance_us)
            .arg(window)
            .invoke_async(&mut conn)
            .await?;
        let us = |v: i64| (v.max(0) as u64).div_ceil(1_000_000);
        Ok(Decision {
            allowed: r.first() == Some(&1),
            limit: quota.requests.max(1),
            window_secs: quota.window.as_secs(),
            remaining: r.get(1).copied().unwrap_or(0).max(0) as u32,
            reset_secs: us(r.get(2).copied().unwrap_or(0)),
            retry_after_secs: if r.first() == Some(&1) {
                0
            } else {
                us(r.get(3).copied().unwrap_or(0)).max(1)
            },
        })
    }

    /// Deletes every bucket and usage window of a tenant (its deletion). Keys are found with
    /// `SCAN` over the tenant's own pattern, so other tenants' keys are never touched.
    pub async fn forget(&self, tenant: &TenantId) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        for pattern in [
            format!("{}:rl:{tenant}:*", self.namespace),
            format!("{}:usage:{tenant}:*", self.namespace),
        ] {
            unlink_matching(&mut conn, &pattern).await?;
        }
        Ok(())
    }

    pub async fn usage(
        &self,
        tenant: &TenantId,
        quota: &Quota,
    ) -> Result<Usage, redis::RedisError> {
        let (_, usage) = self.keys(tenant, quota);
        let mut conn = self.conn.clone();
        let window = quota.window.as_secs().max(1);
        let now: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let start = now.0 / window * window;
        let (allowed, limited): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(format!("{usage}:{start}"))
            .arg("allowed")
            .arg("limited")
            .query_async(&mut conn)
            .await?;
        Ok(Usage {
            window_start: start as i64,
            window_seconds: window,
            allowed: allowed.unwrap_or(0),
            limited: limited.unwrap_or(0),
        })
    }
}
