//! What WeChat Pay must read back, and how the simulator judges what it read.
//!
//! - v2: always HTTP 200 with `<xml><return_code>…</return_code><return_msg>…</return_msg></xml>`;
//!   anything else (plain `success`, no `return_code`) counts as a failure and is re-sent
//!   (<https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=9_7>).
//! - v3: 200 or 204 with no body on success; 4xx/5xx with `{"code":"FAIL","message":"…"}`
//!   on failure (<https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/payment-notice.html>).

use crate::v2::XmlFields;

/// The v2 success answer, byte for byte.
pub const V2_SUCCESS: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// Content type of v2 answers.
pub const V2_CONTENT_TYPE: &str = "application/xml; charset=utf-8";
/// Content type of v3 failure answers.
pub const V3_CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// Status of a v3 success answer (no body).
pub const V3_SUCCESS_STATUS: u16 = 204;

/// The v2 failure answer: HTTP 200 with `FAIL` and a reason, so WeChat Pay re-sends.
///
/// The reason goes into CDATA; a reason containing `]]>` still yields valid XML.
pub fn v2_fail(reason: &str) -> String {
    let mut fields = XmlFields::new();
    fields.insert("return_code", "FAIL");
    fields.insert("return_msg", reason);
    fields.to_xml()
}

/// The JSON body of a v3 failure answer.
pub fn v3_fail_body(message: &str) -> String {
    serde_json::json!({ "code": "FAIL", "message": message }).to_string()
}

/// How WeChat Pay judges a v2 answer: only HTTP 200 with `return_code` SUCCESS counts.
pub fn v2_answer_is_success(status: u16, body: &[u8]) -> bool {
    status == 200
        && XmlFields::parse(body)
            .map(|fields| fields.get("return_code") == Some("SUCCESS"))
            .unwrap_or(false)
}

/// How WeChat Pay judges a v3 answer: 200 or 204 is success, anything else is re-sent.
pub fn v3_answer_is_success(status: u16) -> bool {
    status == 200 || status == 204
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_constant_is_what_the_xml_writer_makes() {
        let mut fields = XmlFields::new();
        fields.insert("return_code", "SUCCESS");
        fields.insert("return_msg", "OK");
        assert_eq!(fields.to_xml(), V2_SUCCESS);
        assert!(v2_answer_is_success(200, V2_SUCCESS.as_bytes()));
    }

    #[test]
    fn fail_answer_is_valid_xml_even_with_cdata_terminator_in_reason() {
        let answer = v2_fail("bad ]]> <xml> reason");
        let parsed = XmlFields::parse(answer.as_bytes()).expect("valid xml");
        assert_eq!(parsed.get("return_code"), Some("FAIL"));
        assert_eq!(parsed.get("return_msg"), Some("bad ]]> <xml> reason"));
        assert!(!v2_answer_is_success(200, answer.as_bytes()));
    }

    #[test]
    fn plain_text_success_is_not_success() {
        assert!(!v2_answer_is_success(200, b"success"));
        assert!(!v2_answer_is_success(500, V2_SUCCESS.as_bytes()));
    }

    #[test]
    fn v3_fail_body_escapes_json() {
        let body = v3_fail_body("quote \" and \\ backslash");
        let value: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(value["code"], "FAIL");
        assert_eq!(value["message"], "quote \" and \\ backslash");
        assert!(v3_answer_is_success(204));
        assert!(!v3_answer_is_success(401));
    }
}
