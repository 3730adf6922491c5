//! `POST /notify/v2/pay` and `POST /notify/v2/refund`: the merchant is the `mch_id` of the
//! XML body (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>,
//! <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>).

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};

use super::{handle, AppState};
use crate::verify::{verify_v2_pay, verify_v2_refund, Route};

/// 支付结果通知.
pub async fn pay(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    handle(Route::V2Pay, &request, body, &state, verify_v2_pay).await
}

/// 退款结果通知.
pub async fn refund(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    handle(Route::V2Refund, &request, body, &state, verify_v2_refund).await
}
