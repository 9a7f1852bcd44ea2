//! The path hint: `/v1/tenants/acme/...` names tenant `acme`.

use super::ResolveError;
use crate::tenant::Slug;

/// The tenant named by the segment after `prefix`, if the path starts with it.
pub(crate) fn hint(path: &str, prefix: &str) -> Result<Option<Slug>, ResolveError> {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Ok(None);
    };
    let segment = rest.split('/').next().unwrap_or_default();
    Slug::parse(segment)
        .map(Some)
        .map_err(|_| ResolveError::InvalidTenant("path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        let p = "/v1/tenants/";
        assert_eq!(
            hint("/v1/tenants/acme/orders", p)
                .unwrap()
                .unwrap()
                .as_str(),
            "acme"
        );
        assert_eq!(
            hint("/v1/tenants/acme", p).unwrap().unwrap().as_str(),
            "acme"
        );
        assert!(hint("/v1/orders", p).unwrap().is_none());
        assert!(hint("/v1/tenant", p).unwrap().is_none());
        assert!(hint("/v1/tenants/ACME/orders", p).is_err());
        assert!(hint("/v1/tenants/%61cme/orders", p).is_err());
        assert!(hint("/v1/tenants//orders", p).is_err());
    }
}
