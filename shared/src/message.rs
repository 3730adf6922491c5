//! The queue message of gateway, reconciler and worker (docs/ARCHITECTURE.md, "Queue message").
//!
//! The AMQP body is the raw HTTP body, byte for byte: the worker re-verifies exactly what
//! WeChat Pay signed. Metadata rides in AMQP properties and headers. One definition, used
//! by the publisher ([`NotifyMessage::properties`]) and the consumer
//! ([`NotifyMessage::from_amqp`]).
//!
//! For `query.pay` / `query.refund` (the reconciler's order and refund queries) the body is
//! the raw, signed API response: v3 when the `wechatpay-*` headers are present (the
//! response's own signature headers), v2 signed XML otherwise.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use uuid::Uuid;

use crate::v3::headers::{
    WechatpayHeaders, HEADER_NONCE, HEADER_SERIAL, HEADER_SIGNATURE, HEADER_SIGNATURE_TYPE,
    HEADER_TIMESTAMP,
};

/// AMQP header names of the contract.
pub mod header {
    /// `v2.pay` | `v2.refund` | `v3` | `query.pay` | `query.refund`.
    pub const KIND: &str = "x-wxpay-kind";
    /// The merchant the notification is for.
    pub const MCH_ID: &str = "x-wxpay-mch-id";
    /// When the gateway received it (ms since the Unix epoch): the worker's lag is measured from it.
    pub const RECEIVED_AT_MS: &str = "x-wxpay-received-at-ms";
    /// Delivery attempt, set on retries (absent means the first).
    pub const ATTEMPT: &str = "x-wxpay-attempt";
    /// Why a message was parked (dead-lettered) by the worker.
    pub const PARK_REASON: &str = "x-wxpay-park-reason";
}

/// Delivery mode 2: the broker writes the message to disk (with a quorum queue, to a majority).
pub const PERSISTENT: u8 = 2;

/// The arguments of the notify queue's (and the parking queue's) declaration: a quorum
/// queue, replicated and durable by construction. Gateway, worker and reconciler all
/// declare the queue with exactly these, because RabbitMQ refuses (PRECONDITION_FAILED) a
/// second declaration whose arguments differ.
pub fn quorum_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), long_string("quorum"));
    arguments
}

/// Durable, not exclusive, not auto-deleted: what a quorum queue requires, and what the
/// retry tiers use too.
pub fn durable_queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
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
            content_type,
            wechatpay,
            attempt: 1,
            park_reason: None,
            body,
        }
    }

    /// The AMQP properties of this message: persistent, with id, timestamp, content type
    /// and the contract's headers.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut put = |name: &str, value: AMQPValue| {
            headers.insert(ShortString::from(name), value);
        };
        put(header::KIND, long_string(self.kind.as_str()));
        put(header::MCH_ID, long_string(&self.mch_id));
        put(
            header::RECEIVED_AT_MS,
            AMQPValue::LongLongInt(self.received_at_ms),
        );
        if self.attempt > 1 {
            put(
                header::ATTEMPT,
                AMQPValue::LongLongInt(i64::from(self.attempt)),
            );
        }
        if let Some(reason) = &self.park_reason {
            put(header::PARK_REASON, long_string(reason));
        }
        if let Some(wechatpay) = &self.wechatpay {
            for (name, value) in wechatpay.pairs() {
                if let Some((_, lowercase)) = WECHATPAY_HEADERS
                    .iter()
                    .find(|(canonical, _)| *canonical == name)
                {
                    put(lowercase, long_string(value));
                }
            }
        }
        let mut properties = BasicProperties::default()
            .with_message_id(ShortString::from(self.message_id.to_string()))
            .with_timestamp(u64::try_from(self.received_at_ms / 1000).unwrap_or(0))
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(ShortString::from(content_type.as_str()));
        }
        properties
    }

    /// Rebuilds the message from an AMQP delivery. Strings and integers are both accepted
    /// for numeric headers, so a message re-published by an operator's tool still reads.
    pub fn from_amqp(properties: &BasicProperties, body: Vec<u8>) -> Result<Self, MessageError> {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let text = |name: &'static str| header_text(headers, name);

        let message_id = properties
            .message_id()
            .as_ref()
            .ok_or(MessageError::Missing("message_id"))?;
        let message_id =
            Uuid::parse_str(message_id.as_str()).map_err(|error| MessageError::Invalid {
                name: "message_id",
                reason: error.to_string(),
            })?;
        let kind_text = text(header::KIND)?.ok_or(MessageError::Missing(header::KIND))?;
        let kind = NotifyKind::parse(&kind_text).ok_or_else(|| MessageError::Invalid {
            name: header::KIND,
            reason: format!("unknown kind {kind_text:?}"),
        })?;
        let mch_id = text(header::MCH_ID)?.ok_or(MessageError::Missing(header::MCH_ID))?;
        let received_at_ms = header_integer(headers, header::RECEIVED_AT_MS)?
            .ok_or(MessageError::Missing(header::RECEIVED_AT_MS))?;
        let attempt =
            match header_integer(headers, header::ATTEMPT)? {
                None => 1,
                Some(n) => u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                    MessageError::Invalid {
                        name: header::ATTEMPT,
                        reason: format!("{n} is not a positive attempt number"),
                    }
                })?,
            };
        let wechatpay = if headers.contains_key(WECHATPAY_HEADERS[0].1) {
            let mut values = Vec::with_capacity(WECHATPAY_HEADERS.len());
            for (canonical, lowercase) in WECHATPAY_HEADERS {
                values.push((canonical, header_text(headers, lowercase)?));
            }
            let lookup = |name: &str| {
                values
                    .iter()
                    .find(|(canonical, _)| canonical.eq_ignore_ascii_case(name))
                    .and_then(|(_, value)| value.as_deref())
            };
            Some(
                WechatpayHeaders::from_lookup(lookup).map_err(|error| MessageError::Invalid {
                    name: "wechatpay-*",
                    reason: error.to_string(),
                })?,
            )
        } else {
            None
        };
        Ok(NotifyMessage {
            message_id,
            kind,
            mch_id,
            received_at_ms,
            content_type: properties
                .content_type()
                .as_ref()
                .map(|ct| ct.as_str().to_owned()),
            wechatpay,
            attempt,
            park_reason: text(header::PARK_REASON)?,
            body,
        })
    }
}

/// The v3 headers as WeChat Pay names them, and as they ride in AMQP (lowercase).
const WECHATPAY_HEADERS: [(&str, &str); 5] = [
    (HEADER_TIMESTAMP, "wechatpay-timestamp"),
    (HEADER_NONCE, "wechatpay-nonce"),
    (HEADER_SIGNATURE, "wechatpay-signature"),
    (HEADER_SERIAL, "wechatpay-serial"),
    (HEADER_SIGNATURE_TYPE, "wechatpay-signature-type"),
];

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

fn header_text(headers: &FieldTable, name: &'static str) -> Result<Option<String>, MessageError> {
    let invalid = |reason: &str| MessageError::Invalid {
        name,
        reason: reason.to_owned(),
    };
    match headers.inner().get(name) {
        None => Ok(None),
        Some(AMQPValue::LongString(value)) => String::from_utf8(value.as_bytes().to_vec())
            .map(Some)
            .map_err(|_| invalid("not UTF-8")),
        Some(AMQPValue::ShortString(value)) => Ok(Some(value.as_str().to_owned())),
        Some(_) => Err(invalid("not a string")),
    }
}

fn header_integer(headers: &FieldTable, name: &'static str) -> Result<Option<i64>, MessageError> {
    let invalid = |reason: String| MessageError::Invalid { name, reason };
    match headers.inner().get(name) {
        None => Ok(None),
        Some(AMQPValue::LongLongInt(n)) => Ok(Some(*n)),
        Some(AMQPValue::LongInt(n)) => Ok(Some(i64::from(*n))),
        Some(AMQPValue::LongUInt(n)) => Ok(Some(i64::from(*n))),
        Some(AMQPValue::ShortInt(n)) => Ok(Some(i64::from(*n))),
        Some(AMQPValue::ShortUInt(n)) => Ok(Some(i64::from(*n))),
        Some(AMQPValue::ShortShortInt(n)) => Ok(Some(i64::from(*n))),
        Some(AMQPValue::ShortShortUInt(n)) => Ok(Some(i64::from(*n))),
        Some(_) => match header_text(headers, name)? {
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| invalid(format!("{text:?} is not an integer"))),
            None => Ok(None),
        },
    }
}

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
    fn round_trips_through_amqp_properties() {
        let mut message = NotifyMessage::new(
            NotifyKind::V3,
            "1900000109",
            br#"{"id":"1"}"#.to_vec(),
            Some("application/json".into()),
            Some(v3_headers()),
        );
        message.attempt = 3;
        let properties = message.properties();
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        let headers = properties.headers().clone().expect("headers");
        for name in [
            "x-wxpay-kind",
            "x-wxpay-mch-id",
            "x-wxpay-received-at-ms",
            "x-wxpay-attempt",
        ] {
            assert!(headers.contains_key(name), "{name}");
        }
        for name in [
            "wechatpay-timestamp",
            "wechatpay-nonce",
            "wechatpay-signature",
            "wechatpay-serial",
            "wechatpay-signature-type",
        ] {
            assert!(headers.contains_key(name), "{name}");
        }
        let back = NotifyMessage::from_amqp(&properties, message.body.clone()).expect("decodes");
        assert_eq!(back, message);
    }

    #[test]
    fn v2_message_has_no_wechatpay_headers_and_first_attempt() {
        let message = NotifyMessage::new(
            NotifyKind::V2Pay,
            "10000100",
            b"<xml/>".to_vec(),
            None,
            None,
        );
        let properties = message.properties();
        assert!(!properties
            .headers()
            .clone()
            .expect("headers")
            .contains_key(header::ATTEMPT));
        let back = NotifyMessage::from_amqp(&properties, message.body.clone()).expect("decodes");
        assert_eq!(back.attempt, 1);
        assert_eq!(back.wechatpay, None);
        assert_eq!(back.kind, NotifyKind::V2Pay);
    }

    #[test]
    fn missing_or_bad_metadata_is_an_error_not_a_panic() {
        assert_eq!(
            NotifyMessage::from_amqp(&BasicProperties::default(), vec![]),
            Err(MessageError::Missing("message_id"))
        );
        let message = NotifyMessage::new(NotifyKind::V2Pay, "1", vec![], None, None);
        let mut headers = message.properties().headers().clone().expect("headers");
        headers.insert(ShortString::from(header::KIND), long_string("v9"));
        let properties = message.properties().with_headers(headers.clone());
        assert!(matches!(
            NotifyMessage::from_amqp(&properties, vec![]),
            Err(MessageError::Invalid {
                name: header::KIND,
                ..
            })
        ));
        headers.insert(ShortString::from(header::KIND), long_string("v2.pay"));
        headers.insert(ShortString::from(header::ATTEMPT), long_string("0"));
        let properties = message.properties().with_headers(headers);
        assert!(matches!(
            NotifyMessage::from_amqp(&properties, vec![]),
            Err(MessageError::Invalid {
                name: header::ATTEMPT,
                ..
            })
        ));
    }

    #[test]
    fn notify_queue_is_a_durable_quorum_queue() {
        let arguments = quorum_queue_arguments();
        assert_eq!(arguments.inner().len(), 1);
        assert_eq!(
            arguments.inner().get("x-queue-type"),
            Some(&long_string("quorum"))
        );
        let options = durable_queue_options();
        assert!(options.durable && !options.exclusive && !options.auto_delete && !options.passive);
    }

    #[test]
    fn integer_headers_accept_text() {
        let message = NotifyMessage::new(NotifyKind::QueryPay, "1", vec![], None, None);
        let mut headers = message.properties().headers().clone().expect("headers");
        headers.insert(ShortString::from(header::ATTEMPT), long_string("4"));
        let properties = message.properties().with_headers(headers);
        assert_eq!(
            NotifyMessage::from_amqp(&properties, vec![])
                .expect("decodes")
                .attempt,
            4
        );
    }
}
