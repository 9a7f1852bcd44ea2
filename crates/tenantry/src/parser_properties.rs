//! Property tests over the parsers that face the network: the Host header, tenant slugs and API
//! keys. None may panic on any input, and none may accept anything outside its grammar.

use crate::auth::api_key::{KeyCheck, NewKey, PresentedKey, KEY_LEN};
use crate::resolve::subdomain::from_host;
use crate::Slug;
use proptest::prelude::*;

fn check() -> KeyCheck {
    KeyCheck::new(b"the property tests' deployment secret")
}

/// The slug grammar, written independently of the parser under test.
fn grammar(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    (2..=63).contains(&chars.len())
        && chars[0].is_ascii_lowercase()
        && chars[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
}

proptest! {
    #[test]
    fn slug_parser_matches_the_grammar(s in "\\PC{0,80}") {
        prop_assert_eq!(Slug::parse(&s).is_ok(), grammar(&s));
    }

    #[test]
    fn slug_like_strings(s in "[a-z0-9_A-Z.-]{0,70}") {
        prop_assert_eq!(Slug::parse(&s).is_ok(), grammar(&s));
    }

    #[test]
    fn host_parser_never_panics_and_yields_only_slugs(host in "\\PC{0,100}") {
        if let Ok(Some(t)) = from_host(&host, "localhost", &["www".to_owned()]) {
            prop_assert!(grammar(t.as_str()));
        }
    }

    #[test]
    fn host_parser_on_host_like_input(label in "[a-zA-Z0-9_.-]{0,70}", port in proptest::option::of(0u32..70000)) {
        let host = match port {
            Some(p) => format!("{label}.localhost:{p}"),
            None => format!("{label}.localhost"),
        };
        match from_host(&host, "localhost", &[]) {
            Ok(Some(t)) => {
                prop_assert!(grammar(t.as_str()));
                prop_assert_eq!(t.as_str(), label.to_ascii_lowercase());
            }
            Ok(None) => {}
            Err(_) => prop_assert!(!grammar(&label.to_ascii_lowercase())),
        }
    }

    #[test]
    fn key_parser_never_panics(s in "\\PC{0,120}") {
        if let Ok(k) = PresentedKey::parse(&s, &check()) {
            prop_assert_eq!(s.len(), KEY_LEN);
            prop_assert!(s.starts_with("tk_"));
            prop_assert_eq!(k.prefix().len(), 12);
        }
    }

    #[test]
    fn any_single_character_change_to_a_key_is_caught(pos in 0usize..KEY_LEN, c in "[0-9A-Za-z_]") {
        let k = NewKey::generate(&check());
        let mut bytes = k.key.clone().into_bytes();
        let c = c.as_bytes()[0];
        prop_assume!(bytes[pos] != c);
        bytes[pos] = c;
        let typo = String::from_utf8(bytes).unwrap();
        // Either the format or the checksum refuses it; a typo never reaches a lookup.
        prop_assert!(PresentedKey::parse(&typo, &check()).is_err());
    }
}
