//! The subdomain hint: `acme.<base domain>` names tenant `acme`.
//!
//! The host is read from the `Host` header and from the request target's authority (HTTP/2's
//! `:authority`, or an HTTP/1.1 absolute-form target such as `GET http://acme.example.com/…`),
//! however it is spelled: case and one trailing dot (`ACME.example.com.`) do not change the
//! tenant. Each names a tenant hint of its own, and when both name one they must agree (a
//! request cannot show one tenant to a proxy and another to us). Two `Host` headers are refused
//! (RFC 9112: 400). `X-Forwarded-Host` is ignored here: any client can send it (see
//! [`super::proxy`] for trusted proxies).

use http::request::Parts;

use super::ResolveError;
use crate::tenant::Slug;

const WHAT: &str = "subdomain";

/// The tenant named by the host, if the host is a subdomain of `base`: the `Host` header's
/// (or `forwarded`, a trusted proxy's forwarded host, in its place) and the request target's.
pub(crate) fn hint(
    parts: &Parts,
    forwarded: Option<&str>,
    base: &str,
    ignored: &[String],
) -> Result<Option<Slug>, ResolveError> {
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ResolveError::BadHeader("more than one Host header"));
    }
    let header = match (forwarded, header) {
        (Some(f), _) => Some(f),
        (None, Some(v)) => Some(
            v.to_str()
                .map_err(|_| ResolveError::BadHeader("the Host header is not valid text"))?,
        ),
        (None, None) => None,
    };
    let from_header = header
        .map(|h| from_host(h, base, ignored))
        .transpose()?
        .flatten();
    let from_target = parts
        .uri
        .host()
        .map(|h| from_host(h, base, ignored))
        .transpose()?
        .flatten();
    match (from_header, from_target) {
        (Some(a), Some(b)) if a != b => Err(ResolveError::Mismatch("request target's host")),
        (a, b) => Ok(a.or(b)),
    }
}

/// Parses a `Host` value against the base domain.
pub(crate) fn from_host(
    host: &str,
    base: &str,
    ignored: &[String],
) -> Result<Option<Slug>, ResolveError> {
    if !host.is_ascii() {
        return Err(ResolveError::BadHeader("the Host header is not ASCII"));
    }
    let host = strip_port(host);
    // `acme.example.com.` is the same name, fully qualified.
    let host = host.strip_suffix('.').unwrap_or(host);
    let base = base.strip_suffix('.').unwrap_or(base);
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
    Slug::parse(&label)
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
        assert_eq!(h("acme.localhost."), Ok(Some("acme".into())));
        assert_eq!(h("acme.localhost.:8080"), Ok(Some("acme".into())));
        assert_eq!(h("localhost."), Ok(None));
        assert_eq!(h("acme.localhost.."), Ok(None));
    }
}
