//! Property tests of the v3 protocol: parsers never panic on hostile input, AEAD round trips,
//! and any one-byte change to a signed notification is rejected.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use proptest::prelude::*;
use wxpay_shared::v3::aead;
use wxpay_shared::v3::authorization::parse_authorization;
use wxpay_shared::v3::headers::{WechatpayHeaders, HEADER_SERIAL, HEADER_TIMESTAMP};
use wxpay_shared::v3::keys::{load_private_key_pem, PlatformKeys};
use wxpay_shared::v3::resource::{NotificationEnvelope, RefundResource, Transaction};
use wxpay_shared::v3::verify::{
    sign_notification, verify_notification, TimestampCheck, VerifyError,
};

const SERIAL: &str = "PUB_KEY_ID_0119000001092025061800000000000001";
const TIMESTAMP: &str = "1750000000";
const NONCE: &str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
const BODY: &str = r#"{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"wri2Av4HTR5JLGne1s3Ukts6CVmkhY2MM0uhr0LJIk4XPfgoIWXuGY1xCHIqT498ue1u0mlWUMYHMXZSjNZ+VZwH0kajBj2J06ByQ9KjUk0t6JfEqLSlEhCKL6obAm5diVo0wBwjscWL563qhqBOl57IbKcJRnq6giPG7zys7gwEyRQ=","associated_data":"transaction","nonce":"fdasflkja484"}}"#;

/// One 2048-bit key (an openssl-generated fixture: generating one in a debug build takes
/// seconds) and one signature, made once for every case.
struct Signed {
    keys: PlatformKeys,
    signature: String,
}

fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/v3/platform_a_private_pkcs8.pem"
        ))
        .unwrap();
        let private = load_private_key_pem(&pem).unwrap();
        let mut keys = PlatformKeys::new();
        keys.insert(SERIAL, private.public_key());
        let signature = sign_notification(&private, TIMESTAMP, NONCE, BODY.as_bytes());
        Signed { keys, signature }
    })
}

fn headers(timestamp: &str, nonce: &str, signature: &str) -> WechatpayHeaders {
    WechatpayHeaders {
        timestamp: timestamp.to_owned(),
        nonce: nonce.to_owned(),
        signature: signature.to_owned(),
        serial: SERIAL.to_owned(),
        signature_type: None,
    }
}

fn verify(h: &WechatpayHeaders, body: &[u8]) -> Result<(), VerifyError> {
    verify_notification(h, body, &signed().keys, TimestampCheck::Skip)
}

/// JSON-looking text: more likely than random bytes to get deep into the parsers.
fn jsonish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[{}\\[\\]\":,.0-9a-z_ -]{0,200}",
        Just(BODY.to_owned()).prop_flat_map(|b| (0..b.len(), any::<u8>()).prop_map(
            move |(i, c)| {
                let mut v = b.clone().into_bytes();
                v[i] = c;
                String::from_utf8_lossy(&v).into_owned()
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_fixed_notification_verifies(_x in 0..1u8) {
        let s = signed();
        prop_assert_eq!(verify(&headers(TIMESTAMP, NONCE, &s.signature), BODY.as_bytes()), Ok(()));
    }

    #[test]
    fn parsers_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = NotificationEnvelope::parse(&bytes);
        let _ = Transaction::parse(&bytes);
        let _ = RefundResource::parse(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_jsonish(text in jsonish()) {
        if let Ok(env) = NotificationEnvelope::parse(text.as_bytes()) {
            let _ = env.event();
            let _ = env.decrypt(b"Zyxwvutsrqponmlkjihgfedcba543210");
        }
        if let Ok(t) = Transaction::parse(text.as_bytes()) {
            let _ = t.paid_at();
        }
        if let Ok(r) = RefundResource::parse(text.as_bytes()) {
            let _ = r.succeeded_at();
        }
    }

    #[test]
    fn decrypt_never_panics(
        key in proptest::collection::vec(any::<u8>(), 0..40),
        nonce in ".{0,16}",
        aad in ".{0,16}",
        ciphertext in prop_oneof![".{0,64}", "[A-Za-z0-9+/]{0,64}={0,2}"],
    ) {
        let _ = aead::decrypt(&key, &nonce, &aad, &ciphertext);
    }

    #[test]
    fn parse_authorization_never_panics(
        rest in prop_oneof![".{0,200}", "[a-z_=\", ]{0,200}"],
        prefixed in any::<bool>(),
    ) {
        let header = if prefixed { format!("WECHATPAY2-SHA256-RSA2048 {rest}") } else { rest };
        let _ = parse_authorization(&header);
    }

    #[test]
    fn headers_and_verify_never_panic(
        ts in prop_oneof![".{0,16}", "[0-9]{0,14}"],
        nonce in ".{0,40}",
        signature in prop_oneof![".{0,80}", "[A-Za-z0-9+/]{0,400}={0,2}"],
        body in proptest::collection::vec(any::<u8>(), 0..128),
        now in any::<i64>(),
    ) {
        let serial = SERIAL;
        let lookup = |name: &str| match name {
            HEADER_TIMESTAMP => Some(ts.as_str()),
            HEADER_SERIAL => Some(serial),
            "Wechatpay-Nonce" => Some(nonce.as_str()),
            "Wechatpay-Signature" => Some(signature.as_str()),
            _ => None,
        };
        if let Ok(h) = WechatpayHeaders::from_lookup(lookup) {
            let _ = h.timestamp_secs();
            // Random input never verifies.
            let check = TimestampCheck::Enforce { now_unix: now };
            prop_assert!(verify_notification(&h, &body, &signed().keys, check).is_err());
        }
    }

    #[test]
    fn encrypt_decrypt_round_trip(
        key in proptest::array::uniform32(any::<u8>()),
        nonce in "[A-Za-z0-9]{12}",
        aad in "[a-z_]{0,16}",
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let ct = aead::encrypt(&key, &nonce, &aad, &plaintext).unwrap();
        prop_assert_eq!(aead::decrypt(&key, &nonce, &aad, &ct).unwrap(), plaintext);
        let other_aad = format!("{aad}x");
        prop_assert_eq!(aead::decrypt(&key, &nonce, &other_aad, &ct), Err(aead::AeadError::Tag));
    }

    #[test]
    fn one_byte_change_to_the_body_fails(i in 0..BODY.len(), delta in 1u8..=255) {
        let mut body = BODY.as_bytes().to_vec();
        body[i] = body[i].wrapping_add(delta);
        let h = headers(TIMESTAMP, NONCE, &signed().signature);
        prop_assert_eq!(verify(&h, &body), Err(VerifyError::SignatureMismatch));
    }

    #[test]
    fn one_byte_change_to_the_timestamp_fails(i in 0..TIMESTAMP.len(), delta in 1u8..=9) {
        let mut ts = TIMESTAMP.as_bytes().to_vec();
        ts[i] = b'0' + (ts[i] - b'0' + delta) % 10;
        let ts = String::from_utf8(ts).unwrap();
        let h = headers(&ts, NONCE, &signed().signature);
        prop_assert_eq!(verify(&h, BODY.as_bytes()), Err(VerifyError::SignatureMismatch));
    }

    #[test]
    fn one_byte_change_to_the_nonce_fails(i in 0..NONCE.len(), c in 0x21u8..0x7f) {
        let mut nonce = NONCE.as_bytes().to_vec();
        prop_assume!(nonce[i] != c);
        nonce[i] = c;
        let nonce = String::from_utf8(nonce).unwrap();
        let h = headers(TIMESTAMP, &nonce, &signed().signature);
        prop_assert_eq!(verify(&h, BODY.as_bytes()), Err(VerifyError::SignatureMismatch));
    }

    #[test]
    fn a_flipped_signature_bit_fails(i in 0..256usize, bit in 0..8u8) {
        let mut raw = BASE64.decode(&signed().signature).unwrap();
        prop_assert_eq!(raw.len(), 256);
        raw[i] ^= 1 << bit;
        let h = headers(TIMESTAMP, NONCE, &BASE64.encode(raw));
        prop_assert_eq!(verify(&h, BODY.as_bytes()), Err(VerifyError::SignatureMismatch));
    }
}
