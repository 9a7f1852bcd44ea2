//! The `X-Tenant-Id` hint. Every occurrence of the header is a hint and must agree.

use http::HeaderMap;

use super::{HintSource, ResolveError};
use crate::tenant::Slug;

/// The header name.
pub const X_TENANT_ID: &str = "x-tenant-id";

pub(crate) fn hints(
    headers: &HeaderMap,
    out: &mut Vec<(HintSource, Slug)>,
) -> Result<(), ResolveError> {
    // By `HeaderName`: a `&str` name is parsed and lower-cased on every lookup.
    static NAME: http::HeaderName = http::HeaderName::from_static(X_TENANT_ID);
    for v in headers.get_all(&NAME) {
        let s = v
            .to_str()
            .map_err(|_| ResolveError::InvalidTenant("X-Tenant-Id header"))?;
        let t =
            Slug::parse(s.trim()).map_err(|_| ResolveError::InvalidTenant("X-Tenant-Id header"))?;
        out.push((HintSource::Header, t));
    }
    Ok(())
}
