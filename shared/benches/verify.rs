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

/// A realistic 支付结果通知 body (the fields of the official sample), signed with `t`.
fn v2_pay_notification(t: SignType) -> Vec<u8> {
    let mut fields: XmlFields = [
        ("appid", "wx2421b1c4370ec43b"),
        ("attach", "支付测试"),
        ("bank_type", "CFT"),
        ("fee_type", "CNY"),
        ("is_subscribe", "Y"),
        ("mch_id", "10000100"),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("out_trade_no", "1409811653"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("sub_mch_id", "10000100"),
        ("time_end", "20140903131540"),
        ("total_fee", "1"),
        ("coupon_fee_0", "10"),
        ("coupon_count", "1"),
        ("coupon_type", "CASH"),
        ("coupon_id", "10000"),
        ("trade_type", "JSAPI"),
        ("transaction_id", "1004400740201409030005092168"),
    ]
    .into_iter()
    .collect();
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

criterion_group!(benches, bench_v2_md5, bench_v2_hmac);
criterion_main!(benches);
