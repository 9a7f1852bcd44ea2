//! The subdomain hint: `acme.<base domain>` names tenant `acme`.
//!
//! Only the `Host` header (or, for HTTP/2, the URI authority) is read. `X-Forwarded-Host` is
//! ignored: any client can send it, so believing it would let a request claim any subdomain.

use http::request::Parts;

use super::ResolveError;
use crate::tenant::TenantId;

const WHAT: &str = "subdomain";

/// The tenant named by the host, if the host is a subdomain of `base`.
pub fn hint(
    parts: &Parts,
    base: &str,
    ignored: &[String],
) -> Result<Option<TenantId>, ResolveError> {
    let host = match parts.headers.get(http::header::HOST) {
        Some(v) => v
            .to_str()
            .map_err(|_| ResolveError::BadHeader("the Host header is not valid text"))?,
        None => match parts.uri.host() {
            Some(h) => h,
            None => return Ok(None),
        },
    };
    from_host(host, base, ignored)
}

/// Parses a `Host` value against the base domain.
pub fn from_host(
    host: &str,
    base: &str,
    ignored: &[String],
) -> Result<Option<TenantId>, ResolveError> {
    if !host.is_ascii() {
        return Err(ResolveError::BadHeader("the Host header is not ASCII"));
    }
    let host = strip_port(host);
    if host.len() <= base.len() + 1 {
        return Ok(None);
    }
    let (label, rest) = host.split_at(host.len() - base.len() - 1);
    if !rest.starts_with('.') || !rest[1..].eq_ignore_ascii_case(base) {
        return Ok(None);
    }
    let label = label.to_ascii_lowercase();
    if ignored.iter().any(|i| i.eq_ignore_ascii_case(&label)) {
        return Ok(None);
    }
    TenantId::parse(&label)
        .map(Some)
        .map_err(|_| ResolveError::InvalidTenant(WHAT))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal is never a tenant subdomain.
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(host: &str) -> Result<Option<String>, ResolveError> {
        from_host(host, "localhost", &["www".to_owned()]).map(|o| o.map(|t| t.to_string()))
    }

    #[test]
    fn cases() {
        assert_eq!(h("acme.localhost:8080"), Ok(Some("acme".into())));
        assert_eq!(h("ACME.localhost"), Ok(Some("acme".into())));
        assert_eq!(h("localhost:8080"), Ok(None));
        assert_eq!(h("127.0.0.1:8080"), Ok(None));
        assert_eq!(h("www.localhost"), Ok(None));
        assert_eq!(h("acme.example.com"), Ok(None));
        assert_eq!(h("evillocalhost"), Ok(None));
        assert_eq!(h("[::1]:8080"), Ok(None));
        assert_eq!(h("a.b.localhost"), Err(ResolveError::InvalidTenant(WHAT)));
        assert_eq!(h("a_b.localhost"), Err(ResolveError::InvalidTenant(WHAT)));
        assert_eq!(h(".localhost"), Ok(None));
    }
}
