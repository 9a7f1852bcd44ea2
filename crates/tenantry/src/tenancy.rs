//! [`Tenancy`]: the library's entry point, tying the catalog, the resolution rules, the plans and
//! the rate limiter together. One per process, cheap to clone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::request::Parts;
use http::Method;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::auth::api_key::PresentedKey;
use crate::auth::jwt::JwtVerifier;
use crate::auth::{Principal, Scope};
use crate::catalog::Catalog;
use crate::context::TenantContext;
use crate::db::DbError;
use crate::plan::Plans;
use crate::ratelimit::auth_failures::{AuthFailures, FailureLimit};
use crate::ratelimit::concurrency::TenantSemaphores;
use crate::ratelimit::redis::RedisLimiter;
use crate::ratelimit::{FailMode, Limiter};
use crate::resolve::credential::{self, Credential};
use crate::resolve::{self, CredentialSource, ResolveError, ResolverConfig};
use crate::tenant::{Slug, StorageState, Tenant, TenantId, TenantStatus};

/// Settings for [`Tenancy`].
#[derive(Clone, Default)]
pub struct TenancyConfig {
    pub resolver: ResolverConfig,
    pub plans: Plans,
    /// JWT verification; `None` turns JWT credentials off.
    pub jwt: Option<JwtVerifier>,
    /// Shared rate limits across nodes; `None` keeps them per node.
    pub redis: Option<RedisLimiter>,
    /// What to do when Redis is down.
    pub fail_mode: FailMode,
    /// How long a request over its tenant's concurrency cap waits before 429.
    pub concurrency_wait: Duration,
    /// Failed authentications a client address may make ([`crate::ratelimit::auth_failures`]).
    pub auth_failures: FailureLimit,
}

/// Why an admin context could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminContextError {
    #[error("no such tenant")]
    TenantNotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The tenancy machinery for one process.
#[derive(Clone)]
pub struct Tenancy {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    limiter: Limiter,
    in_flight: TenantSemaphores,
    auth_failures: AuthFailures,
    config: TenancyConfig,
    /// Keys used since the last flush, with when: `last_used_at` is written in batches, never
    /// once per request.
    key_usage: Mutex<crate::FastMap<Uuid, DateTime<Utc>>>,
}

impl Tenancy {
    pub fn new(catalog: Catalog, config: TenancyConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                limiter: Limiter::new(config.redis.clone(), config.fail_mode),
                in_flight: TenantSemaphores::new(),
                auth_failures: AuthFailures::new(config.auth_failures),
                config,
                key_usage: Mutex::default(),
            }),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn plans(&self) -> &Plans {
        &self.inner.config.plans
    }

    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// Requests in flight per tenant.
    pub fn in_flight(&self) -> &TenantSemaphores {
        &self.inner.in_flight
    }

    /// Periodic housekeeping: forget idle limiter and semaphore state.
    pub fn sweep(&self) {
        self.inner.limiter.local().sweep();
        self.inner.in_flight.sweep();
        self.inner.auth_failures.sweep();
        self.inner.catalog.database().sweep_shares();
    }

    /// Forgets what this node and Redis hold for a deleted tenant: its limiter buckets and
    /// usage, its in-flight and connection-share state. (Other nodes hold theirs under the
    /// deleted tenant's id, which no tenant is given again, until their sweep drops them.)
    pub async fn forget_tenant(&self, id: &TenantId) {
        self.inner.limiter.forget(id).await;
        self.inner.in_flight.forget(id);
        self.inner.catalog.database().connection_shares().forget(id);
    }

    /// Resolves a request to a tenant context, applying every rule in [`crate::resolve`].
    ///
    /// A client address that has failed to authenticate too often is refused before its
    /// credential is verified ([`crate::ratelimit::auth_failures`]).
    pub async fn resolve(&self, parts: &Parts) -> Result<TenantContext, ResolveError> {
        let failures = &self.inner.auth_failures;
        let client =
            || resolve::proxy::client_addr(parts, &self.inner.config.resolver.trusted_proxies);
        if failures.any() {
            if let Some(retry_after_secs) = client().and_then(|ip| failures.blocked(ip)) {
                return Err(ResolveError::TooManyFailures { retry_after_secs });
            }
        }
        let r = self.resolve_credentialed(parts).await;
        if let (Err(ResolveError::InvalidCredentials), Some(ip)) = (&r, client()) {
            failures.record(ip);
        }
        r
    }

    async fn resolve_credentialed(&self, parts: &Parts) -> Result<TenantContext, ResolveError> {
        let hints = resolve::hints(parts, &self.inner.config.resolver)?;
        let cred =
            credential::from_headers(&parts.headers)?.ok_or(ResolveError::Unauthenticated)?;
        let accepts = |c| self.inner.config.resolver.credentials.contains(&c);
        // What the credential proves of the tenant beyond its slug: a key's tenant id, or
        // when a token was issued.
        let (slug, proof, principal) = match cred {
            Credential::ApiKey(text) if accepts(CredentialSource::ApiKey) => {
                let (slug, id, principal) = self.verify_key(text).await?;
                (slug, Proof::Id(id), principal)
            }
            Credential::Bearer(token) if accepts(CredentialSource::Jwt) => {
                let verifier = self
                    .inner
                    .config
                    .jwt
                    .as_ref()
                    .ok_or(ResolveError::InvalidCredentials)?;
                let id = verifier.verify(token).map_err(|e| {
                    tracing::debug!(error = %e, "JWT refused");
                    ResolveError::InvalidCredentials
                })?;
                (
                    id.tenant,
                    Proof::IssuedAt(id.issued_at),
                    Principal::Jwt {
                        subject: id.subject,
                        read_only: id.read_only,
                    },
                )
            }
            _ => return Err(ResolveError::InvalidCredentials),
        };
        resolve::check_hints(&hints, &slug)?;
        let tenant = self
            .inner
            .catalog
            .tenant(&slug)
            .await
            .map_err(|_| ResolveError::Unavailable)?
            .ok_or(ResolveError::InvalidCredentials)?;
        // The tenant that holds the slug now must be the one the credential was issued for.
        let same = match proof {
            Proof::Id(id) => tenant.id == id,
            Proof::IssuedAt(iat) => iat >= tenant.created_at.timestamp(),
        };
        if !same {
            return Err(ResolveError::InvalidCredentials);
        }
        self.admit(tenant, principal, &parts.method).await
    }

    async fn verify_key(&self, text: &str) -> Result<(Slug, TenantId, Principal), ResolveError> {
        let check = self.inner.catalog.database().key_check();
        let key = PresentedKey::parse_format(text).map_err(|_| ResolveError::InvalidCredentials)?;
        let rec = self
            .inner
            .catalog
            .key_if(key.prefix(), || key.checksum_ok(check))
            .await
            .map_err(|_| ResolveError::Unavailable)?
            .ok_or(ResolveError::InvalidCredentials)?;
        let now = Utc::now();
        if !key.matches(&rec.hash) || !rec.is_live(now) {
            return Err(ResolveError::InvalidCredentials);
        }
        let read_only = !rec.scopes.contains(&Scope::Write);
        lock(&self.inner.key_usage).insert(rec.id, now);
        Ok((
            rec.tenant.clone(),
            rec.tenant_id.clone(),
            Principal::ApiKey {
                id: rec.id,
                read_only,
            },
        ))
    }

    async fn admit(
        &self,
        tenant: Arc<Tenant>,
        principal: Principal,
        method: &Method,
    ) -> Result<TenantContext, ResolveError> {
        match tenant.storage_state {
            StorageState::Ready => {}
            // Still being created (or its creation crashed): never served.
            StorageState::Provisioning => return Err(ResolveError::Unavailable),
            // Being removed: its keys are already gone; anything left is refused.
            StorageState::Deleting => return Err(ResolveError::InvalidCredentials),
        }
        if tenant.status != TenantStatus::Active {
            return Err(ResolveError::Suspended);
        }
        if !is_safe(method) && !principal.can_write() {
            return Err(ResolveError::Forbidden("write"));
        }
        let limits = self.inner.config.plans.limits_for(&tenant);
        let decision = self
            .inner
            .limiter
            .check(&tenant.id, &limits.quota)
            .await
            .map_err(|_| ResolveError::Unavailable)?;
        if !decision.allowed {
            return Err(ResolveError::RateLimited {
                decision,
                policy: limits.quota.name,
                tenant: tenant.slug.clone(),
            });
        }
        let permit = self
            .inner
            .in_flight
            .acquire(
                &tenant.id,
                limits.max_concurrent as usize,
                self.inner.config.concurrency_wait,
            )
            .await
            .ok_or_else(|| ResolveError::TooManyInFlight {
                decision,
                policy: limits.quota.name.clone(),
                tenant: tenant.slug.clone(),
            })?;
        Ok(TenantContext::new(
            tenant,
            principal,
            self.inner.catalog.database().clone(),
            Some(decision),
            limits,
            Some(permit),
        ))
    }

    /// Resolves a request on a route an app opted into *public* access: the tenant comes from
    /// the subdomain alone, no credential is read, and only safe methods are allowed. Never the
    /// default: apps mount [`crate::http::TenancyLayer::public_by_subdomain`] on exactly the
    /// routes that want it.
    pub async fn resolve_public(&self, parts: &Parts) -> Result<TenantContext, ResolveError> {
        if !is_safe(&parts.method) {
            return Err(ResolveError::Forbidden("write on a public route"));
        }
        let slug = resolve::subdomain_hint(parts, &self.inner.config.resolver)?
            .ok_or(ResolveError::UnknownTenant)?;
        let tenant = self
            .inner
            .catalog
            .tenant(&slug)
            .await
            .map_err(|_| ResolveError::Unavailable)?
            .ok_or(ResolveError::UnknownTenant)?;
        self.admit(tenant, Principal::Public, &parts.method).await
    }

    /// Requests allowed and limited in the tenant's current window.
    pub async fn usage(&self, tenant: &Tenant) -> crate::ratelimit::Usage {
        let quota = self.inner.config.plans.quota_for(tenant);
        self.inner.limiter.usage(&tenant.id, &quota).await
    }

    /// Writes the batched `last_used_at` of keys used since the last flush (one statement).
    pub async fn flush_key_usage(&self) -> Result<usize, DbError> {
        let batch: Vec<(Uuid, DateTime<Utc>)> = lock(&self.inner.key_usage).drain().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) = batch.iter().cloned().unzip();
        let client = self.inner.catalog.database().control().get().await?;
        let r = client
            .execute(
                "UPDATE tenantry.api_keys k SET last_used_at = u.at
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
                 WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                &[&ids, &ats],
            )
            .await;
        if let Err(e) = r {
            // Put them back (keeping the newest time) so a later flush writes them.
            let mut pending = lock(&self.inner.key_usage);
            for (id, at) in batch {
                let e = pending.entry(id).or_insert(at);
                *e = (*e).max(at);
            }
            return Err(e.into());
        }
        Ok(ids.len())
    }

    /// Flushes key usage every `every` until dropped (and once more when asked to stop).
    pub async fn flush_key_usage_every(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = self.flush_key_usage().await {
                tracing::warn!(error = %e, "could not record API key usage; will retry");
            }
        }
    }

    /// The context a background job of tenant `id` runs in: the same scoped storage as a
    /// request. `None` when the tenant is gone, not ready or suspended. Jobs are keyed by id,
    /// so a job of a deleted tenant never runs in a later tenant that took its slug.
    pub(crate) async fn job_context(
        &self,
        id: &TenantId,
    ) -> Result<Option<TenantContext>, DbError> {
        let Some(tenant) = self.inner.catalog.tenant_by_id(id).await?.map(Arc::new) else {
            return Ok(None);
        };
        if tenant.storage_state != StorageState::Ready || tenant.status != TenantStatus::Active {
            return Ok(None);
        }
        let limits = self.inner.config.plans.limits_for(&tenant);
        Ok(Some(TenantContext::new(
            tenant,
            Principal::Job,
            self.inner.catalog.database().clone(),
            None,
            limits,
            None,
        )))
    }

    /// Opens a context for an operator acting inside `slug`, after writing the audit entry.
    /// There is no other way for an admin to reach tenant data, and no way without naming the
    /// tenant. The catalog is read directly (not the cache): admins see the truth.
    pub async fn admin_context(
        &self,
        slug: &Slug,
        actor: &Actor,
        action: &str,
        target: &str,
    ) -> Result<TenantContext, AdminContextError> {
        let tenant = self
            .inner
            .catalog
            .get_tenant(slug)
            .await?
            .filter(|t| t.storage_state == StorageState::Ready)
            .ok_or(AdminContextError::TenantNotFound)?;
        audit::record(
            self.inner.catalog.database(),
            actor,
            Some(slug),
            action,
            target,
        )
        .await?;
        let limits = self.inner.config.plans.limits_for(&tenant);
        Ok(TenantContext::new(
            Arc::new(tenant),
            Principal::Admin {
                token: actor.name.clone(),
            },
            self.inner.catalog.database().clone(),
            None,
            limits,
            None,
        ))
    }
}

/// What a credential proves of its tenant beyond the slug.
enum Proof {
    /// An API key belongs to this tenant id.
    Id(TenantId),
    /// A token was issued at this time (seconds since the epoch).
    IssuedAt(i64),
}

/// Methods that only read.
fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
