//! `GET /v3/certificates` against an answer made outside this crate (Python's
//! `cryptography` encrypted the certificate, OpenSSL signed the answer:
//! `fixtures/v3/README.md`), and the checks a downloaded or shared certificate must pass.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wxpay_shared::v3::{
    certificate_info, load_private_key_pem, verify_download, CertificateError, CertificatesAnswer,
    DownloadError, EncryptedCertificate, PlatformKeys, TimestampCheck, VerifyError,
    WechatpayHeaders,
};

const API_V3_KEY: &[u8] = b"0123456789abcdef0123456789ABCDEF";
const SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F9F8D0";
const BODY: &str = include_str!("fixtures/v3/certificates_answer.json");
const HEADERS: &str = include_str!("fixtures/v3/certificates_answer.headers");
const CERT_PEM: &str = include_str!("fixtures/v3/platform_b_cert.pem");

/// The answer's signing time (`Wechatpay-Timestamp`), 2026-12-01 00:00:00 UTC.
const SIGNED_AT: i64 = 1_796_083_200;

fn headers() -> WechatpayHeaders {
    let pairs: Vec<(&str, &str)> = HEADERS
        .lines()
        .filter_map(|line| line.split_once(": "))
        .collect();
    WechatpayHeaders::from_lookup(|name| {
        pairs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
    })
    .unwrap()
}

fn at(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap())
}

fn check() -> TimestampCheck {
    TimestampCheck::Enforce {
        now_unix: SIGNED_AT + 10,
    }
}

/// [`verify_download`] of `body` with the fixture's headers, at the signing time.
fn download(
    body: &str,
    known: &PlatformKeys,
    api_v3_key: &[u8],
    check: TimestampCheck,
) -> Result<wxpay_shared::v3::Downloaded, DownloadError> {
    verify_download(
        &headers(),
        body.as_bytes(),
        known,
        api_v3_key,
        check,
        at(SIGNED_AT),
    )
}

fn answer() -> CertificatesAnswer {
    CertificatesAnswer::parse(BODY.as_bytes()).unwrap()
}

#[test]
fn the_first_download_verifies_with_the_certificate_it_brings() {
    let downloaded = download(BODY, &PlatformKeys::new(), API_V3_KEY, check()).unwrap();
    assert!(downloaded.refused.is_empty(), "{:?}", downloaded.refused);
    let [certificate] = downloaded.accepted.as_slice() else {
        panic!("one certificate: {:?}", downloaded.accepted)
    };
    assert_eq!(certificate.serial, SERIAL);
    let info = certificate_info(CERT_PEM).unwrap();
    assert_eq!(certificate.key, info.key);
    assert_eq!(certificate.not_after, info.not_after);
    assert_eq!(downloaded.answer, answer());
}

#[test]
fn a_known_key_that_did_not_sign_refuses_the_answer() {
    // The serial is known, but under another key: the known key wins, and does not verify.
    let mut known = PlatformKeys::new();
    let other = load_private_key_pem(include_str!("fixtures/v3/platform_a_private_pkcs8.pem"))
        .unwrap()
        .public_key();
    known.insert(SERIAL, other);
    let refused = download(BODY, &known, API_V3_KEY, check());
    assert_eq!(
        refused.unwrap_err(),
        DownloadError::Signature(VerifyError::SignatureMismatch)
    );
}

#[test]
fn with_a_wrong_api_v3_key_nothing_decrypts_and_nothing_verifies() {
    let result = download(
        BODY,
        &PlatformKeys::new(),
        b"0123456789abcdef0123456789ABCDEX",
        check(),
    );
    assert_eq!(
        result.unwrap_err(),
        DownloadError::Signature(VerifyError::UnknownSerial(SERIAL.into()))
    );
}

#[test]
fn a_tampered_body_or_a_stale_answer_is_refused() {
    let tampered = BODY.replace("+08:00", "+09:00");
    let result = download(&tampered, &PlatformKeys::new(), API_V3_KEY, check());
    assert_eq!(
        result.unwrap_err(),
        DownloadError::Signature(VerifyError::SignatureMismatch)
    );
    let stale = TimestampCheck::Enforce {
        now_unix: SIGNED_AT + 301,
    };
    assert!(matches!(
        download(BODY, &PlatformKeys::new(), API_V3_KEY, stale),
        Err(DownloadError::Signature(VerifyError::StaleTimestamp { .. }))
    ));
}

#[test]
fn each_certificate_is_checked_before_use() {
    let good = answer().data.remove(0);
    let info = certificate_info(CERT_PEM).unwrap();
    assert!(good.decrypt(API_V3_KEY, at(SIGNED_AT)).is_ok());

    let mut flipped = good.clone();
    flipped.encrypt_certificate.ciphertext = {
        let mut text = flipped.encrypt_certificate.ciphertext.into_bytes();
        text[10] = if text[10] == b'A' { b'B' } else { b'A' };
        String::from_utf8(text).unwrap()
    };
    assert!(matches!(
        flipped.decrypt(API_V3_KEY, at(SIGNED_AT)),
        Err(CertificateError::Decrypt(_))
    ));

    let mut renamed = good.clone();
    renamed.serial_no = "PUB_KEY_ID_0000".into();
    assert_eq!(
        renamed.decrypt(API_V3_KEY, at(SIGNED_AT)),
        Err(CertificateError::SerialMismatch {
            serial_no: "PUB_KEY_ID_0000".into(),
            certificate: SERIAL.into()
        })
    );

    let mut other_algorithm = good.clone();
    other_algorithm.encrypt_certificate.algorithm = "AEAD_SM4_GCM".into();
    assert_eq!(
        other_algorithm.decrypt(API_V3_KEY, at(SIGNED_AT)),
        Err(CertificateError::Algorithm("AEAD_SM4_GCM".into()))
    );

    let before = info.not_before - Duration::from_secs(1);
    assert_eq!(
        good.decrypt(API_V3_KEY, before),
        Err(CertificateError::NotYetValid)
    );
    let after = info.not_after + Duration::from_secs(1);
    assert_eq!(
        good.decrypt(API_V3_KEY, after),
        Err(CertificateError::Expired)
    );
}

#[test]
fn our_encryption_matches_the_outside_one() {
    let made = EncryptedCertificate::encrypt(API_V3_KEY, "c5ac7061fccf", CERT_PEM).unwrap();
    assert_eq!(made, answer().data.remove(0));
}
