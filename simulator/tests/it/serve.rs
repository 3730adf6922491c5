//! The query API mock: v3 Authorization and response signatures, v2 signed XML both ways,
//! the order book, fault injection.

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;
use wxpay_shared::state::{OrderState, TradeState};
use wxpay_shared::v2::{self, SignType, XmlFields};
use wxpay_shared::v3::{
    authorization_header, verify_response, PrivateKey, TimestampCheck, Transaction, VerifyError,
    WechatpayHeaders,
};
use wxpay_simulator::build::random_string;
use wxpay_simulator::secrets::SimMerchant;
use wxpay_simulator::serve;

use crate::helpers::Fixture;

struct Sim {
    base: String,
    handle: actix_web::dev::ServerHandle,
    client: reqwest::Client,
    _fixture: Fixture,
    m: SimMerchant,
}

impl Sim {
    fn start() -> Self {
        let fixture = Fixture::new();
        let m = fixture.merchant.clone();
        let (server, addr) = serve::bind(m.clone(), "127.0.0.1:0").unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base: format!("http://{addr}"),
            handle,
            client: reqwest::Client::new(),
            _fixture: fixture,
            m,
        }
    }

    async fn admin(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A v3 GET signed by the merchant (or with `key` instead of its key).
    async fn v3_get(&self, path_and_query: &str, key: Option<&PrivateKey>) -> reqwest::Response {
        let auth = authorization_header(
            &self.m.mch_id,
            &self.m.merchant_serial,
            key.unwrap_or(&self.m.merchant_private_key),
            "GET",
            path_and_query,
            Utc::now().timestamp(),
            &random_string(32),
            b"",
        );
        self.client
            .get(format!("{}{path_and_query}", self.base))
            .header("Authorization", auth)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    async fn v2_post(
        &self,
        path: &str,
        mut fields: XmlFields,
        sign_type: SignType,
    ) -> (StatusCode, XmlFields) {
        fields.insert("appid", self.m.appid.as_str());
        fields.insert("mch_id", self.m.mch_id.as_str());
        fields.insert("nonce_str", random_string(32));
        if sign_type == SignType::HmacSha256 {
            fields.insert("sign_type", "HMAC-SHA256");
        }
        let sign = v2::sign(&fields, &self.m.api_v2_key, sign_type);
        fields.insert("sign", sign);
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "text/xml")
            .body(fields.to_xml())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        (status, XmlFields::parse(&body).unwrap())
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Verifies a v3 response's signature with the platform public key; returns the body.
async fn verified_body(
    m: &SimMerchant,
    response: reqwest::Response,
) -> Result<(StatusCode, Vec<u8>), VerifyError> {
    let status = response.status();
    let header_map = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    let headers =
        WechatpayHeaders::from_lookup(|name| header_map.get(name).and_then(|v| v.to_str().ok()))
            .expect("Wechatpay headers on the response");
    verify_response(&headers, &body, &m.platform_keys(), TimestampCheck::now())?;
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_query_is_authenticated_and_its_answer_signed() {
    let sim = Sim::start();
    let r = sim
        .admin(
            "/sim/orders",
            json!({"out_trade_no": "Q-1", "amount": 4200}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let staged: serde_json::Value = r.json().await.unwrap();

    let path = format!(
        "/v3/pay/transactions/out-trade-no/Q-1?mchid={}",
        sim.m.mch_id
    );
    let (status, body) = verified_body(&sim.m, sim.v3_get(&path, None).await)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let t = Transaction::parse(&body).unwrap();
    assert!(t.is_success());
    assert_eq!(t.amount.map(|a| a.total), Some(4200));
    assert_eq!(
        Some(t.transaction_id.as_str()),
        staged["transaction_id"].as_str()
    );

    // By transaction id too.
    let path = format!(
        "/v3/pay/transactions/id/{}?mchid={}",
        t.transaction_id, sim.m.mch_id
    );
    let (status, _) = verified_body(&sim.m, sim.v3_get(&path, None).await)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Unknown order: 404 ORDER_NOT_EXIST, still signed.
    let path = format!(
        "/v3/pay/transactions/out-trade-no/NOPE?mchid={}",
        sim.m.mch_id
    );
    let (status, body) = verified_body(&sim.m, sim.v3_get(&path, None).await)
        .await
        .unwrap();
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "ORDER_NOT_EXIST");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_authorization_is_401() {
    let sim = Sim::start();
    let path = format!(
        "/v3/pay/transactions/out-trade-no/Q-1?mchid={}",
        sim.m.mch_id
    );
    // Signed with another key (the platform's).
    let r = sim.v3_get(&path, Some(&sim.m.platform_private_key)).await;
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "SIGN_ERROR");
    // No header at all.
    let r = sim
        .client
        .get(format!("{}{path}", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Signed for another URL (the query string is part of the signed message).
    let auth = authorization_header(
        &sim.m.mch_id,
        &sim.m.merchant_serial,
        &sim.m.merchant_private_key,
        "GET",
        "/v3/pay/transactions/out-trade-no/Q-1",
        Utc::now().timestamp(),
        "nonce",
        b"",
    );
    let r = sim
        .client
        .get(format!("{}{path}", sim.base))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Old timestamp.
    let auth = authorization_header(
        &sim.m.mch_id,
        &sim.m.merchant_serial,
        &sim.m.merchant_private_key,
        "GET",
        &path,
        Utc::now().timestamp() - 3600,
        "nonce",
        b"",
    );
    let r = sim
        .client
        .get(format!("{}{path}", sim.base))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_orderquery_is_signed_both_ways() {
    let sim = Sim::start();
    sim.admin("/sim/orders", json!({"out_trade_no": "Q-2", "amount": 100}))
        .await;
    sim.admin(
        "/sim/orders",
        json!({"out_trade_no": "Q-3", "amount": 300, "state": TradeState::NotPay.as_str()}),
    )
    .await;
    for sign_type in [SignType::Md5, SignType::HmacSha256] {
        let mut q = XmlFields::new();
        q.insert("out_trade_no", "Q-2");
        let (status, answer) = sim.v2_post("/pay/orderquery", q, sign_type).await;
        assert_eq!(status, 200);
        assert_eq!(v2::verify(&answer, &sim.m.api_v2_key), Ok(sign_type));
        assert_eq!(answer.get("return_code"), Some("SUCCESS"));
        assert_eq!(answer.get("result_code"), Some("SUCCESS"));
        assert_eq!(answer.get("trade_state"), Some("SUCCESS"));
        assert_eq!(answer.get("total_fee"), Some("100"));
        assert!(answer.get("transaction_id").is_some() && answer.get("time_end").is_some());
    }
    let mut q = XmlFields::new();
    q.insert("out_trade_no", "Q-3");
    let (_, answer) = sim.v2_post("/pay/orderquery", q, SignType::Md5).await;
    assert_eq!(answer.get("trade_state"), Some(TradeState::NotPay.as_str()));
    assert!(answer.get("transaction_id").is_none());

    let mut q = XmlFields::new();
    q.insert("out_trade_no", "NOPE");
    let (_, answer) = sim.v2_post("/pay/orderquery", q, SignType::Md5).await;
    assert_eq!(v2::verify(&answer, &sim.m.api_v2_key), Ok(SignType::Md5));
    assert_eq!(answer.get("result_code"), Some("FAIL"));
    assert_eq!(answer.get("err_code"), Some("ORDERNOTEXIST"));

    // A request signed with a wrong key: return_code FAIL.
    let mut q = XmlFields::new();
    q.insert("appid", sim.m.appid.as_str());
    q.insert("mch_id", sim.m.mch_id.as_str());
    q.insert("nonce_str", "abc");
    q.insert("out_trade_no", "Q-2");
    let sign = v2::sign(&q, &random_string(32), SignType::Md5);
    q.insert("sign", sign);
    let r = sim
        .client
        .post(format!("{}/pay/orderquery", sim.base))
        .body(q.to_xml())
        .send()
        .await
        .unwrap();
    let answer = XmlFields::parse(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.get("return_code"), Some("FAIL"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_queries_v2_and_v3() {
    let sim = Sim::start();
    sim.admin(
        "/sim/orders",
        json!({"out_trade_no": "Q-4", "amount": 1000}),
    )
    .await;
    let r = sim
        .admin(
            "/sim/refunds",
            json!({"out_trade_no": "Q-4", "out_refund_no": "RF-4", "refund_fee": 250}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = sim
        .admin(
            "/sim/refunds",
            json!({"out_trade_no": "NOPE", "out_refund_no": "RF-X", "refund_fee": 1}),
        )
        .await;
    assert_eq!(r.status(), 400);

    let mut q = XmlFields::new();
    q.insert("out_refund_no", "RF-4");
    let (_, answer) = sim.v2_post("/pay/refundquery", q, SignType::Md5).await;
    assert_eq!(v2::verify(&answer, &sim.m.api_v2_key), Ok(SignType::Md5));
    assert_eq!(answer.get("refund_count"), Some("1"));
    assert_eq!(answer.get("refund_fee_0"), Some("250"));
    assert_eq!(answer.get("refund_status_0"), Some("SUCCESS"));
    let mut q = XmlFields::new();
    q.insert("out_refund_no", "RF-NONE");
    let (_, answer) = sim.v2_post("/pay/refundquery", q, SignType::Md5).await;
    assert_eq!(answer.get("err_code"), Some("REFUNDNOTEXIST"));

    let (status, body) = verified_body(
        &sim.m,
        sim.v3_get("/v3/refund/domestic/refunds/RF-4", None).await,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "SUCCESS");
    assert_eq!(v["amount"]["refund"], 250);
    let refund = wxpay_shared::v3::RefundResource::parse(&body).unwrap();
    assert_eq!(refund.out_trade_no, "Q-4");
    // The order moved to REFUND.
    let path = format!(
        "/v3/pay/transactions/out-trade-no/Q-4?mchid={}",
        sim.m.mch_id
    );
    let (_, body) = verified_body(&sim.m, sim.v3_get(&path, None).await)
        .await
        .unwrap();
    assert_eq!(Transaction::parse(&body).unwrap().trade_state, "REFUND");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_make_the_api_fail_or_sign_badly() {
    let sim = Sim::start();
    sim.admin("/sim/orders", json!({"out_trade_no": "Q-5", "amount": 1}))
        .await;
    let path = format!(
        "/v3/pay/transactions/out-trade-no/Q-5?mchid={}",
        sim.m.mch_id
    );

    assert_eq!(
        sim.admin("/sim/faults", json!({"status": 500}))
            .await
            .status(),
        200
    );
    assert_eq!(sim.v3_get(&path, None).await.status(), 500);
    let mut q = XmlFields::new();
    q.insert("out_trade_no", "Q-5");
    let r = sim
        .client
        .post(format!("{}/pay/orderquery", sim.base))
        .body(q.to_xml())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    assert_eq!(
        sim.admin("/sim/faults", json!({"bad_signature": true}))
            .await
            .status(),
        200
    );
    let r = sim.v3_get(&path, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        verified_body(&sim.m, r).await.unwrap_err(),
        VerifyError::SignatureMismatch
    );
    let mut q = XmlFields::new();
    q.insert("out_trade_no", "Q-5");
    let (_, answer) = sim.v2_post("/pay/orderquery", q, SignType::Md5).await;
    assert!(v2::verify(&answer, &sim.m.api_v2_key).is_err());

    assert_eq!(
        sim.admin("/sim/faults", json!({"status": 99}))
            .await
            .status(),
        400
    );
    assert_eq!(sim.admin("/sim/faults", json!({})).await.status(), 200);
    let (status, _) = verified_body(&sim.m, sim.v3_get(&path, None).await)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Every order query was counted, the faulted ones too (v3 and v2 each twice, then once).
    let counted: serde_json::Value = sim
        .client
        .get(format!("{}/sim/queries", sim.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counted, json!({"orders": {"Q-5": 5}}));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_order_stages_what_serve_answers() {
    let sim = Sim::start();
    let sim_config = sim._fixture.sim_config();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wxpay-sim"))
            .arg("--sim-config")
            .arg(&sim_config)
            .args([
                "order",
                "--out-trade-no",
                "STAGED-1",
                "--amount",
                "880",
                "--state",
                "SUCCESS",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = format!(
        "/v3/pay/transactions/out-trade-no/STAGED-1?mchid={}",
        sim.m.mch_id
    );
    let (status, body) = verified_body(&sim.m, sim.v3_get(&path, None).await)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        Transaction::parse(&body).unwrap().amount.map(|a| a.total),
        Some(880)
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_wxpay-sim"))
        .arg("--sim-config")
        .arg(sim._fixture.sim_config())
        .args([
            "order",
            "--out-trade-no",
            "X",
            "--amount",
            "1",
            "--state",
            // An order state of our tables, not one of WeChat Pay's trade states.
            OrderState::Paid.as_str(),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    sim.stop().await;
}
