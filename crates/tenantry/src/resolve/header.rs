//! The `X-Tenant-Id` hint. Every occurrence of the header is a hint and must agree.

use http::HeaderMap;

use super::{HintSource, ResolveError};
use crate::tenant::TenantId;

/// The header name.
pub const X_TENANT_ID: &str = "x-tenant-id";

pub fn hints(
    headers: &HeaderMap,
    out: &mut Vec<(HintSource, TenantId)>,
) -> Result<(), ResolveError> {
    for v in headers.get_all(X_TENANT_ID) {
        let s = v
            .to_str()
            .map_err(|_| ResolveError::InvalidTenant("X-Tenant-Id header"))?;
        let t = TenantId::parse(s.trim())
            .map_err(|_| ResolveError::InvalidTenant("X-Tenant-Id header"))?;
        out.push((HintSource::Header, t));
    }
    Ok(())
}
