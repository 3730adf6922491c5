//! A mock of the WeChat Pay query API, for the reconciler and demos.
//!
//! - v2 `POST /pay/orderquery` (查询订单, <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_2>)
//!   and `POST /pay/refundquery` (查询退款, <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_5>):
//!   signed XML both ways with the API v2 key.
//! - v3 `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=` and
//!   `GET /v3/pay/transactions/id/{transaction_id}?mchid=`
//!   (<https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/query-by-out-trade-no.html>) and
//!   `GET /v3/refund/domestic/refunds/{out_refund_no}`
//!   (<https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/query-by-out-refund-no.html>):
//!   the merchant's `Authorization` is verified with its public key, every answer is signed
//!   with the platform key (`Wechatpay-*` headers over `timestamp\nnonce\nbody\n`; the last
//!   platform certificate's key when the secrets file has certificates).
//! - v3 `GET /v3/certificates` (<https://pay.weixin.qq.com/doc/v3/merchant/4012551764>): every
//!   platform certificate of the secrets file, encrypted with the APIv3 key, signed like
//!   the other answers.
//! - A service provider's (`init --partner`) queries about a sub-merchant: v2 with
//!   `sub_mch_id` (<https://pay.weixin.qq.com/wiki/doc/api/jsapi_sl.php?chapter=9_2>), v3
//!   `GET /v3/pay/partner/transactions/out-trade-no/{out_trade_no}?sp_mchid=&sub_mchid=`
//!   (<https://pay.weixin.qq.com/docs/partner/apis/partner-jsapi-payment/query-by-out-trade-no.html>)
//!   and `GET /v3/refund/domestic/refunds/{out_refund_no}?sub_mchid=`, answered from that
//!   sub-merchant's book in the partner form (the refund answer names no `sub_mchid`).
//!
//! Admin endpoints (not WeChat Pay's): `POST /sim/orders`, `POST /sim/refunds` stage the order
//! book ("paid but never notified"); `GET /sim/orders` shows it; `POST /sim/faults`
//! `{"status":500}` / `{"bad_signature":true}` / `{}` makes the API fail or sign badly, and
//! `GET /sim/faults` shows the current faults. `GET /sim/queries` counts the order queries
//! received, by the order asked about (`{"orders":{"T1":2}}`; faulted ones too), so a test
//! can tell whether, and how often, a service asked. `GET /healthz` answers 200.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wxpay_shared::state::{RefundStatus, TradeState};
use wxpay_shared::v2::{self, SignType, XmlFields};
use wxpay_shared::v3;

use crate::build::{self, random_string};
use crate::orders::{OrderBook, OrderBookFile, OrderRecord, RefundRecord, REFUND_STATES};
use crate::secrets::SimMerchant;

/// How far the `Authorization` timestamp may be from now (WeChat Pay rejects old requests).
const MAX_AUTH_SKEW_SECS: i64 = 300;

/// Faults to inject into the query API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Answer every query with this HTTP status (e.g. 500) and no signature.
    #[serde(default)]
    pub status: Option<u16>,
    /// Sign answers with a key that is not the platform's (v3) / not the API v2 key (v2).
    #[serde(default)]
    pub bad_signature: bool,
}

/// A book as last read, with the file's modification time then.
type CachedBook = (Option<SystemTime>, Arc<OrderBook>);

/// Shared state of the server.
pub struct SimState {
    merchant: SimMerchant,
    book: OrderBookFile,
    /// Each book (the merchant's, its sub-merchants') as last read, with the file's
    /// modification time then.
    cache: Mutex<HashMap<PathBuf, CachedBook>>,
    faults: Mutex<Faults>,
    /// Order queries received, by `out_trade_no` (or `transaction_id`) asked about.
    order_queries: Mutex<BTreeMap<String, u64>>,
}

impl SimState {
    pub fn new(merchant: SimMerchant) -> Self {
        let book = OrderBookFile::new(merchant.orders_path.clone());
        Self {
            merchant,
            book,
            cache: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            order_queries: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an order query about `order` (before any fault: it was asked all the same).
    fn count_order_query(&self, order: Option<&str>) {
        if let Ok(mut counts) = self.order_queries.lock() {
            *counts
                .entry(order.unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }

    /// The merchant's book, re-read when the file changed since the last read.
    fn book(&self) -> Result<Arc<OrderBook>, crate::orders::OrderBookError> {
        self.book_of(&self.merchant)
    }

    /// The book of `m` (the merchant, or it acting for a sub-merchant), re-read when the
    /// file changed since the last read.
    fn book_of(&self, m: &SimMerchant) -> Result<Arc<OrderBook>, crate::orders::OrderBookError> {
        let file = OrderBookFile::new(m.orders_path.clone());
        let modified = file.modified();
        if let Ok(cache) = self.cache.lock() {
            if let Some((when, book)) = cache.get(&m.orders_path) {
                if *when == modified && modified.is_some() {
                    return Ok(book.clone());
                }
            }
        }
        let book = Arc::new(file.read()?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(m.orders_path.clone(), (modified, book.clone()));
        }
        Ok(book)
    }

    fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    /// The merchant, acting for the sub-merchant a query names (none or empty: itself).
    fn acting(&self, sub_mch_id: Option<&str>) -> Result<Cow<'_, SimMerchant>, String> {
        match sub_mch_id.filter(|id| !id.is_empty()) {
            None => Ok(Cow::Borrowed(&self.merchant)),
            Some(id) => self.merchant.for_sub_merchant(id).map(Cow::Owned),
        }
    }

    fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// Binds `listen` (e.g. `127.0.0.1:8090`, or port 0) and returns the running server with its
/// address; the caller awaits or spawns the server.
pub fn bind(
    merchant: SimMerchant,
    listen: &str,
) -> std::io::Result<(actix_web::dev::Server, std::net::SocketAddr)> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let state = web::Data::new(SimState::new(merchant));
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .workers(2)
        .listen(listener)?
        .run();
    Ok((server, addr))
}

/// The v3 paths that query one order: a direct merchant's and a service provider's by
/// `out_trade_no`, and by `transaction_id` (one handler reads whichever the path names).
const V3_ORDER_QUERY_PATHS: [&str; 3] = [
    "/v3/pay/transactions/out-trade-no/{out_trade_no}",
    "/v3/pay/partner/transactions/out-trade-no/{out_trade_no}",
    "/v3/pay/transactions/id/{transaction_id}",
];

/// The routes, for [`bind`] and for in-process tests.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for path in V3_ORDER_QUERY_PATHS {
        cfg.route(path, web::get().to(v3_query_order));
    }
    cfg.route(
        "/healthz",
        web::get().to(|| async { HttpResponse::Ok().body("ok") }),
    )
    .route("/pay/orderquery", web::post().to(v2_orderquery))
    .route("/pay/refundquery", web::post().to(v2_refundquery))
    .route(
        "/v3/refund/domestic/refunds/{out_refund_no}",
        web::get().to(v3_refund_query),
    )
    .route(
        "/v3/combine-transactions/out-trade-no/{combine_out_trade_no}",
        web::get().to(v3_combine_query),
    )
    .route(
        v3::certificates::CERTIFICATES_PATH,
        web::get().to(v3_certificates),
    )
    .route("/sim/orders", web::post().to(admin_put_order))
    .route("/sim/orders", web::get().to(admin_get_orders))
    .route("/sim/refunds", web::post().to(admin_put_refund))
    .route("/sim/faults", web::post().to(admin_put_faults))
    .route("/sim/faults", web::get().to(admin_get_faults))
    .route("/sim/queries", web::get().to(admin_get_queries));
}

fn fault_response(faults: &Faults) -> Option<HttpResponse> {
    let status = StatusCode::from_u16(faults.status?).ok()?;
    Some(
        HttpResponse::build(status)
            .content_type("application/json")
            .body(json!({"code":"SYSTEM_ERROR","message":"simulated fault"}).to_string()),
    )
}

fn book_error(e: impl std::fmt::Display) -> HttpResponse {
    system_error("order book unavailable", e)
}

/// A 500 `SYSTEM_ERROR` saying `what`, logged with the error.
fn system_error(what: &str, e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "{what}");
    HttpResponse::InternalServerError()
        .content_type("application/json")
        .body(json!({"code":"SYSTEM_ERROR","message":what}).to_string())
}

// ---------------------------------------------------------------- v2

fn v2_xml(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .body(body)
}

/// An unsigned `return_code` FAIL answer (communication-level error, as WeChat Pay sends).
fn v2_return_fail(msg: &str) -> HttpResponse {
    let mut f = XmlFields::new();
    f.insert("return_code", "FAIL");
    f.insert("return_msg", msg);
    v2_xml(f.to_xml())
}

/// Signs `fields` with the merchant's key (or a wrong one under the `bad_signature` fault).
fn v2_signed(state: &SimState, mut fields: XmlFields, sign_type: SignType) -> HttpResponse {
    let key = if state.faults().bad_signature {
        random_string(32)
    } else {
        state.merchant.api_v2_key.clone()
    };
    fields.insert("nonce_str", random_string(32));
    if sign_type == SignType::HmacSha256 {
        fields.insert("sign_type", sign_type.as_str());
    }
    let sign = v2::sign(&fields, &key, sign_type);
    fields.insert("sign", sign);
    v2_xml(fields.to_xml())
}

/// Parses and authenticates a v2 request; `Err` is the `return_msg` of the FAIL answer.
fn v2_request(state: &SimState, body: &[u8]) -> Result<(XmlFields, SignType), &'static str> {
    let fields = XmlFields::parse(body).map_err(|_| "XML格式错误")?;
    let m = &state.merchant;
    if fields.get("mch_id") != Some(m.mch_id.as_str()) {
        return Err("mch_id参数错误");
    }
    let sign_type = v2::verify(&fields, &m.api_v2_key).map_err(|_| "签名错误")?;
    if fields.get("nonce_str").is_none_or(str::is_empty) {
        return Err("nonce_str参数错误");
    }
    Ok((fields, sign_type))
}

/// `return_code` SUCCESS with the merchant's ids, before the business fields.
fn v2_base(m: &SimMerchant, result_code: &str) -> XmlFields {
    let mut f = XmlFields::new();
    f.insert("return_code", "SUCCESS");
    f.insert("return_msg", "OK");
    f.insert("appid", m.appid.as_str());
    f.insert("mch_id", m.mch_id.as_str());
    build::name_sub_merchant(&mut f, m);
    f.insert("result_code", result_code);
    f
}

fn v2_business_fail(m: &SimMerchant, code: &str, des: &str) -> XmlFields {
    let mut f = v2_base(m, "FAIL");
    f.insert("err_code", code);
    f.insert("err_code_des", des);
    f
}

fn trade_state_desc(state: TradeState) -> &'static str {
    match state {
        TradeState::Success => "支付成功",
        TradeState::Refund => "转入退款",
        TradeState::NotPay => "订单未支付",
        TradeState::Closed => "订单已关闭",
        TradeState::Revoked => "已撤销",
        TradeState::UserPaying => "用户支付中",
        TradeState::PayError => "支付失败",
    }
}

/// Answers a v2 query: the simulated fault, `return_code` FAIL for a request that does not
/// authenticate, or what `answer` makes of the request and the order book (its `Err` a
/// `return_msg`), signed.
fn v2_query(
    state: &SimState,
    body: &[u8],
    answer: impl FnOnce(&SimMerchant, &XmlFields, &OrderBook) -> Result<XmlFields, &'static str>,
) -> HttpResponse {
    if let Some(r) = fault_response(&state.faults()) {
        return r;
    }
    let (req, sign_type) = match v2_request(state, body) {
        Ok(r) => r,
        Err(msg) => return v2_return_fail(msg),
    };
    // A service provider's query about a sub-merchant: that sub-merchant's book (the
    // simulator's own wording when it is not one of the provider's).
    let Ok(m) = state.acting(req.get("sub_mch_id")) else {
        let f = v2_business_fail(&state.merchant, "PARAM_ERROR", "sub_mch_id与mch_id不匹配");
        return v2_signed(state, f, sign_type);
    };
    let book = match state.book_of(&m) {
        Ok(b) => b,
        Err(e) => return book_error(e),
    };
    match answer(&m, &req, &book) {
        Ok(fields) => v2_signed(state, fields, sign_type),
        Err(msg) => v2_return_fail(msg),
    }
}

async fn v2_orderquery(state: web::Data<SimState>, body: web::Bytes) -> HttpResponse {
    let asked = XmlFields::parse(&body).ok();
    state.count_order_query(asked.as_ref().and_then(|fields| {
        fields
            .get("out_trade_no")
            .or_else(|| fields.get("transaction_id"))
    }));
    v2_query(&state, &body, |m, req, book| {
        if req.get("appid") != Some(m.appid.as_str()) {
            return Ok(v2_business_fail(
                m,
                "APPID_MCHID_NOT_MATCH",
                "appid和mch_id不匹配",
            ));
        }
        Ok(v2_order(m, req, book))
    })
}

/// The 查询订单 answer of an authenticated request with the right appid.
fn v2_order(m: &SimMerchant, req: &XmlFields, book: &OrderBook) -> XmlFields {
    let found = book.find_order(
        req.get("out_trade_no").filter(|s| !s.is_empty()),
        req.get("transaction_id").filter(|s| !s.is_empty()),
    );
    match found {
        None => v2_business_fail(m, "ORDERNOTEXIST", "此交易订单号不存在"),
        Some(o) => {
            let mut f = v2_base(m, "SUCCESS");
            f.insert("out_trade_no", o.out_trade_no.as_str());
            f.insert("total_fee", o.amount.to_string());
            f.insert("fee_type", "CNY");
            f.insert("trade_type", "JSAPI");
            f.insert("trade_state", o.state.as_str());
            f.insert("trade_state_desc", trade_state_desc(o.state));
            if o.state.is_paid() {
                f.insert(
                    "openid",
                    o.openid
                        .as_deref()
                        .unwrap_or("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                );
                f.insert("is_subscribe", "N");
                f.insert("bank_type", "CMC");
                f.insert("cash_fee", o.amount.to_string());
                if let Some(tid) = &o.transaction_id {
                    f.insert("transaction_id", tid.as_str());
                }
                if let Some(t) = o.paid_at {
                    f.insert("time_end", build::v2_time(t));
                }
            }
            f
        }
    }
}

async fn v2_refundquery(state: web::Data<SimState>, body: web::Bytes) -> HttpResponse {
    v2_query(&state, &body, v2_refunds)
}

/// The 查询退款 answer of an authenticated request; `Err` when it names no refund.
fn v2_refunds(
    m: &SimMerchant,
    req: &XmlFields,
    book: &OrderBook,
) -> Result<XmlFields, &'static str> {
    let nonempty = |k| req.get(k).filter(|s| !s.is_empty());
    // The four keys of the query, in WeChat Pay's priority: refund_id > out_refund_no >
    // transaction_id > out_trade_no.
    let refunds: Vec<&RefundRecord> = if let Some(id) = nonempty("refund_id") {
        book.refunds
            .values()
            .filter(|r| r.refund_id == id)
            .collect()
    } else if let Some(no) = nonempty("out_refund_no") {
        book.refunds.get(no).into_iter().collect()
    } else if let Some(tid) = nonempty("transaction_id") {
        book.refunds
            .values()
            .filter(|r| r.transaction_id == tid)
            .collect()
    } else if let Some(no) = nonempty("out_trade_no") {
        book.refunds_of(no)
    } else {
        return Err("out_refund_no、out_trade_no、transaction_id、refund_id必填其一");
    };
    let Some(first) = refunds.first() else {
        return Ok(v2_business_fail(m, "REFUNDNOTEXIST", "退款订单查询失败"));
    };
    let mut f = v2_base(m, "SUCCESS");
    f.insert("transaction_id", first.transaction_id.as_str());
    f.insert("out_trade_no", first.out_trade_no.as_str());
    f.insert("total_fee", first.total_fee.to_string());
    f.insert("cash_fee", first.total_fee.to_string());
    f.insert("refund_count", refunds.len().to_string());
    for (n, r) in refunds.iter().enumerate() {
        f.insert(format!("out_refund_no_{n}"), r.out_refund_no.as_str());
        f.insert(format!("refund_id_{n}"), r.refund_id.as_str());
        f.insert(format!("refund_channel_{n}"), "ORIGINAL");
        f.insert(format!("refund_fee_{n}"), r.refund_fee.to_string());
        f.insert(
            format!("settlement_refund_fee_{n}"),
            r.refund_fee.to_string(),
        );
        f.insert(format!("refund_status_{n}"), r.status.as_str());
        f.insert(
            format!("refund_account_{n}"),
            "REFUND_SOURCE_RECHARGE_FUNDS",
        );
        f.insert(format!("refund_recv_accout_{n}"), "支付用户零钱");
        if let Some(t) = r.succeeded_at {
            f.insert(format!("refund_success_time_{n}"), build::v2_refund_time(t));
        }
    }
    Ok(f)
}

// ---------------------------------------------------------------- v3

/// A v3 answer signed as WeChat Pay signs responses (or badly, under the fault).
fn v3_signed(state: &SimState, status: StatusCode, body: String) -> HttpResponse {
    let m = &state.merchant;
    let (platform_key, serial) = m.v3_signer();
    let key = if state.faults().bad_signature {
        &m.merchant_private_key
    } else {
        platform_key
    };
    let ts = Utc::now().timestamp().to_string();
    let nonce = random_string(32);
    let signature = v3::sign_notification(key, &ts, &nonce, body.as_bytes());
    HttpResponse::build(status)
        .content_type("application/json")
        .insert_header(("Request-ID", uuid::Uuid::new_v4().to_string()))
        .insert_header((v3::HEADER_TIMESTAMP, ts))
        .insert_header((v3::HEADER_NONCE, nonce))
        .insert_header((v3::HEADER_SIGNATURE, signature))
        .insert_header((v3::HEADER_SERIAL, serial.to_owned()))
        .insert_header((v3::HEADER_SIGNATURE_TYPE, v3::SIGNATURE_TYPE_RSA))
        .body(body)
}

fn v3_error(state: &SimState, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    v3_signed(
        state,
        status,
        json!({"code": code, "message": message}).to_string(),
    )
}

/// Checks the merchant's `Authorization` header: schema, mchid, serial, freshness, signature
/// over `method\nurl\ntimestamp\nnonce\nbody\n`
/// (<https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-generation.html>).
/// `Err` is the message of the 401 SIGN_ERROR answer.
fn authenticate(state: &SimState, req: &HttpRequest, body: &[u8]) -> Result<(), String> {
    let unauthorized = |message: &str| message.to_owned();
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("Authorization header is missing"))?;
    let params = v3::parse_authorization(header).map_err(|e| unauthorized(&e.to_string()))?;
    let m = &state.merchant;
    if params.mchid != m.mch_id {
        return Err(unauthorized("mchid in Authorization is not the merchant's"));
    }
    if params.serial_no != m.merchant_serial {
        return Err(unauthorized(
            "serial_no is not the merchant certificate's serial",
        ));
    }
    let ts: i64 = params
        .timestamp
        .parse()
        .map_err(|_| unauthorized("timestamp is not a number"))?;
    if (Utc::now().timestamp() - ts).abs() > MAX_AUTH_SKEW_SECS {
        return Err(unauthorized("timestamp is too far from now"));
    }
    let url = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| req.path());
    v3::verify_authorization(
        &params,
        &m.merchant_public_key,
        req.method().as_str(),
        url,
        body,
    )
    .map_err(|e| unauthorized(&format!("signature does not verify: {e}")))
}

/// The merchant parameters of a v3 query: `mchid` (a direct merchant), or `sp_mchid` and
/// `sub_mchid` (a provider's partner endpoint), or `sub_mchid` alone (a provider's refund).
#[derive(Deserialize)]
struct MchidQuery {
    mchid: Option<String>,
    sp_mchid: Option<String>,
    sub_mchid: Option<String>,
}

fn v3_transaction_json(m: &SimMerchant, o: &OrderRecord) -> serde_json::Value {
    let mut v = json!({
        "appid": m.appid,
        "mchid": m.mch_id,
        "out_trade_no": o.out_trade_no,
        "trade_state": o.state,
        "trade_state_desc": trade_state_desc(o.state),
        "attach": "",
        "amount": { "total": o.amount, "currency": "CNY" }
    });
    if o.state.is_paid() {
        v["transaction_id"] = json!(o.transaction_id);
        v["trade_type"] = json!("JSAPI");
        v["bank_type"] = json!("CMC");
        v["payer"] =
            json!({ "openid": o.openid.as_deref().unwrap_or("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o") });
        v["amount"] = json!({
            "total": o.amount, "payer_total": o.amount, "currency": "CNY", "payer_currency": "CNY"
        });
        if let Some(t) = o.paid_at {
            v["success_time"] = json!(build::v3_time(t));
        }
    }
    build::partner_form(v, m)
}

/// 查询订单 by `out_trade_no` or by `transaction_id`: the one its route names.
async fn v3_query_order(
    state: web::Data<SimState>,
    req: HttpRequest,
    query: web::Query<MchidQuery>,
) -> HttpResponse {
    let (state, req) = (&**state, &req);
    let out_trade_no = req.match_info().get("out_trade_no");
    let transaction_id = req.match_info().get("transaction_id");
    state.count_order_query(out_trade_no.or(transaction_id));
    if let Some(r) = fault_response(&state.faults()) {
        return r;
    }
    if let Err(message) = authenticate(state, req, b"") {
        return v3_error(state, StatusCode::UNAUTHORIZED, "SIGN_ERROR", &message);
    }
    // The direct endpoints take `mchid`; the partner one `sp_mchid` and `sub_mchid`.
    let own = Some(state.merchant.mch_id.as_str());
    let partner_endpoint = req.path().starts_with("/v3/pay/partner/");
    let direct = !partner_endpoint && query.mchid.as_deref() == own && query.sub_mchid.is_none();
    let partner = partner_endpoint && query.sp_mchid.as_deref() == own && query.sub_mchid.is_some();
    let acting = state.acting(query.sub_mchid.as_deref());
    let (true, Ok(m)) = (direct || partner, acting) else {
        return v3_error(
            state,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "mchid, or sp_mchid and sub_mchid, do not match",
        );
    };
    let m = m.as_ref();
    let book = match state.book_of(m) {
        Ok(b) => b,
        Err(e) => return book_error(e),
    };
    let found = book
        .find_order(out_trade_no, transaction_id)
        .filter(|o| transaction_id.is_none() || o.transaction_id.as_deref() == transaction_id);
    v3_order_answer(state, found.map(|o| v3_transaction_json(m, o)))
}

/// The order a v3 query found, signed; `ORDER_NOT_EXIST` (404) when it found none.
fn v3_order_answer(state: &SimState, found: Option<serde_json::Value>) -> HttpResponse {
    match found {
        Some(answer) => v3_signed(state, StatusCode::OK, answer.to_string()),
        None => v3_error(
            state,
            StatusCode::NOT_FOUND,
            "ORDER_NOT_EXIST",
            "订单不存在",
        ),
    }
}

/// 合单查询订单 (<https://pay.weixin.qq.com/doc/v3/merchant/4012557006>): the combine
/// payment as the book has it, signed; no query parameters (the `Authorization` names the
/// merchant).
async fn v3_combine_query(
    state: web::Data<SimState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let (state, combine_out_trade_no) = (&**state, path.into_inner());
    state.count_order_query(Some(&combine_out_trade_no));
    if let Some(r) = fault_response(&state.faults()) {
        return r;
    }
    if let Err(message) = authenticate(state, &req, b"") {
        return v3_error(state, StatusCode::UNAUTHORIZED, "SIGN_ERROR", &message);
    }
    let book = match state.book() {
        Ok(b) => b,
        Err(e) => return book_error(e),
    };
    let found = book
        .combines
        .get(&combine_out_trade_no)
        .map(|combine| json!(combine.transaction(&state.merchant, combine.first_amount())));
    v3_order_answer(state, found)
}

async fn v3_refund_query(
    state: web::Data<SimState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<MchidQuery>,
) -> HttpResponse {
    if let Some(r) = fault_response(&state.faults()) {
        return r;
    }
    if let Err(message) = authenticate(&state, &req, b"") {
        return v3_error(&state, StatusCode::UNAUTHORIZED, "SIGN_ERROR", &message);
    }
    let Ok(m) = state.acting(query.sub_mchid.as_deref()) else {
        return v3_error(
            &state,
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "sub_mchid is not a sub-merchant of the merchant",
        );
    };
    let book = match state.book_of(&m) {
        Ok(b) => b,
        Err(e) => return book_error(e),
    };
    let Some(r) = book.refunds.get(path.as_str()) else {
        return v3_error(
            &state,
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "退款单不存在",
        );
    };
    let mut v = json!({
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id,
        "out_trade_no": r.out_trade_no,
        "channel": "ORIGINAL",
        "user_received_account": "支付用户零钱",
        "create_time": build::v3_time(r.succeeded_at.unwrap_or_else(Utc::now)),
        // The normalised words are v3's spellings (SUCCESS, CLOSED, PROCESSING, ABNORMAL).
        "status": r.status.normalised().as_str(),
        "funds_account": "AVAILABLE",
        "amount": {
            "total": r.total_fee,
            "refund": r.refund_fee,
            "payer_total": r.total_fee,
            "payer_refund": r.refund_fee,
            "settlement_refund": r.refund_fee,
            "settlement_total": r.total_fee,
            "discount_refund": 0,
            "currency": "CNY"
        }
    });
    if let Some(t) = r.succeeded_at.filter(|_| r.status == RefundStatus::Success) {
        v["success_time"] = json!(build::v3_time(t));
    }
    v3_signed(&state, StatusCode::OK, v.to_string())
}

/// `GET /v3/certificates`: the platform certificates, each encrypted under the APIv3 key
/// with a nonce of its own.
async fn v3_certificates(state: web::Data<SimState>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = fault_response(&state.faults()) {
        return r;
    }
    if let Err(message) = authenticate(&state, &req, b"") {
        return v3_error(&state, StatusCode::UNAUTHORIZED, "SIGN_ERROR", &message);
    }
    let m = &state.merchant;
    let mut data = Vec::with_capacity(m.certificates.len());
    for certificate in &m.certificates {
        match v3::EncryptedCertificate::encrypt(
            m.api_v3_key.as_bytes(),
            &random_string(v3::aead::NONCE_LEN),
            &certificate.certificate_pem,
        ) {
            Ok(encrypted) => data.push(encrypted),
            Err(error) => return system_error("certificate not encrypted", error),
        }
    }
    let answer = v3::CertificatesAnswer { data };
    match serde_json::to_string(&answer) {
        Ok(body) => v3_signed(&state, StatusCode::OK, body),
        Err(error) => system_error("answer not encoded", error),
    }
}

// ---------------------------------------------------------------- admin

/// `POST /sim/orders`: stage an order (e.g. paid but never notified).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub out_trade_no: String,
    /// Fen.
    pub amount: i64,
    /// One of the trade states; default SUCCESS.
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
}

/// `A, B, C`: the accepted spellings, for an error message.
fn spellings<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> String {
    all.iter()
        .map(|&s| as_str(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates `req` and turns it into a book record (a new transaction id when paid and none
/// was given).
pub fn order_record(req: OrderRequest) -> Result<OrderRecord, String> {
    let state = match req.state.as_deref() {
        None => TradeState::Success,
        Some(text) => TradeState::parse(text).ok_or_else(|| {
            format!(
                "state must be one of {}",
                spellings(TradeState::ALL, TradeState::as_str)
            )
        })?,
    };
    if req.amount <= 0 {
        return Err("amount must be positive fen".into());
    }
    if req.out_trade_no.is_empty() || req.out_trade_no.len() > 32 {
        return Err("out_trade_no must be 1 to 32 characters".into());
    }
    let paid = state.is_paid();
    Ok(OrderRecord {
        out_trade_no: req.out_trade_no,
        transaction_id: req
            .transaction_id
            .or_else(|| paid.then(build::new_transaction_id)),
        amount: req.amount,
        paid_at: paid.then(Utc::now),
        openid: None,
        state,
    })
}

fn admin_bad_request(message: &str) -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("application/json")
        .body(json!({"code":"PARAM_ERROR","message":message}).to_string())
}

async fn admin_put_order(
    state: web::Data<SimState>,
    body: web::Json<OrderRequest>,
) -> HttpResponse {
    let record = match order_record(body.into_inner()) {
        Ok(r) => r,
        Err(message) => return admin_bad_request(&message),
    };
    let out = record.clone();
    match state.book.update(|b| b.upsert_order(record)) {
        Ok(()) => {
            state.invalidate();
            HttpResponse::Ok().json(out)
        }
        Err(e) => book_error(e),
    }
}

async fn admin_get_orders(state: web::Data<SimState>) -> HttpResponse {
    match state.book() {
        Ok(b) => HttpResponse::Ok().json(&*b),
        Err(e) => book_error(e),
    }
}

/// `POST /sim/refunds`: stage a refund of a known order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub out_refund_no: String,
    /// Fen.
    pub refund_fee: i64,
    /// SUCCESS (default), REFUNDCLOSE, PROCESSING or CHANGE.
    #[serde(default)]
    pub status: Option<String>,
}

/// Validates `req` against the book and turns it into a record.
pub fn refund_record(book: &OrderBook, req: RefundRequest) -> Result<RefundRecord, String> {
    let status = match req.status.as_deref() {
        None => RefundStatus::Success,
        Some(text) => RefundStatus::parse(text)
            .filter(|status| REFUND_STATES.contains(status))
            .ok_or_else(|| {
                format!(
                    "status must be one of {}",
                    spellings(REFUND_STATES, RefundStatus::as_str)
                )
            })?,
    };
    let order = book
        .orders
        .get(&req.out_trade_no)
        .ok_or_else(|| format!("no order {} in the book", req.out_trade_no))?;
    let transaction_id = order
        .transaction_id
        .clone()
        .ok_or_else(|| format!("order {} was never paid", req.out_trade_no))?;
    if req.refund_fee <= 0 || req.refund_fee > order.amount {
        return Err(format!("refund_fee must be 1 ..= {}", order.amount));
    }
    // Re-staging a refund keeps the id WeChat Pay gave it.
    let refund_id = book
        .refunds
        .get(&req.out_refund_no)
        .map(|r| r.refund_id.clone())
        .unwrap_or_else(build::new_refund_id);
    Ok(RefundRecord {
        out_refund_no: req.out_refund_no,
        out_trade_no: req.out_trade_no,
        transaction_id,
        refund_id,
        total_fee: order.amount,
        refund_fee: req.refund_fee,
        succeeded_at: (status == RefundStatus::Success).then(Utc::now),
        status,
    })
}

async fn admin_put_refund(
    state: web::Data<SimState>,
    body: web::Json<RefundRequest>,
) -> HttpResponse {
    let req = body.into_inner();
    let result = state.book.update(|b| {
        let record = refund_record(b, req)?;
        b.upsert_refund(record.clone());
        Ok::<_, String>(record)
    });
    match result {
        Ok(Ok(record)) => {
            state.invalidate();
            HttpResponse::Ok().json(record)
        }
        Ok(Err(message)) => admin_bad_request(&message),
        Err(e) => book_error(e),
    }
}

async fn admin_put_faults(state: web::Data<SimState>, body: web::Json<Faults>) -> HttpResponse {
    let faults = body.into_inner();
    if let Some(status) = faults.status {
        if StatusCode::from_u16(status).is_err() || status < 200 {
            return admin_bad_request("status must be an HTTP status code >= 200");
        }
    }
    if let Ok(mut f) = state.faults.lock() {
        *f = faults.clone();
    }
    tracing::info!(?faults, "faults set");
    HttpResponse::Ok().json(faults)
}

async fn admin_get_faults(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.faults())
}

/// `GET /sim/queries`: `{"orders": {"<out_trade_no>": <order queries received>}}`.
async fn admin_get_queries(state: web::Data<SimState>) -> HttpResponse {
    let orders = state
        .order_queries
        .lock()
        .map(|counts| counts.clone())
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({ "orders": orders }))
}
