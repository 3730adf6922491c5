//! v3 RSA: key loading, notification verification and the `Authorization` header,
//! cross-checked with the `openssl` command line (an independent implementation).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use wxpay_shared::v3::authorization::{
    authorization_header, parse_authorization, request_message, verify_authorization,
    verify_response, AUTH_SCHEMA,
};
use wxpay_shared::v3::headers::{WechatpayHeaders, SIGNATURE_TYPE_RSA};
use wxpay_shared::v3::keys::{
    certificate_serial_hex, load_private_key_pem, load_public_key_pem, public_key_to_pem,
    sign_sha256_rsa, verify_sha256_rsa, KeyError, PlatformKeys, PrivateKey,
};
use wxpay_shared::v3::verify::{
    sign_notification, signed_message, verify_notification, TimestampCheck, VerifyError,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v3");
const SERIAL_A: &str = "PUB_KEY_ID_0119000001092025061800000000000001";
const SERIAL_B: &str = "5157F09EFDC096DE15EBE81A47057A7232F9F8D0";
const NOW: i64 = 1_750_000_000;
const BODY: &str = r#"{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"wri2Av4HTR5JLGne1s3Ukts6CVmkhY2MM0uhr0LJIk4XPfgoIWXuGY1xCHIqT498ue1u0mlWUMYHMXZSjNZ+VZwH0kajBj2J06ByQ9KjUk0t6JfEqLSlEhCKL6obAm5diVo0wBwjscWL563qhqBOl57IbKcJRnq6giPG7zys7gwEyRQ=","associated_data":"transaction","nonce":"fdasflkja484"}}"#;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

fn private_a() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| load_private_key_pem(&fixture("platform_a_private_pkcs8.pem")).unwrap())
}

fn private_b() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| load_private_key_pem(&fixture("platform_b_private_pkcs8.pem")).unwrap())
}

/// Platform keys as configured during a rotation: a public key and a certificate.
fn keys() -> PlatformKeys {
    PlatformKeys::from_pems([
        (SERIAL_A, fixture("platform_a_public_spki.pem").as_str()),
        (SERIAL_B, fixture("platform_b_cert.pem").as_str()),
    ])
    .unwrap()
}

fn headers(timestamp: &str, nonce: &str, signature: String, serial: &str) -> WechatpayHeaders {
    WechatpayHeaders {
        timestamp: timestamp.to_owned(),
        nonce: nonce.to_owned(),
        signature,
        serial: serial.to_owned(),
        signature_type: Some(SIGNATURE_TYPE_RSA.to_owned()),
    }
}

/// A valid notification signed by key A at `ts`.
fn signed_at(ts: i64) -> WechatpayHeaders {
    let t = ts.to_string();
    let sig = sign_notification(
        private_a(),
        &t,
        "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        BODY.as_bytes(),
    );
    headers(&t, "5K8264ILTKCH16CQ2502SI8ZNMTM67VS", sig, SERIAL_A)
}

fn enforce() -> TimestampCheck {
    TimestampCheck::Enforce { now_unix: NOW }
}

/// `verify_notification` of `BODY` with `headers`, against [`keys`] at `NOW`.
fn verify_body(headers: &WechatpayHeaders) -> Result<(), VerifyError> {
    verify_notification(headers, BODY.as_bytes(), &keys(), enforce())
}

// ---------- openssl helpers ----------

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command line is required by these tests")
}

/// `openssl dgst -sha256 <args> <message, written to a file in dir>`.
fn openssl_dgst(dir: &Path, message: &[u8], args: &[&str]) -> std::process::Output {
    let msg = dir.join("message.bin");
    std::fs::write(&msg, message).unwrap();
    let mut all = vec!["dgst", "-sha256"];
    all.extend_from_slice(args);
    all.push(msg.to_str().unwrap());
    openssl(&all)
}

/// `openssl dgst -sha256 -sign key`: returns base64 of the signature.
fn openssl_sign(dir: &Path, key_pem_path: &Path, message: &[u8]) -> String {
    let sig = dir.join("sig.bin");
    let key = key_pem_path.to_str().unwrap();
    let out = openssl_dgst(dir, message, &["-sign", key, "-out", sig.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    BASE64.encode(std::fs::read(&sig).unwrap())
}

/// `openssl dgst -sha256 -verify pub`: true when openssl accepts the signature.
fn openssl_verify(dir: &Path, pub_pem_path: &Path, message: &[u8], signature_b64: &str) -> bool {
    let sig = dir.join("vsig.bin");
    std::fs::write(&sig, BASE64.decode(signature_b64).unwrap()).unwrap();
    let public = pub_pem_path.to_str().unwrap();
    let args = ["-verify", public, "-signature", sig.to_str().unwrap()];
    let out = openssl_dgst(dir, message, &args);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK")
}

// ---------- openssl cross-checks ----------

#[test]
fn openssl_generated_key_signs_and_we_verify_and_vice_versa() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    let pub_path = dir.path().join("pub.pem");
    let out = openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = openssl(&[
        "pkey",
        "-in",
        key_path.to_str().unwrap(),
        "-pubout",
        "-out",
        pub_path.to_str().unwrap(),
    ]);
    assert!(out.status.success());

    // openssl signs, we verify.
    let mut keys = PlatformKeys::new();
    keys.insert(
        "FRESH",
        load_public_key_pem(&std::fs::read_to_string(&pub_path).unwrap()).unwrap(),
    );
    let ts = NOW.to_string();
    let sig = openssl_sign(
        dir.path(),
        &key_path,
        &signed_message(&ts, "nonce-1", BODY.as_bytes()),
    );
    let h = headers(&ts, "nonce-1", sig.clone(), "FRESH");
    assert_eq!(
        verify_notification(&h, BODY.as_bytes(), &keys, enforce()),
        Ok(())
    );
    // …and the same openssl signature over another body does not verify.
    assert_eq!(
        verify_notification(&h, b"{}", &keys, enforce()),
        Err(VerifyError::SignatureMismatch)
    );

    // We sign with the openssl-generated private key, openssl verifies.
    let private = load_private_key_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let ours = sign_notification(&private, &ts, "nonce-1", BODY.as_bytes());
    // PKCS#1 v1.5 is deterministic: both implementations produce the same bytes.
    assert_eq!(ours, sig);
    assert!(openssl_verify(
        dir.path(),
        &pub_path,
        &signed_message(&ts, "nonce-1", BODY.as_bytes()),
        &ours
    ));
    assert!(!openssl_verify(
        dir.path(),
        &pub_path,
        &signed_message(&ts, "nonce-2", BODY.as_bytes()),
        &ours
    ));
}

#[test]
fn openssl_signature_verifies_through_the_certificate_and_pkcs1_forms() {
    let dir = tempfile::tempdir().unwrap();
    let ts = NOW.to_string();
    let message = signed_message(&ts, "n0nce", BODY.as_bytes());
    let sig = openssl_sign(
        dir.path(),
        &Path::new(FIXTURES).join("platform_b_private_pkcs1.pem"),
        &message,
    );
    let h = headers(&ts, "n0nce", sig.clone(), SERIAL_B);
    // Certificate (serial B in `keys()`).
    assert_eq!(verify_body(&h), Ok(()));
    // SPKI and PKCS#1 public forms of the same key.
    for name in ["platform_b_public_spki.pem", "platform_b_public_pkcs1.pem"] {
        let key = load_public_key_pem(&fixture(name)).unwrap();
        assert_eq!(verify_sha256_rsa(&key, &message, &sig), Ok(()), "{name}");
    }
    // Our signature with the PKCS#1 private key verifies with openssl against the certificate.
    let private = load_private_key_pem(&fixture("platform_b_private_pkcs1.pem")).unwrap();
    let ours = sign_sha256_rsa(&private, &message);
    assert!(openssl_verify(
        dir.path(),
        &Path::new(FIXTURES).join("platform_b_public_spki.pem"),
        &message,
        &ours
    ));
}

#[test]
fn key_forms_load_to_the_same_key() {
    let spki = load_public_key_pem(&fixture("platform_b_public_spki.pem")).unwrap();
    let pkcs1 = load_public_key_pem(&fixture("platform_b_public_pkcs1.pem")).unwrap();
    let cert = load_public_key_pem(&fixture("platform_b_cert.pem")).unwrap();
    assert_eq!(spki, pkcs1);
    assert_eq!(spki, cert);
    let p8 = load_private_key_pem(&fixture("platform_b_private_pkcs8.pem")).unwrap();
    let p1 = load_private_key_pem(&fixture("platform_b_private_pkcs1.pem")).unwrap();
    assert_eq!(p8, p1);
    assert_eq!(p8.public_key(), spki);
    assert_eq!(spki.modulus_bits(), 2048);
    assert_eq!(
        certificate_serial_hex(&fixture("platform_b_cert.pem")).unwrap(),
        SERIAL_B
    );
}

#[test]
fn pem_round_trips_and_tolerates_toml_indentation() {
    let private = private_b();
    let public = private.public_key();
    let pem = public_key_to_pem(&public);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(
        pem,
        fixture("platform_b_public_spki.pem"),
        "same SPKI encoding as openssl"
    );
    // As pasted into an indented TOML multi-line string, with CRLF line ends.
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\r\n")).collect() };
    assert_eq!(load_public_key_pem(&indent(&pem)).unwrap(), public);
    let private_pem = indent(&fixture("platform_b_private_pkcs8.pem"));
    assert_eq!(&load_private_key_pem(&private_pem).unwrap(), private);
}

#[test]
fn wrong_pem_kinds_are_rejected() {
    assert_eq!(
        load_public_key_pem(&fixture("platform_b_private_pkcs8.pem")),
        Err(KeyError::UnsupportedLabel("PRIVATE KEY".into()))
    );
    assert_eq!(
        load_private_key_pem(&fixture("platform_b_public_spki.pem")),
        Err(KeyError::UnsupportedLabel("PUBLIC KEY".into()))
    );
    // A certificate's body under a PUBLIC KEY label does not load.
    let cert = fixture("platform_b_cert.pem").replace("CERTIFICATE", "PUBLIC KEY");
    assert!(matches!(
        load_public_key_pem(&cert),
        Err(KeyError::Invalid { .. })
    ));
    let err = PlatformKeys::from_pems([(SERIAL_A, "garbage")]).unwrap_err();
    assert_eq!(err, (SERIAL_A.to_owned(), KeyError::NoPem));
}

/// Writes `openssl genpkey` output for `args` and returns (private PEM, public SPKI PEM).
fn openssl_genpkey(args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    let key = key_path.to_str().unwrap();
    let out = openssl(&[&["genpkey"], args, &["-out", key]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = openssl(&["pkey", "-in", key, "-pubout"]);
    assert!(out.status.success());
    (
        std::fs::read_to_string(&key_path).unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn keys_ring_cannot_verify_with_are_refused_at_load() {
    // Below 2048 bits: RSA_PKCS1_2048_8192_SHA256 would reject every signature, so the
    // key is a configuration error rather than a stream of signature mismatches.
    let (private, public) =
        openssl_genpkey(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]);
    let Err(KeyError::Invalid { label, reason }) = load_public_key_pem(&public) else {
        panic!("a 1024-bit public key must not load");
    };
    assert_eq!(label, "PUBLIC KEY");
    assert!(reason.contains("1024 bits"), "{reason}");
    assert!(matches!(
        load_private_key_pem(&private),
        Err(KeyError::Invalid { .. })
    ));
    // A well-formed SPKI of another algorithm (EC P-256) is not taken for RSA.
    let (_, ec_public) =
        openssl_genpkey(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let Err(KeyError::Invalid { reason, .. }) = load_public_key_pem(&ec_public) else {
        panic!("an EC public key must not load as RSA");
    };
    assert!(reason.contains("not an RSA key"), "{reason}");
}

// ---------- verify_notification rules ----------

#[test]
fn valid_notification_verifies() {
    assert_eq!(verify_body(&signed_at(NOW)), Ok(()));
    let mut no_type = signed_at(NOW);
    no_type.signature_type = None;
    assert_eq!(verify_body(&no_type), Ok(()));
}

#[test]
fn signtest_probe_fails_even_when_the_rest_is_valid() {
    let mut h = signed_at(NOW);
    h.signature = format!("WECHATPAY/SIGNTEST/{}", h.signature);
    assert_eq!(verify_body(&h), Err(VerifyError::Probe));
    // Probe comes first: even with an unknown serial and a stale timestamp.
    h.serial = "nobody".into();
    h.timestamp = "1".into();
    assert_eq!(verify_body(&h), Err(VerifyError::Probe));
    assert_eq!(
        verify_response(&h, BODY.as_bytes(), &keys(), enforce()),
        Err(VerifyError::Probe)
    );
}

#[test]
fn unknown_serial_fails() {
    let mut h = signed_at(NOW);
    h.serial = "PUB_KEY_ID_UNKNOWN".into();
    assert_eq!(
        verify_body(&h),
        Err(VerifyError::UnknownSerial("PUB_KEY_ID_UNKNOWN".into()))
    );
    // Serials are exact: case matters.
    h.serial = SERIAL_A.to_lowercase();
    assert!(matches!(
        verify_body(&h),
        Err(VerifyError::UnknownSerial(_))
    ));
    assert!(matches!(
        verify_notification(
            &signed_at(NOW),
            BODY.as_bytes(),
            &PlatformKeys::new(),
            enforce()
        ),
        Err(VerifyError::UnknownSerial(_))
    ));
}

#[test]
fn timestamps_301_s_off_fail_and_299_s_pass() {
    let keys = keys();
    let body = BODY.as_bytes();
    assert_eq!(
        verify_notification(&signed_at(NOW - 301), body, &keys, enforce()),
        Err(VerifyError::StaleTimestamp { skew_secs: 301 })
    );
    assert_eq!(
        verify_notification(&signed_at(NOW + 301), body, &keys, enforce()),
        Err(VerifyError::StaleTimestamp { skew_secs: -301 })
    );
    assert_eq!(
        verify_notification(&signed_at(NOW - 299), body, &keys, enforce()),
        Ok(())
    );
    assert_eq!(
        verify_notification(&signed_at(NOW + 299), body, &keys, enforce()),
        Ok(())
    );
}

#[test]
fn skip_accepts_an_old_notification_but_not_a_bad_one() {
    let old = signed_at(NOW - 86_400);
    assert!(verify_body(&old).is_err());
    assert_eq!(
        verify_notification(&old, BODY.as_bytes(), &keys(), TimestampCheck::Skip),
        Ok(())
    );
    assert_eq!(
        verify_notification(&old, b"{}", &keys(), TimestampCheck::Skip),
        Err(VerifyError::SignatureMismatch)
    );
    let mut bad = old;
    bad.timestamp = "yesterday".into();
    assert_eq!(
        verify_notification(&bad, BODY.as_bytes(), &keys(), TimestampCheck::Skip),
        Err(VerifyError::BadTimestamp)
    );
}

#[test]
fn wrong_signature_type_fails() {
    let mut h = signed_at(NOW);
    h.signature_type = Some("WECHATPAY2-SM2-WITH-SM3".into());
    assert_eq!(
        verify_body(&h),
        Err(VerifyError::UnsupportedSignatureType(
            "WECHATPAY2-SM2-WITH-SM3".into()
        ))
    );
}

#[test]
fn body_tampered_by_one_byte_fails() {
    let h = signed_at(NOW);
    let mut body = BODY.as_bytes().to_vec();
    let i = BODY.find("TRANSACTION").unwrap();
    body[i] = b't';
    assert_eq!(
        verify_notification(&h, &body, &keys(), enforce()),
        Err(VerifyError::SignatureMismatch)
    );
    // A trailing newline added by a proxy is a different body too.
    let mut body = BODY.as_bytes().to_vec();
    body.push(b'\n');
    assert_eq!(
        verify_notification(&h, &body, &keys(), enforce()),
        Err(VerifyError::SignatureMismatch)
    );
}

#[test]
fn signature_encoding_and_key_mix_ups_fail() {
    let mut h = signed_at(NOW);
    h.signature = "not base64 !".into();
    assert_eq!(verify_body(&h), Err(VerifyError::BadSignatureEncoding));
    h.signature = BASE64.encode(b"short");
    assert_eq!(verify_body(&h), Err(VerifyError::SignatureMismatch));
    // Signed by A but claiming B's serial.
    let mut h = signed_at(NOW);
    h.serial = SERIAL_B.into();
    assert_eq!(verify_body(&h), Err(VerifyError::SignatureMismatch));
}

#[test]
fn two_serials_side_by_side_both_verify() {
    let keys = keys();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.serials().collect::<Vec<_>>(), vec![SERIAL_B, SERIAL_A]);
    let debug = format!("{keys:?}");
    assert!(debug.contains(SERIAL_A) && debug.contains(SERIAL_B));
    assert!(!debug.contains("BEGIN"), "Debug lists serials only");
    let ts = NOW.to_string();
    let a = headers(
        &ts,
        "na",
        sign_notification(private_a(), &ts, "na", BODY.as_bytes()),
        SERIAL_A,
    );
    let b = headers(
        &ts,
        "nb",
        sign_notification(private_b(), &ts, "nb", BODY.as_bytes()),
        SERIAL_B,
    );
    assert_eq!(
        verify_notification(&a, BODY.as_bytes(), &keys, enforce()),
        Ok(())
    );
    assert_eq!(
        verify_notification(&b, BODY.as_bytes(), &keys, enforce()),
        Ok(())
    );
    assert_eq!(
        verify_response(&b, BODY.as_bytes(), &keys, enforce()),
        Ok(())
    );
}

// ---------- Authorization ----------

#[test]
fn authorization_round_trip_and_openssl_cross_check() {
    let url = "/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1900000109";
    let header = authorization_header(
        "1900000109",
        SERIAL_B,
        private_b(),
        "GET",
        url,
        NOW,
        "593BEC0C930BF1AFEB40B4A08C8FB242",
        b"",
    );
    assert!(header.starts_with(&format!("{AUTH_SCHEMA} mchid=\"1900000109\",nonce_str=")));
    let params = parse_authorization(&header).unwrap();
    assert_eq!(params.mchid, "1900000109");
    assert_eq!(params.serial_no, SERIAL_B);
    assert_eq!(params.timestamp, NOW.to_string());
    assert_eq!(params.nonce_str, "593BEC0C930BF1AFEB40B4A08C8FB242");
    let public = load_public_key_pem(&fixture("platform_b_cert.pem")).unwrap();
    assert_eq!(
        verify_authorization(&params, &public, "GET", url, b""),
        Ok(())
    );

    // Any change of method, URL, body or key fails.
    assert_eq!(
        verify_authorization(&params, &public, "POST", url, b""),
        Err(VerifyError::SignatureMismatch)
    );
    assert_eq!(
        verify_authorization(
            &params,
            &public,
            "GET",
            "/v3/pay/transactions/out-trade-no/1?mchid=1900000109",
            b""
        ),
        Err(VerifyError::SignatureMismatch)
    );
    assert_eq!(
        verify_authorization(&params, &public, "GET", url, b"{}"),
        Err(VerifyError::SignatureMismatch)
    );
    let other = private_a().public_key();
    assert_eq!(
        verify_authorization(&params, &other, "GET", url, b""),
        Err(VerifyError::SignatureMismatch)
    );
    let mut bad_ts = params.clone();
    bad_ts.timestamp = "soon".into();
    assert_eq!(
        verify_authorization(&bad_ts, &public, "GET", url, b""),
        Err(VerifyError::BadTimestamp)
    );

    // openssl agrees on the signature of the request message.
    let dir = tempfile::tempdir().unwrap();
    let message = request_message("GET", url, NOW, "593BEC0C930BF1AFEB40B4A08C8FB242", b"");
    assert!(openssl_verify(
        dir.path(),
        &Path::new(FIXTURES).join("platform_b_public_spki.pem"),
        &message,
        &params.signature
    ));
    let by_openssl = openssl_sign(
        dir.path(),
        &Path::new(FIXTURES).join("platform_b_private_pkcs8.pem"),
        &message,
    );
    assert_eq!(by_openssl, params.signature);
}

#[test]
fn authorization_with_a_post_body() {
    let body = br#"{"mchid":"1900000109","out_refund_no":"R1","amount":{"refund":1,"total":1,"currency":"CNY"}}"#;
    let header = authorization_header(
        "1900000109",
        SERIAL_A,
        private_a(),
        "POST",
        "/v3/refund/domestic/refunds",
        NOW,
        "n",
        body,
    );
    let params = parse_authorization(&header).unwrap();
    let public = private_a().public_key();
    let verify = |body: &[u8]| {
        verify_authorization(
            &params,
            &public,
            "POST",
            "/v3/refund/domestic/refunds",
            body,
        )
    };
    assert_eq!(verify(body), Ok(()));
    assert_eq!(verify(&body[1..]), Err(VerifyError::SignatureMismatch));
}
