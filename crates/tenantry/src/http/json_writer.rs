//! JSON response bodies that a type writes itself, for the resources on the hot path.
//!
//! serde_json escapes every string byte by byte through its generic `Serializer`, which for an
//! order (two uuids, two timestamps, seven keys) costs more than the rest of the handler. Most
//! of those bytes cannot need escaping (keys are literals,
//! uuids are hex, timestamps are digits), so [`Object`] writes them straight into the buffer
//! and escapes only free text, with serde_json's exact escapes. A type that implements
//! [`WriteJson`] keeps its `Serialize` derive as the reference: its tests compare the two
//! outputs byte for byte.

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A type that writes its own JSON (see the module docs).
pub trait WriteJson {
    /// Appends this value's JSON to `out`.
    fn write_json(&self, out: &mut Vec<u8>);

    /// A size hint for the response buffer.
    fn json_len_hint(&self) -> usize {
        256
    }
}

/// A response whose body is `T`'s own JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written<T>(pub T);

impl<T: WriteJson> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        let mut out = Vec::with_capacity(self.0.json_len_hint());
        self.0.write_json(&mut out);
        super::json::typed_body(out.into(), "application/json")
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }

    fn json_len_hint(&self) -> usize {
        2 + self
            .first()
            .map_or(0, |f| (f.json_len_hint() + 1) * self.len())
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out)
    }

    fn json_len_hint(&self) -> usize {
        self.as_slice().json_len_hint()
    }
}

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, self)
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        string(out, self)
    }
}

impl WriteJson for Uuid {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = self.hyphenated().encode_lower(&mut buf);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

impl WriteJson for i64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
    }
}

impl WriteJson for DateTime<Utc> {
    fn write_json(&self, out: &mut Vec<u8>) {
        super::rfc3339::write_json(self, out)
    }
}

/// Writes one JSON object: `Object::new(out).field("id", &id).field(...).end()`.
#[must_use = "end() closes the object"]
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// One member. The key is a literal written as is, so it must not need escaping.
    pub fn field<V: WriteJson + ?Sized>(mut self, key: &'static str, value: &V) -> Self {
        debug_assert!(!key.bytes().any(needs_escape), "key {key:?} needs escaping");
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        value.write_json(self.out);
        self
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Declares a struct and its [`WriteJson`] from one field list, so the written JSON and the
/// struct cannot disagree on fields: every field is written, in order, under its Rust name
/// (what serde's derive writes without renames). Attributes (`derive`s, serde's, docs) pass
/// through to the struct.
///
/// ```
/// tenantry::json_object! {
///     #[derive(serde::Serialize)]
///     pub struct Note {
///         pub id: uuid::Uuid,
///         pub body: String,
///     }
/// }
/// let mut out = Vec::new();
/// tenantry::http::WriteJson::write_json(&Note { id: uuid::Uuid::nil(), body: "hi".into() }, &mut out);
/// assert_eq!(out, br#"{"id":"00000000-0000-0000-0000-000000000000","body":"hi"}"#);
/// ```
#[macro_export]
macro_rules! json_object {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty ),*
        }

        impl $crate::http::WriteJson for $name {
            fn write_json(&self, out: &mut ::std::vec::Vec<u8>) {
                $crate::http::Object::new(out)
                    $( .field(::core::stringify!($field), &self.$field) )*
                    .end()
            }
        }
    };
}

/// The bytes serde_json escapes: control characters, `"` and `\`.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A JSON string with serde_json's escapes (`\b \t \n \f \r \" \\`, other control characters
/// as `\u00xx`), copying the runs between escapes whole.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;

    fn written<T: WriteJson + ?Sized>(v: &T) -> String {
        let mut out = Vec::new();
        v.write_json(&mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[derive(Serialize)]
    struct Sample {
        id: Uuid,
        n: i64,
        text: String,
        #[serde(serialize_with = "crate::http::serialize_timestamp")]
        at: DateTime<Utc>,
        maybe: Option<String>,
        list: Vec<String>,
    }

    impl WriteJson for Sample {
        fn write_json(&self, out: &mut Vec<u8>) {
            Object::new(out)
                .field("id", &self.id)
                .field("n", &self.n)
                .field("text", &self.text)
                .field("at", &self.at)
                .field("maybe", &self.maybe)
                .field("list", &self.list)
                .end()
        }
    }

    proptest! {
        #[test]
        fn strings_escape_as_serde_json_does(s in any::<String>()) {
            prop_assert_eq!(written(s.as_str()), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn objects_match_their_serde_derive(
            id in any::<u128>(),
            n in any::<i64>(),
            text in "(?s).{0,40}",
            secs in -63_000_000_000i64..260_000_000_000,
            nanos in prop_oneof![Just(0u32), 0..1_000_000_000u32, (0..1000u32).prop_map(|m| m * 1_000_000)],
            maybe in proptest::option::of("[\\x00-\\x7f]{0,8}"),
            list in proptest::collection::vec(".{0,5}", 0..4),
        ) {
            let at = Utc.timestamp_opt(secs, nanos).single().expect("in range");
            let v = Sample { id: Uuid::from_u128(id), n, text, at, maybe, list };
            prop_assert_eq!(written(&v), serde_json::to_string(&v).unwrap());
        }
    }

    #[test]
    fn control_characters_and_quotes() {
        let s = "a\"b\\c\u{0}\u{1f}\n\r\t\u{8}\u{c}\u{7f}é";
        assert_eq!(written(s), serde_json::to_string(s).unwrap());
        assert_eq!(written(&Vec::<Uuid>::new()), "[]");
        assert_eq!(written(&None::<String>), "null");
    }

    #[test]
    fn a_written_response_is_json_with_its_content_type() {
        let res = Written(vec![Uuid::nil()]).into_response();
        assert_eq!(res.status(), http::StatusCode::OK);
        assert_eq!(res.headers().len(), 1);
        assert_eq!(
            res.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
    }
}
