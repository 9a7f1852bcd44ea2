//! Plans and the limits they give a tenant: request quota, requests in flight, statement
//! timeout, job concurrency and share of the runtime connections. Admission
//! ([`crate::Tenancy`]) decides with them, and a [`crate::TenantContext`] carries them into the
//! tenant's transactions and jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ratelimit::Quota;
use crate::tenant::Tenant;

/// A plan's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Requests per window, sustained.
    pub requests: u32,
    pub window: Duration,
    /// The largest burst; `requests` (a whole window at once) by default.
    pub burst: Option<u32>,
    /// Requests in flight at once; excess waits briefly, then gets 429.
    pub max_concurrent: u32,
    /// Statement timeout inside the tenant's transactions.
    pub statement_timeout: Duration,
    /// Background jobs of the tenant run at once.
    pub job_concurrency: u32,
    /// The share (0..=1) of the runtime connection pool one tenant may hold.
    pub connection_share: f64,
}

impl Plan {
    /// A plan with the given rate and the defaults for everything else.
    pub fn per_hour(requests: u32) -> Self {
        Self {
            requests,
            window: Duration::from_secs(3600),
            burst: None,
            max_concurrent: 16,
            statement_timeout: Duration::from_secs(15),
            job_concurrency: 2,
            connection_share: 0.5,
        }
    }
}

/// The plans by name. `free`, `pro` and `enterprise` unless configured otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Plans(pub BTreeMap<String, Plan>);

impl Default for Plans {
    fn default() -> Self {
        let mut m = BTreeMap::new();
        m.insert(
            "free".to_owned(),
            Plan {
                max_concurrent: 4,
                statement_timeout: Duration::from_secs(5),
                job_concurrency: 1,
                connection_share: 0.25,
                ..Plan::per_hour(100)
            },
        );
        m.insert(
            "pro".to_owned(),
            Plan {
                max_concurrent: 16,
                statement_timeout: Duration::from_secs(15),
                job_concurrency: 4,
                connection_share: 0.5,
                ..Plan::per_hour(10_000)
            },
        );
        m.insert(
            "enterprise".to_owned(),
            Plan {
                max_concurrent: 64,
                statement_timeout: Duration::from_secs(30),
                job_concurrency: 8,
                connection_share: 0.75,
                ..Plan::per_hour(100_000)
            },
        );
        Plans(m)
    }
}

/// Everything that limits one tenant, resolved from its plan and override.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    pub quota: Quota,
    pub max_concurrent: u32,
    pub statement_timeout: Duration,
    pub job_concurrency: u32,
    pub connection_share: f64,
}

impl Plans {
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The plan of a tenant. A plan name that is no longer configured falls back to the most
    /// restrictive plan (fail closed, not open).
    fn plan_of(&self, tenant: &Tenant) -> Plan {
        if let Some(p) = self.0.get(&tenant.plan) {
            return p.clone();
        }
        tracing::warn!(plan = %tenant.plan, tenant = %tenant.slug, "unknown plan; using the most restrictive");
        self.0
            .values()
            .min_by(|a, b| {
                (a.requests as f64 / a.window.as_secs_f64())
                    .total_cmp(&(b.requests as f64 / b.window.as_secs_f64()))
            })
            .cloned()
            .unwrap_or(Plan {
                max_concurrent: 1,
                connection_share: 0.1,
                ..Plan::per_hour(1)
            })
    }

    /// The limits that apply to a tenant: its plan, with its rate override if any.
    pub fn limits_for(&self, tenant: &Tenant) -> TenantLimits {
        let plan = self.plan_of(tenant);
        let (requests, window, burst) = match tenant.rate_limit {
            Some(o) => (
                o.requests,
                Duration::from_secs(o.per_seconds.max(1) as u64),
                o.requests,
            ),
            None => (
                plan.requests,
                plan.window,
                plan.burst.unwrap_or(plan.requests),
            ),
        };
        TenantLimits {
            quota: Quota {
                name: tenant.plan.clone(),
                requests,
                window,
                burst,
            },
            max_concurrent: plan.max_concurrent,
            statement_timeout: plan.statement_timeout,
            job_concurrency: plan.job_concurrency,
            connection_share: plan.connection_share,
        }
    }

    /// The quota that applies to a tenant.
    pub fn quota_for(&self, tenant: &Tenant) -> Quota {
        self.limits_for(tenant).quota
    }
}
