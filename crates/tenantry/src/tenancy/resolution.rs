//! Resolution: from a request's credential and hints to a tenant, by the rules in
//! [`crate::resolve`], then [admission](super::admission).

use super::admission::is_safe;
use super::*;

impl Tenancy {
    /// Resolves a request to a tenant context, applying every rule in [`crate::resolve`].
    ///
    /// A client address that has failed to authenticate too often is refused before its
    /// credential is verified ([`crate::ratelimit::AuthFailures`]).
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
            .tenant_named(&slug, ResolveError::InvalidCredentials)
            .await?;
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
            .tenant_named(&slug, ResolveError::UnknownTenant)
            .await?;
        self.admit(tenant, Principal::Public, &parts.method).await
    }

    /// The tenant that holds `slug` now (from the catalog's cache); `missing` when none does.
    async fn tenant_named(
        &self,
        slug: &Slug,
        missing: ResolveError,
    ) -> Result<Arc<Tenant>, ResolveError> {
        self.inner
            .catalog
            .tenant(slug)
            .await
            .map_err(|_| ResolveError::Unavailable)?
            .ok_or(missing)
    }
}

/// What a credential proves of its tenant beyond the slug.
enum Proof {
    /// An API key belongs to this tenant id.
    Id(TenantId),
    /// A token was issued at this time (seconds since the epoch).
    IssuedAt(i64),
}
