//! `POST /notify/v2/pay` and `POST /notify/v2/refund`: the merchant is the `mch_id` of the
//! XML body (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>,
//! <https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_16&index=10>).

use actix_web::{web, Handler};
use actix_web::{HttpRequest, HttpResponse};
use wxpay_runtime::config::Merchants;

use super::{handle, AppState};
use crate::verify::{Incoming, Rejection, Route, Verified};

/// How a v2 route verifies its body ([`crate::verify::verify_v2_pay`] or
/// [`crate::verify::verify_v2_refund`]).
pub type Verify = fn(&Incoming<'_>, &Merchants) -> Result<Verified, Rejection>;

/// The handler of a v2 route (支付结果通知, 退款结果通知). Both routes find their merchant in
/// the body, so they differ only in their name and their verifier.
pub fn notify(
    route: Route,
    verify: Verify,
) -> impl Handler<(HttpRequest, web::Payload, web::Data<AppState>), Output = HttpResponse> {
    move |request: HttpRequest, body: web::Payload, state: web::Data<AppState>| async move {
        handle(route, &request, body, &state, verify).await
    }
}
