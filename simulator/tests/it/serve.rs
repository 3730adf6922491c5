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
    fixture: Fixture,
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
            fixture,
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

    /// Stages a paid order at "WeChat Pay".
    async fn stage_order(&self, out_trade_no: &str, amount: i64) -> reqwest::Response {
        let order = json!({"out_trade_no": out_trade_no, "amount": amount});
        self.admin("/sim/orders", order).await
    }

    /// The v3 query path of order `out_trade_no`.
    fn order_path(&self, out_trade_no: &str) -> String {
        format!(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={}",
            self.m.mch_id
        )
    }

    /// The merchant's `Authorization` of a GET of `signed_path`, signed with `key`.
    fn authorization(&self, key: &PrivateKey, signed_path: &str, timestamp: i64) -> String {
        authorization_header(
            &self.m.mch_id,
            &self.m.merchant_serial,
            key,
            "GET",
            signed_path,
            timestamp,
            &random_string(32),
            b"",
        )
    }

    /// A GET of `path_and_query` with `authorization`, if any.
    async fn get(&self, path_and_query: &str, authorization: Option<String>) -> reqwest::Response {
        let mut request = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .header("Accept", "application/json");
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        request.send().await.unwrap()
    }

    /// A v3 GET signed by the merchant (or with `key` instead of its key).
    async fn v3_get(&self, path_and_query: &str, key: Option<&PrivateKey>) -> reqwest::Response {
        let key = key.unwrap_or(&self.m.merchant_private_key);
        let auth = self.authorization(key, path_and_query, Utc::now().timestamp());
        self.get(path_and_query, Some(auth)).await
    }

    /// A v3 GET signed by the merchant, whose answer must verify: its status and body.
    async fn v3_query(&self, path_and_query: &str) -> (StatusCode, Vec<u8>) {
        let response = self.v3_get(path_and_query, None).await;
        verified_body(&self.m, response).await.unwrap()
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

    /// A v2 query at `path` for the one `field`, signed with `sign_type`.
    async fn v2_query(
        &self,
        path: &str,
        field: (&str, &str),
        sign_type: SignType,
    ) -> (StatusCode, XmlFields) {
        self.v2_post(path, unsigned(field), sign_type).await
    }

    /// [`Sim::v2_query`] answered 200 and signed with `sign_type` under the merchant's key,
    /// as every answer that is not a `return_code` FAIL must be.
    async fn signed_answer(
        &self,
        path: &str,
        field: (&str, &str),
        sign_type: SignType,
    ) -> XmlFields {
        let (status, answer) = self.v2_query(path, field, sign_type).await;
        assert_eq!(status, 200);
        assert_eq!(v2::verify(&answer, &self.m.api_v2_key), Ok(sign_type));
        answer
    }

    /// POSTs `fields` to /pay/orderquery as they are (not signed by this merchant).
    async fn raw_orderquery(&self, fields: &XmlFields) -> reqwest::Response {
        self.client
            .post(format!("{}/pay/orderquery", self.base))
            .body(fields.to_xml())
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// One field, unsigned.
fn unsigned((name, value): (&str, &str)) -> XmlFields {
    let mut fields = XmlFields::new();
    fields.insert(name, value);
    fields
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
    let r = sim.stage_order("Q-1", 4200).await;
    assert_eq!(r.status(), 200);
    let staged: serde_json::Value = r.json().await.unwrap();

    let (status, body) = sim.v3_query(&sim.order_path("Q-1")).await;
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
    assert_eq!(sim.v3_query(&path).await.0, 200);

    // Unknown order: 404 ORDER_NOT_EXIST, still signed.
    let (status, body) = sim.v3_query(&sim.order_path("NOPE")).await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "ORDER_NOT_EXIST");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_authorization_is_401() {
    let sim = Sim::start();
    let path = sim.order_path("Q-1");
    // Signed with another key (the platform's).
    let r = sim.v3_get(&path, Some(&sim.m.platform_private_key)).await;
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "SIGN_ERROR");
    let key = &sim.m.merchant_private_key;
    let now = Utc::now().timestamp();
    let unauthorized = [
        ("no header at all", None),
        // The query string is part of the signed message.
        (
            "signed for another URL",
            Some(sim.authorization(key, "/v3/pay/transactions/out-trade-no/Q-1", now)),
        ),
        (
            "an old timestamp",
            Some(sim.authorization(key, &path, now - 3600)),
        ),
    ];
    for (what, authorization) in unauthorized {
        assert_eq!(sim.get(&path, authorization).await.status(), 401, "{what}");
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_orderquery_is_signed_both_ways() {
    let sim = Sim::start();
    sim.stage_order("Q-2", 100).await;
    sim.admin(
        "/sim/orders",
        json!({"out_trade_no": "Q-3", "amount": 300, "state": TradeState::NotPay.as_str()}),
    )
    .await;
    for sign_type in [SignType::Md5, SignType::HmacSha256] {
        let answer = sim
            .signed_answer("/pay/orderquery", ("out_trade_no", "Q-2"), sign_type)
            .await;
        assert_eq!(answer.get("return_code"), Some("SUCCESS"));
        assert_eq!(answer.get("result_code"), Some("SUCCESS"));
        assert_eq!(answer.get("trade_state"), Some("SUCCESS"));
        assert_eq!(answer.get("total_fee"), Some("100"));
        assert!(answer.get("transaction_id").is_some() && answer.get("time_end").is_some());
    }
    let answer = sim
        .signed_answer("/pay/orderquery", ("out_trade_no", "Q-3"), SignType::Md5)
        .await;
    assert_eq!(answer.get("trade_state"), Some(TradeState::NotPay.as_str()));
    assert!(answer.get("transaction_id").is_none());

    let answer = sim
        .signed_answer("/pay/orderquery", ("out_trade_no", "NOPE"), SignType::Md5)
        .await;
    assert_eq!(answer.get("result_code"), Some("FAIL"));
    assert_eq!(answer.get("err_code"), Some("ORDERNOTEXIST"));

    // A request signed with a wrong key: return_code FAIL.
    let mut q = unsigned(("appid", sim.m.appid.as_str()));
    q.insert("mch_id", sim.m.mch_id.as_str());
    q.insert("nonce_str", "abc");
    q.insert("out_trade_no", "Q-2");
    let sign = v2::sign(&q, &random_string(32), SignType::Md5);
    q.insert("sign", sign);
    let r = sim.raw_orderquery(&q).await;
    let answer = XmlFields::parse(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.get("return_code"), Some("FAIL"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_queries_v2_and_v3() {
    let sim = Sim::start();
    sim.stage_order("Q-4", 1000).await;
    let refunds = [
        (
            json!({"out_trade_no": "Q-4", "out_refund_no": "RF-4", "refund_fee": 250}),
            200,
        ),
        (
            json!({"out_trade_no": "NOPE", "out_refund_no": "RF-X", "refund_fee": 1}),
            400,
        ),
    ];
    for (refund, status) in refunds {
        assert_eq!(sim.admin("/sim/refunds", refund).await.status(), status);
    }

    let answer = sim
        .signed_answer("/pay/refundquery", ("out_refund_no", "RF-4"), SignType::Md5)
        .await;
    assert_eq!(answer.get("refund_count"), Some("1"));
    assert_eq!(answer.get("refund_fee_0"), Some("250"));
    assert_eq!(answer.get("refund_status_0"), Some("SUCCESS"));
    let answer = sim
        .signed_answer(
            "/pay/refundquery",
            ("out_refund_no", "RF-NONE"),
            SignType::Md5,
        )
        .await;
    assert_eq!(answer.get("err_code"), Some("REFUNDNOTEXIST"));

    let (status, body) = sim.v3_query("/v3/refund/domestic/refunds/RF-4").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "SUCCESS");
    assert_eq!(v["amount"]["refund"], 250);
    let refund = wxpay_shared::v3::RefundResource::parse(&body).unwrap();
    assert_eq!(refund.out_trade_no, "Q-4");
    // The order moved to REFUND.
    let (_, body) = sim.v3_query(&sim.order_path("Q-4")).await;
    assert_eq!(Transaction::parse(&body).unwrap().trade_state, "REFUND");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_make_the_api_fail_or_sign_badly() {
    let sim = Sim::start();
    sim.stage_order("Q-5", 1).await;
    let path = sim.order_path("Q-5");
    let fault = |fault: serde_json::Value| async { sim.admin("/sim/faults", fault).await.status() };

    assert_eq!(fault(json!({"status": 500})).await, 200);
    assert_eq!(sim.v3_get(&path, None).await.status(), 500);
    let r = sim.raw_orderquery(&unsigned(("out_trade_no", "Q-5"))).await;
    assert_eq!(r.status(), 500);

    assert_eq!(fault(json!({"bad_signature": true})).await, 200);
    let r = sim.v3_get(&path, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        verified_body(&sim.m, r).await.unwrap_err(),
        VerifyError::SignatureMismatch
    );
    let (_, answer) = sim
        .v2_query("/pay/orderquery", ("out_trade_no", "Q-5"), SignType::Md5)
        .await;
    assert!(v2::verify(&answer, &sim.m.api_v2_key).is_err());

    assert_eq!(fault(json!({"status": 99})).await, 400);
    assert_eq!(fault(json!({})).await, 200);
    assert_eq!(sim.v3_query(&path).await.0, 200);

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

/// `wxpay-sim --sim-config <the fixture's> order <args>`.
fn cli_order(fixture: &Fixture, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wxpay-sim"))
        .arg("--sim-config")
        .arg(fixture.sim_config())
        .arg("order")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_order_stages_what_serve_answers() {
    let sim = Sim::start();
    let staged = [
        "--out-trade-no",
        "STAGED-1",
        "--amount",
        "880",
        "--state",
        "SUCCESS",
    ];
    let out = tokio::task::block_in_place(|| cli_order(&sim.fixture, &staged));
    assert!(out.status.success(), "{out:?}");
    let (status, body) = sim.v3_query(&sim.order_path("STAGED-1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        Transaction::parse(&body).unwrap().amount.map(|a| a.total),
        Some(880)
    );
    // An order state of our tables, not one of WeChat Pay's trade states.
    let paid = OrderState::Paid.as_str();
    let bad = ["--out-trade-no", "X", "--amount", "1", "--state", paid];
    assert!(!cli_order(&sim.fixture, &bad).status.success());
    sim.stop().await;
}
