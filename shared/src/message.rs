//! The queue message of gateway, reconciler and worker (docs/ARCHITECTURE.md, "Queue message").
//!
//! The AMQP body is the raw HTTP body, byte for byte: the worker re-verifies exactly what
//! WeChat Pay signed. Metadata rides in AMQP properties and headers. The AMQP encoding of
//! these fields lives in the `wxpay-runtime` crate (`amqp`), so this crate stays free of a
//! broker client.
//!
//! For `query.pay` / `query.refund` (the reconciler's order and refund queries) the body is
//! the raw, signed API response: v3 when the `wechatpay-*` headers are present (the
//! response's own signature headers), v2 signed XML otherwise.

use uuid::Uuid;

use crate::v3::headers::{
    WechatpayHeaders, HEADER_NONCE, HEADER_SERIAL, HEADER_SIGNATURE, HEADER_SIGNATURE_TYPE,
    HEADER_TIMESTAMP,
};

/// AMQP header names of the contract.
pub mod header {
    crate::names! {
        /// `v2.pay` | `v2.refund` | `v3` | `query.pay` | `query.refund`.
        KIND => "x-wxpay-kind",
        /// The merchant the notification is for.
        MCH_ID => "x-wxpay-mch-id",
        /// When the gateway received it (ms since the Unix epoch): the worker's lag is
        /// measured from it.
        RECEIVED_AT_MS => "x-wxpay-received-at-ms",
        /// Delivery attempt, set on retries (absent means the first).
        ATTEMPT => "x-wxpay-attempt",
        /// Why a message was parked (dead-lettered) by the worker.
        PARK_REASON => "x-wxpay-park-reason",
        /// The service provider's sub-merchant a query answer was asked about (set by the
        /// reconciler): WeChat Pay's v3 refund query answer need not name it.
        SUB_MCH_ID => "x-wxpay-sub-mch-id",
    }
}

/// Longest AMQP short string (content type, message id, header names): its length is one
/// byte on the wire, and a longer value makes a frame RabbitMQ answers by closing the
/// whole connection (`INTERNAL_ERROR`), failing every publish in flight on it.
pub const MAX_SHORT_STRING: usize = 255;

/// Longest value copied from a request into a message header (`x-wxpay-mch-id`,
/// `wechatpay-*`). Genuine values are far shorter (a 2048-bit RSA signature is 344 base64
/// characters), and the whole content header must fit in one frame.
pub const MAX_HEADER_VALUE: usize = 512;

/// The content types a message may carry. Whatever a request says is mapped onto one of
/// these ([`content_type_property`]), so no sender's text reaches the broker as a short
/// string.
pub const CONTENT_TYPES: [&str; 4] = [
    "application/xml",
    "text/xml",
    "application/json",
    "application/octet-stream",
];

/// Maps a `Content-Type` onto [`CONTENT_TYPES`] by its essence (parameters such as
/// `charset` are dropped: the body travels as raw bytes and the worker decodes by kind).
/// Anything unknown becomes `application/octet-stream`.
pub fn content_type_property(value: &str) -> &'static str {
    let essence = value.split(';').next().unwrap_or_default().trim();
    CONTENT_TYPES
        .into_iter()
        .find(|known| essence.eq_ignore_ascii_case(known))
        .unwrap_or("application/octet-stream")
}

/// A merchant id as WeChat Pay issues them: 1 to 32 ASCII digits. Anything else is not
/// logged or copied verbatim.
pub fn is_valid_mch_id(value: &str) -> bool {
    (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
}

/// Which channel brought the news, hence how the worker decodes the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyKind {
    /// v2 支付结果通知 (signed XML).
    V2Pay,
    /// v2 退款结果通知 (XML with an encrypted `req_info`).
    V2Refund,
    /// v3 notification (signed JSON with an encrypted resource).
    V3,
    /// The reconciler's order query answer (查询订单).
    QueryPay,
    /// The reconciler's refund query answer (查询退款).
    QueryRefund,
}

impl NotifyKind {
    /// All kinds, e.g. to pre-register metric labels.
    pub const ALL: [NotifyKind; 5] = [
        NotifyKind::V2Pay,
        NotifyKind::V2Refund,
        NotifyKind::V3,
        NotifyKind::QueryPay,
        NotifyKind::QueryRefund,
    ];

    /// The `x-wxpay-kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::V2Pay => "v2.pay",
            NotifyKind::V2Refund => "v2.refund",
            NotifyKind::V3 => "v3",
            NotifyKind::QueryPay => "query.pay",
            NotifyKind::QueryRefund => "query.refund",
        }
    }

    /// The reconciler's query answers (`query.pay`, `query.refund`).
    pub fn is_query(self) -> bool {
        matches!(self, NotifyKind::QueryPay | NotifyKind::QueryRefund)
    }

    /// Parses an `x-wxpay-kind` value.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

impl std::fmt::Display for NotifyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A notification (or query answer) as it travels through the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyMessage {
    /// Request id (UUIDv7): the AMQP `message_id`, also logged as `request_id`.
    pub message_id: Uuid,
    pub kind: NotifyKind,
    pub mch_id: String,
    pub received_at_ms: i64,
    pub content_type: Option<String>,
    /// The five `Wechatpay-*` headers (v3 notifications and v3 query answers).
    pub wechatpay: Option<WechatpayHeaders>,
    /// 1 for the first delivery; the worker increments it when it schedules a retry.
    pub attempt: u32,
    /// Set when the worker parks the message.
    pub park_reason: Option<String>,
    /// A service provider's query answer: the sub-merchant asked about ([`header::SUB_MCH_ID`]).
    pub sub_mch_id: Option<String>,
    /// The raw HTTP body, byte for byte.
    pub body: Vec<u8>,
}

/// Why an AMQP delivery is not a valid [`NotifyMessage`]: such a message is poison.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("missing AMQP property or header {0}")]
    Missing(&'static str),
    #[error("invalid value for {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl NotifyMessage {
    /// A new message received now, with a fresh UUIDv7 id.
    pub fn new(
        kind: NotifyKind,
        mch_id: impl Into<String>,
        body: Vec<u8>,
        content_type: Option<String>,
        wechatpay: Option<WechatpayHeaders>,
    ) -> Self {
        NotifyMessage {
            message_id: Uuid::now_v7(),
            kind,
            mch_id: mch_id.into(),
            received_at_ms: chrono::Utc::now().timestamp_millis(),
            content_type: content_type.map(|value| content_type_property(&value).to_owned()),
            wechatpay,
            attempt: 1,
            park_reason: None,
            sub_mch_id: None,
            body,
        }
    }

    /// Checks what came from a request before it is published: the merchant id is 1–32
    /// ASCII digits and every `wechatpay-*` value is visible ASCII of at most
    /// [`MAX_HEADER_VALUE`] bytes. The gateway refuses a message that fails this.
    pub fn validate(&self) -> Result<(), MessageError> {
        if !is_valid_mch_id(&self.mch_id) {
            return Err(MessageError::Invalid {
                name: header::MCH_ID,
                reason: "not 1 to 32 ASCII digits".to_owned(),
            });
        }
        if let Some(wechatpay) = &self.wechatpay {
            for (name, value) in wechatpay.pairs() {
                let visible = value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                if value.len() > MAX_HEADER_VALUE || !visible {
                    return Err(MessageError::Invalid {
                        name: "wechatpay-*",
                        reason: format!(
                            "{name}: not visible ASCII of at most {MAX_HEADER_VALUE} bytes"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The v3 headers as WeChat Pay names them, and as they ride in AMQP (lowercase).
pub const WECHATPAY_HEADERS: [(&str, &str); 5] = [
    (HEADER_TIMESTAMP, "wechatpay-timestamp"),
    (HEADER_NONCE, "wechatpay-nonce"),
    (HEADER_SIGNATURE, "wechatpay-signature"),
    (HEADER_SERIAL, "wechatpay-serial"),
    (HEADER_SIGNATURE_TYPE, "wechatpay-signature-type"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_headers() -> WechatpayHeaders {
        WechatpayHeaders {
            timestamp: "1700000000".into(),
            nonce: "n0nce".into(),
            signature: "c2lnbmF0dXJl".into(),
            serial: "PUB_KEY_ID_0119000001092025".into(),
            signature_type: Some("WECHATPAY2-SHA256-RSA2048".into()),
        }
    }

    #[test]
    fn content_types_map_onto_the_fixed_set() {
        for (given, mapped) in [
            ("text/xml; charset=UTF-8", "text/xml"),
            ("Application/JSON", "application/json"),
            ("application/xml", "application/xml"),
            ("", "application/octet-stream"),
            ("text/plain", "application/octet-stream"),
        ] {
            assert_eq!(content_type_property(given), mapped, "{given:?}");
        }
        let long = format!("application/json;{}", "p".repeat(1000));
        assert_eq!(content_type_property(&long), "application/json");
    }

    #[test]
    fn validate_refuses_what_no_genuine_request_carries() {
        let ok = NotifyMessage::new(NotifyKind::V2Pay, "1900000109", vec![], None, None);
        assert_eq!(ok.validate(), Ok(()));
        for mch_id in ["", "19000001x9", &"1".repeat(33), "１２３"] {
            let bad = NotifyMessage {
                mch_id: mch_id.to_owned(),
                ..ok.clone()
            };
            assert!(bad.validate().is_err(), "{mch_id:?}");
        }
        let mut headers = v3_headers();
        headers.nonce = "n".repeat(MAX_HEADER_VALUE + 1);
        let long = NotifyMessage {
            wechatpay: Some(headers),
            ..ok.clone()
        };
        assert!(long.validate().is_err());
        let mut headers = v3_headers();
        headers.serial = "PUB\nKEY\u{7}".to_owned();
        let control = NotifyMessage {
            wechatpay: Some(headers),
            ..ok
        };
        assert!(control.validate().is_err());
    }
}
