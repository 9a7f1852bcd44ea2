//! Field validation shared by the handlers. Each check appends to a list, so a client learns
//! every bad field at once.

use tenantry::http::FieldError;

pub const ROLES: &[&str] = &["admin", "member", "viewer"];
pub const ORDER_STATUSES: &[&str] = &["pending", "paid", "shipped", "cancelled", "refunded"];

/// Active ISO 4217 currency codes.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// The largest amount accepted (10^15 cents): far above any real order, far below i64 limits.
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000_000;

/// A plausible email (one `@`, non-empty local part, a dotted domain, at most 254 bytes, no
/// whitespace or control characters), normalised to lower case so uniqueness is
/// case-insensitive.
pub fn email(raw: &str, errors: &mut Vec<FieldError>) -> String {
    let e = raw.trim();
    let ok = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && match e.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if !ok {
        errors.push(FieldError::new("email", "must be a valid email address"));
    }
    e.to_lowercase()
}

/// A display name: 1..=200 characters, no control characters.
pub fn name(field: &str, v: &str, errors: &mut Vec<FieldError>) {
    let n = v.chars().count();
    if v.trim().is_empty() || n > 200 || v.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "must be 1 to 200 characters without control characters",
        ));
    }
}

pub fn one_of(field: &str, v: &str, allowed: &[&str], errors: &mut Vec<FieldError>) {
    if !allowed.contains(&v) {
        errors.push(FieldError::new(
            field,
            format!("must be one of: {}", allowed.join(", ")),
        ));
    }
}

pub fn amount(v: i64, errors: &mut Vec<FieldError>) {
    if !(0..=MAX_AMOUNT_CENTS).contains(&v) {
        errors.push(FieldError::new(
            "amount_cents",
            format!("must be between 0 and {MAX_AMOUNT_CENTS}"),
        ));
    }
}

pub fn currency(v: &str, errors: &mut Vec<FieldError>) {
    if !CURRENCIES.contains(&v) {
        errors.push(FieldError::new(
            "currency",
            "must be an active ISO 4217 code in upper case (e.g. USD, EUR)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        let mut e = Vec::new();
        assert_eq!(email(" A@Example.com ", &mut e), "a@example.com");
        assert!(e.is_empty());
        for bad in [
            "",
            "a",
            "a@b",
            "@b.c",
            "a@@b.c",
            "a b@c.d",
            "a@.c",
            "a@c.",
            "a@b\u{0}.c",
        ] {
            let mut e = Vec::new();
            email(bad, &mut e);
            assert_eq!(e.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn currencies_are_sorted_and_unique() {
        let mut v = CURRENCIES.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), CURRENCIES.len());
        assert!(CURRENCIES.contains(&"USD"));
    }
}
