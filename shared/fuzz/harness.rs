//! What each fuzz target does with one input, and the invariants it asserts.
//!
//! Compiled twice: by the cargo-fuzz targets (nightly, `shared/fuzz/fuzz_targets/*.rs`) and by the
//! stable corpus replay test of wxpay-shared (`shared/tests/fuzz_corpus.rs`), so CI checks
//! every committed corpus file with exactly the code the fuzzer ran. A panic is a finding.

use std::sync::OnceLock;

use wxpay_shared::v2::{self, PayNotification, RefundEnvelope, RefundInfo, XmlFields};
use wxpay_shared::v3::verify::PROBE_SIGNATURE_PREFIX;
use wxpay_shared::v3::{
    self, verify_notification, NotificationEnvelope, PlatformKeys, TimestampCheck,
    WechatpayHeaders, MAX_CLOCK_SKEW_SECS,
};

/// The merchant's API v2 key the corpus was signed and encrypted with.
pub const V2_KEY: &str = "fuzzfuzzfuzzfuzzfuzzfuzzfuzz0123";
/// The merchant's API v3 key the corpus resources were encrypted with.
pub const V3_KEY: &[u8; 32] = b"FuzzApiV3KeyFuzzApiV3Key01234567";
/// The `Wechatpay-Serial` of the platform key in `shared/fuzz/keys/platform_public.pem`.
pub const V3_SERIAL: &str = "PUB_KEY_ID_0114232019111000000000000000";
/// The clock the timestamp window is checked against.
pub const NOW_UNIX: i64 = 1_700_000_000;

fn platform_keys() -> &'static PlatformKeys {
    static KEYS: OnceLock<PlatformKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        PlatformKeys::from_pems([(V3_SERIAL, include_str!("keys/platform_public.pem"))])
            .unwrap_or_else(|(serial, error)| panic!("fuzz key {serial}: {error}"))
    })
}

/// v2 target: the XML parser, the signature check and the notification decoders, as the
/// gateway runs them on a v2 body.
pub fn v2_notification(data: &[u8]) {
    let Ok(fields) = XmlFields::parse(data) else {
        return;
    };
    // What was parsed serialises to a document that parses to the same fields.
    let again = XmlFields::parse(fields.to_xml().as_bytes()).expect("to_xml output re-parses");
    assert_eq!(again, fields, "XML round trip changed the fields");
    if let Ok(sign_type) = v2::verify(&fields, V2_KEY) {
        // A verified sign is the one we compute, whatever its case.
        let expected = v2::sign(&fields, V2_KEY, sign_type);
        let received = fields.get("sign").expect("verified implies a sign field");
        assert!(
            expected.eq_ignore_ascii_case(received),
            "verify accepted a sign that sign() does not produce"
        );
    }
    let _ = PayNotification::from_fields(&fields);
    let _ = RefundEnvelope::from_fields(&fields);
}

/// req_info target: the input is tried both as the base64 `req_info` text (decrypt) and as
/// the plaintext `<root>` document (encrypt, then decrypt).
pub fn req_info(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(root) = v2::decrypt_req_info(text, V2_KEY) {
            let _ = RefundInfo::from_fields(&root);
            let sealed = v2::encrypt_req_info(&root, V2_KEY);
            let back = v2::decrypt_req_info(&sealed, V2_KEY).expect("own ciphertext decrypts");
            assert_eq!(back, root, "req_info round trip changed the fields");
        }
        // Any other key fails (or, for a 1 in 2^8-ish padding accident, yields garbage
        // that must still not panic).
        let _ = v2::decrypt_req_info(text, "another key entirely, 32 bytes!");
    }
    if let Ok(root) = XmlFields::parse_with_root(data, "root") {
        let sealed = v2::encrypt_req_info(&root, V2_KEY);
        let back = v2::decrypt_req_info(&sealed, V2_KEY).expect("own ciphertext decrypts");
        assert_eq!(back, root, "req_info encrypt/decrypt changed the fields");
    }
}

/// v3 target: the input is an HTTP-like head (`Name: value` lines), a blank line, then the
/// body. Headers, signature, envelope and resource decryption run as gateway and worker
/// run them.
pub fn v3_notification(data: &[u8]) {
    let (head, body) = split_head(data);
    let lookup = |name: &str| {
        head.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
    };
    if let Ok(headers) = WechatpayHeaders::from_lookup(lookup) {
        let skip = verify_notification(&headers, body, platform_keys(), TimestampCheck::Skip);
        let enforce = verify_notification(
            &headers,
            body,
            platform_keys(),
            TimestampCheck::Enforce { now_unix: NOW_UNIX },
        );
        for verdict in [&skip, &enforce] {
            if verdict.is_ok() {
                assert!(
                    !headers.signature.starts_with(PROBE_SIGNATURE_PREFIX),
                    "a signature probe verified"
                );
            }
        }
        if enforce.is_ok() {
            let timestamp = headers
                .timestamp_secs()
                .expect("verified implies a timestamp");
            assert!(
                (NOW_UNIX - timestamp).abs() <= MAX_CLOCK_SKEW_SECS,
                "a stale timestamp verified"
            );
            assert!(
                skip.is_ok(),
                "enforcing the clock accepted what skipping it refused"
            );
        }
    }
    let Ok(envelope) = NotificationEnvelope::parse(body) else {
        return;
    };
    let _ = envelope.event();
    if let Ok(plaintext) = envelope.decrypt(V3_KEY) {
        let resource = &envelope.resource;
        let sealed = v3::aead::encrypt(
            V3_KEY,
            &resource.nonce,
            &resource.associated_data,
            &plaintext,
        )
        .expect("a resource that decrypted re-encrypts");
        let again = v3::aead::decrypt(V3_KEY, &resource.nonce, &resource.associated_data, &sealed)
            .expect("own ciphertext decrypts");
        assert_eq!(again, plaintext, "AEAD round trip changed the plaintext");
        let _ = envelope.decrypt_transaction(V3_KEY);
        let _ = envelope.decrypt_refund(V3_KEY);
    }
}

/// `Name: value` lines up to the first empty line; the rest is the body. Lines that are
/// not UTF-8 or have no colon are ignored, as an HTTP library would refuse them.
fn split_head(data: &[u8]) -> (Vec<(&str, &str)>, &[u8]) {
    let (head, body) = match data.windows(2).position(|pair| pair == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&[][..], data),
    };
    let head = std::str::from_utf8(head)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    (head, body)
}
