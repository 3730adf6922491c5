//! Property tests for API v2: the parser never panics, serialisation round-trips,
//! signatures detect any change, `req_info` encryption round-trips.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use wxpay_shared::v2::{
    decrypt_req_info, encrypt_req_info, sign, verify, SignError, SignType, XmlFields,
};

/// Field maps as WeChat Pay would send them: `[a-z_]{1,20}` keys, any Unicode values
/// (including `]]>`, control characters, CR/LF).
fn field_map() -> impl Strategy<Value = XmlFields> {
    let value = prop_oneof![
        ".*",
        "[a-zA-Z0-9]{0,32}",
        Just("]]>".to_owned()),
        "(\\]\\]>|[<>&\\]]|x){0,12}",
        "[\\r\\n\\t x]{0,6}",
    ];
    btree_map("[a-z_]{1,20}", value, 0..24).prop_map(|m| {
        // Shuffle-free but not sorted by key: reverse order exercises sorting in sign().
        m.into_iter().rev().collect::<XmlFields>()
    })
}

/// Fragments that look like XML, to reach deeper into the parser than random bytes do.
fn xmlish() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("<xml>".to_owned()),
        Just("</xml>".to_owned()),
        Just("<root>".to_owned()),
        Just("</root>".to_owned()),
        Just("<a>".to_owned()),
        Just("</a>".to_owned()),
        Just("<b/>".to_owned()),
        Just("<![CDATA[".to_owned()),
        Just("]]>".to_owned()),
        Just("<!--".to_owned()),
        Just("-->".to_owned()),
        Just("<?xml version=\"1.0\"?>".to_owned()),
        Just("<!DOCTYPE x [<!ENTITY e \"v\">]>".to_owned()),
        Just("<!ENTITY".to_owned()),
        Just("&amp;".to_owned()),
        Just("&e;".to_owned()),
        Just("&#x4e2d;".to_owned()),
        Just("&#0;".to_owned()),
        Just("&".to_owned()),
        Just("<".to_owned()),
        Just(" x=\"1\"".to_owned()),
        Just("\u{feff}".to_owned()),
        "[ \\t\\r\\n]{0,3}",
        ".{0,6}",
    ];
    vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,40}", ".{0,40}"]
}

fn sign_type() -> impl Strategy<Value = SignType> {
    prop_oneof![Just(SignType::Md5), Just(SignType::HmacSha256)]
}

/// A signed payload with at least one non-empty value besides `sign`, with or without
/// `sign_type`.
fn signed() -> impl Strategy<Value = (XmlFields, String, SignType)> {
    (
        field_map(),
        "[a-z_]{1,20}",
        ".{1,20}",
        key(),
        sign_type(),
        any::<bool>(),
    )
        .prop_map(|(mut fields, k, v, key, t, declare)| {
            fields.remove("sign");
            fields.remove("sign_type");
            if declare {
                fields.insert("sign_type", t.as_str());
            }
            let k = if k.starts_with("sign") {
                format!("z{k}")
            } else {
                k
            };
            fields.insert(k, v);
            let s = sign(&fields, &key, t);
            fields.insert("sign", s);
            (fields, key, t)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_bytes(body in vec(any::<u8>(), 0..2048)) {
        let _ = XmlFields::parse(&body);
        let _ = XmlFields::parse_with_root(&body, "root");
    }

    #[test]
    fn parse_never_panics_on_xmlish(body in xmlish()) {
        let _ = XmlFields::parse(body.as_bytes());
        let _ = XmlFields::parse_with_root(body.as_bytes(), "root");
    }

    #[test]
    fn parse_never_panics_inside_a_root(inner in xmlish()) {
        let body = format!("<xml>{inner}</xml>");
        let _ = XmlFields::parse(body.as_bytes());
    }

    #[test]
    fn to_xml_round_trips(fields in field_map()) {
        prop_assert_eq!(XmlFields::parse(fields.to_xml().as_bytes()), Ok(fields.clone()));
        let as_root = fields.to_xml_with_root("root");
        prop_assert_eq!(XmlFields::parse_with_root(as_root.as_bytes(), "root"), Ok(fields));
    }

    #[test]
    fn sign_then_verify_round_trips((fields, key, t) in signed()) {
        prop_assert_eq!(verify(&fields, &key), Ok(t));
        // Through the wire format too.
        let parsed = XmlFields::parse(fields.to_xml().as_bytes());
        prop_assert!(parsed.is_ok());
        if let Ok(parsed) = parsed {
            prop_assert_eq!(verify(&parsed, &key), Ok(t));
        }
    }

    #[test]
    fn any_one_byte_change_in_a_value_fails(
        (fields, key, _t) in signed(),
        pick in any::<prop::sample::Index>(),
        byte_pick in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        // Change one byte of one non-empty value (other than sign), keeping valid UTF-8
        // by working on ASCII-only positions or replacing a whole char.
        let candidates: Vec<(String, String)> = fields
            .iter()
            .filter(|(k, v)| *k != "sign" && !v.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        prop_assume!(!candidates.is_empty());
        let (k, v) = pick.get(&candidates).clone();
        let mut bytes = v.into_bytes();
        let i = byte_pick.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        let tampered = String::from_utf8_lossy(&bytes).into_owned();
        prop_assume!(tampered != *fields.get(&k).unwrap_or_default());
        let mut changed = fields.clone();
        let tampered_sign_type = k == "sign_type";
        changed.insert(k, tampered);
        if tampered_sign_type {
            // Another method name is refused before any hashing.
            prop_assert!(matches!(
                verify(&changed, &key),
                Err(SignError::UnknownSignType(_) | SignError::Mismatch)
            ));
        } else {
            prop_assert_eq!(verify(&changed, &key), Err(SignError::Mismatch));
        }
    }

    #[test]
    fn any_one_byte_change_in_the_sign_fails(
        (fields, key, _t) in signed(),
        byte_pick in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let mut bytes = fields.get("sign").unwrap_or_default().as_bytes().to_vec();
        let i = byte_pick.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        let tampered = String::from_utf8_lossy(&bytes).into_owned();
        // A change of case only is the same signature (hex is case-insensitive).
        prop_assume!(!tampered.eq_ignore_ascii_case(fields.get("sign").unwrap_or_default()));
        let mut changed = fields.clone();
        changed.insert("sign", tampered);
        prop_assert!(verify(&changed, &key).is_err());
    }

    #[test]
    fn adding_or_removing_a_field_fails(
        (fields, key, _t) in signed(),
        extra_key in "[a-z_]{1,20}",
        extra_value in ".{1,10}",
    ) {
        prop_assume!(!extra_key.starts_with("sign"));
        prop_assume!(fields.get(&extra_key).is_none_or(str::is_empty));
        let mut added = fields.clone();
        added.insert(extra_key, extra_value);
        prop_assert_eq!(verify(&added, &key), Err(SignError::Mismatch));

        let first_signed = fields
            .iter()
            .find(|(k, v)| *k != "sign" && !v.is_empty())
            .map(|(k, _)| k.to_owned());
        if let Some(k) = first_signed {
            let mut removed = fields.clone();
            removed.remove(&k);
            prop_assert_eq!(verify(&removed, &key), Err(SignError::Mismatch));
        }
    }

    #[test]
    fn wrong_key_fails((fields, key, _t) in signed(), other in key()) {
        prop_assume!(other != key);
        prop_assert_eq!(verify(&fields, &other), Err(SignError::Mismatch));
    }

    #[test]
    fn decrypt_never_panics(input in ".{0,300}", b64 in "[A-Za-z0-9+/]{0,200}={0,2}", key in key()) {
        let _ = decrypt_req_info(&input, &key);
        let _ = decrypt_req_info(&b64, &key);
    }

    #[test]
    fn decrypt_never_panics_on_whole_blocks(blocks in vec(any::<[u8; 16]>(), 1..20), key in key()) {
        use base64::Engine;
        let raw: Vec<u8> = blocks.concat();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        // Random ciphertext is almost never valid; it must fail cleanly (or, rarely, parse).
        let _ = decrypt_req_info(&b64, &key);
    }

    #[test]
    fn encrypt_then_decrypt_round_trips(fields in field_map(), key in key()) {
        let encrypted = encrypt_req_info(&fields, &key);
        let decrypted = decrypt_req_info(&encrypted, &key);
        prop_assert!(decrypted.is_ok(), "{:?}", decrypted);
        if let Ok(decrypted) = decrypted {
            prop_assert_eq!(decrypted, fields);
        }
    }
}
