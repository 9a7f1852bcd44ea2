//! Reading the credential from a request: `Authorization: Bearer …` or `X-Api-Key: …`.
//!
//! Ambiguity is refused rather than resolved: two `Authorization` headers, or an
//! `Authorization` and an `X-Api-Key` that differ, are 400, because picking one would let a
//! proxy and this server disagree about who is calling.

use http::HeaderMap;

use super::ResolveError;

/// The largest credential accepted; anything longer is refused before parsing.
pub(crate) const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// A credential as presented (not yet verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential<'a> {
    /// A `tk_…` key.
    ApiKey(&'a str),
    /// Any other bearer token (a JWT, when JWT auth is configured).
    Bearer(&'a str),
}

/// The request's credential, if any.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Credential<'_>>, ResolveError> {
    // Looked up by `HeaderName`: a `&str` name is parsed and lower-cased on every lookup.
    static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
    let auth = single(headers, &http::header::AUTHORIZATION, "Authorization")?;
    let api_key = single(headers, &X_API_KEY, "X-Api-Key")?;
    let bearer = match auth {
        None => None,
        Some(v) => {
            let (scheme, token) = v.split_once(' ').ok_or(ResolveError::InvalidCredentials)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(ResolveError::InvalidCredentials);
            }
            let token = token.trim();
            if token.is_empty() {
                return Err(ResolveError::InvalidCredentials);
            }
            Some(token)
        }
    };
    let token = match (bearer, api_key) {
        (Some(a), Some(b)) if a != b.trim() => {
            return Err(ResolveError::BadHeader(
                "Authorization and X-Api-Key carry different credentials",
            ))
        }
        (Some(a), _) => a,
        (None, Some(b)) => b.trim(),
        (None, None) => return Ok(None),
    };
    if token.len() > MAX_CREDENTIAL_LEN {
        return Err(ResolveError::InvalidCredentials);
    }
    Ok(Some(if token.starts_with("tk_") {
        Credential::ApiKey(token)
    } else {
        Credential::Bearer(token)
    }))
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
    display: &'static str,
) -> Result<Option<&'a str>, ResolveError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ResolveError::BadHeader(match display {
            "Authorization" => "more than one Authorization header",
            _ => "more than one X-Api-Key header",
        }));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ResolveError::BadHeader("a credential header is not valid text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn reads_and_refuses_ambiguity() {
        assert_eq!(from_headers(&map(&[])), Ok(None));
        assert_eq!(
            from_headers(&map(&[("authorization", "Bearer tk_x")])),
            Ok(Some(Credential::ApiKey("tk_x")))
        );
        assert_eq!(
            from_headers(&map(&[("x-api-key", "tk_y")])),
            Ok(Some(Credential::ApiKey("tk_y")))
        );
        assert_eq!(
            from_headers(&map(&[("authorization", "Bearer eyJ")])),
            Ok(Some(Credential::Bearer("eyJ")))
        );
        assert!(matches!(
            from_headers(&map(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ])),
            Err(ResolveError::BadHeader(_))
        ));
        assert!(matches!(
            from_headers(&map(&[
                ("authorization", "Bearer tk_a"),
                ("x-api-key", "tk_b")
            ])),
            Err(ResolveError::BadHeader(_))
        ));
        assert_eq!(
            from_headers(&map(&[("authorization", "Basic abc")])),
            Err(ResolveError::InvalidCredentials)
        );
        assert_eq!(
            from_headers(&map(&[("authorization", "Bearer ")])),
            Err(ResolveError::InvalidCredentials)
        );
    }
}
