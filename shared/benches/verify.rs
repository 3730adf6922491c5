//! Cost of the gateway's hot path: parse a notification body and verify its signature.
//!
//! One function per protocol/method so more can be added to the group:
//! `cargo bench -p wxpay-shared --bench verify`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wxpay_shared::v2::{self, SignType, XmlFields};

/// Short runs: the machine is shared and these are smoke measurements, not a lab.
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
const WARM_UP_TIME: Duration = Duration::from_millis(500);

const V2_KEY: &str = "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345";

/// The fields of the official 支付结果通知 sample, unsigned.
const PAY_NOTIFICATION_SAMPLE: &str =
    include_str!("../tests/fixtures/v2/pay_notification_sample.xml");

/// A realistic 支付结果通知 body (the fields of the official sample), signed with `t`.
fn v2_pay_notification(t: SignType) -> Vec<u8> {
    let mut fields = XmlFields::parse(PAY_NOTIFICATION_SAMPLE.as_bytes()).expect("sample parses");
    if t == SignType::HmacSha256 {
        fields.insert("sign_type", t.as_str());
    }
    let sign = v2::sign(&fields, V2_KEY, t);
    fields.insert("sign", sign);
    fields.to_xml().into_bytes()
}

fn bench_v2(c: &mut Criterion, name: &str, t: SignType) {
    let body = v2_pay_notification(t);
    let mut group = c.benchmark_group(name);
    group
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse", |b| b.iter(|| XmlFields::parse(black_box(&body))));
    let parsed = match XmlFields::parse(&body) {
        Ok(parsed) => parsed,
        Err(e) => panic!("benchmark body must parse: {e}"),
    };
    group.bench_function("verify", |b| {
        b.iter(|| v2::verify(black_box(&parsed), black_box(V2_KEY)))
    });
    group.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            let fields = XmlFields::parse(black_box(&body)).map_err(|_| ())?;
            v2::verify(&fields, black_box(V2_KEY)).map_err(|_| ())
        })
    });
    group.finish();
}

/// v2 pay notification signed with MD5 (`sign_type` absent, as most notifications).
fn bench_v2_md5(c: &mut Criterion) {
    bench_v2(c, "v2_md5", SignType::Md5);
}

/// v2 pay notification signed with HMAC-SHA256.
fn bench_v2_hmac(c: &mut Criterion) {
    bench_v2(c, "v2_hmac_sha256", SignType::HmacSha256);
}

/// A realistic v3 支付成功通知: the official payment resource, encrypted with an APIv3 key,
/// in its envelope, signed with a 2048-bit RSA key (the openssl-generated test fixture).
fn v3_notification() -> (
    wxpay_shared::v3::WechatpayHeaders,
    Vec<u8>,
    wxpay_shared::v3::PlatformKeys,
    i64,
) {
    use wxpay_shared::v3::{aead, keys, verify, PlatformKeys, WechatpayHeaders};
    let private = match keys::load_private_key_pem(include_str!(
        "../tests/fixtures/v3/platform_a_private_pkcs8.pem"
    )) {
        Ok(k) => k,
        Err(e) => panic!("benchmark key must load: {e}"),
    };
    let resource = r#"{"transaction_id":"1217752501201407033233368018","amount":{"payer_total":100,"total":100,"currency":"CNY","payer_currency":"CNY"},"mchid":"1230000109","trade_state":"SUCCESS","bank_type":"CMC","success_time":"2018-06-08T10:34:56+08:00","payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},"out_trade_no":"1217752501201407033233368018","appid":"wxd678efh567hg6787","trade_state_desc":"支付成功","trade_type":"MICROPAY","attach":"自定义数据","scene_info":{"device_id":"013467007045764"}}"#;
    let ciphertext = match aead::encrypt(
        V3_API_KEY,
        "fdasflkja484",
        "transaction",
        resource.as_bytes(),
    ) {
        Ok(c) => c,
        Err(e) => panic!("benchmark resource must encrypt: {e}"),
    };
    let body = format!(
        r#"{{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功","resource":{{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"{ciphertext}","associated_data":"transaction","nonce":"fdasflkja484"}}}}"#
    )
    .into_bytes();
    let now = 1_750_000_000_i64;
    let timestamp = now.to_string();
    let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
    let headers = WechatpayHeaders {
        signature: verify::sign_notification(&private, &timestamp, nonce, &body),
        timestamp,
        nonce: nonce.to_owned(),
        serial: V3_SERIAL.to_owned(),
        signature_type: Some(wxpay_shared::v3::SIGNATURE_TYPE_RSA.to_owned()),
    };
    let mut keys = PlatformKeys::new();
    keys.insert(V3_SERIAL, private.public_key());
    (headers, body, keys, now)
}

const V3_API_KEY: &[u8] = b"Zyxwvutsrqponmlkjihgfedcba543210";
const V3_SERIAL: &str = "PUB_KEY_ID_0119000001092025061800000000000001";

/// v3 notification: RSA-2048 signature verification (the gateway's cost per request).
fn bench_v3_rsa(c: &mut Criterion) {
    use wxpay_shared::v3::{verify_notification, NotificationEnvelope, TimestampCheck};
    let (headers, body, keys, now) = v3_notification();
    let check = TimestampCheck::Enforce { now_unix: now };
    let mut group = c.benchmark_group("v3_rsa2048");
    group
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify", |b| {
        b.iter(|| verify_notification(black_box(&headers), black_box(&body), &keys, check))
    });
    group.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            verify_notification(black_box(&headers), black_box(&body), &keys, check)
                .map_err(|_| ())?;
            NotificationEnvelope::parse(black_box(&body)).map_err(|_| ())
        })
    });
    group.finish();
}

/// v3 resource: AEAD_AES_256_GCM decryption and parsing (the worker's cost per message).
fn bench_v3_aead(c: &mut Criterion) {
    use wxpay_shared::v3::NotificationEnvelope;
    let (_, body, _, _) = v3_notification();
    let envelope = match NotificationEnvelope::parse(&body) {
        Ok(e) => e,
        Err(e) => panic!("benchmark body must parse: {e}"),
    };
    let mut group = c.benchmark_group("v3_aead_aes_256_gcm");
    group
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .throughput(Throughput::Bytes(envelope.resource.ciphertext.len() as u64));
    group.bench_function("decrypt", |b| {
        b.iter(|| black_box(&envelope).decrypt(black_box(V3_API_KEY)))
    });
    group.bench_function("decrypt_and_parse", |b| {
        b.iter(|| black_box(&envelope).decrypt_transaction(black_box(V3_API_KEY)))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_v2_md5,
    bench_v2_hmac,
    bench_v3_rsa,
    bench_v3_aead
);
criterion_main!(benches);
