//! `POST /notify/v3/{mch_id}`: the merchant is in the path (the notify_url each merchant
//! registers), the signature in the `Wechatpay-*` headers
//! (<https://pay.weixin.qq.com/docs/merchant/development/interface-rules/signature-verification.html>).

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};

use super::{handle, AppState};
use crate::verify::{verify_v3, Route};

/// A v3 notification (payment or refund: the event type is in the envelope).
pub async fn notify(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mch_id = path.into_inner();
    let now_unix = chrono_now_unix();
    let headers = request.headers();
    let lookup = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    handle(Route::V3, &request, body, &state, |incoming, merchants| {
        verify_v3(incoming, &mch_id, lookup, merchants, now_unix)
    })
    .await
}

/// Unix seconds from the system clock (the timestamp window is checked against it).
fn chrono_now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
