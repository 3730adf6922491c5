//! The AMQP encoding of the queue message (docs/ARCHITECTURE.md, "Queue message"), and the
//! declarations every service must make identically.
//!
//! The message's fields and header names are protocol facts and live in
//! [`wxpay_shared::message`]; how they ride in AMQP properties needs the broker client, so it
//! lives here. One definition, used by the publishers ([`AmqpMessage::properties`]) and the
//! consumer ([`AmqpMessage::from_amqp`]).

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use uuid::Uuid;
use wxpay_shared::message::{
    content_type_property, header, MessageError, NotifyKind, NotifyMessage, WECHATPAY_HEADERS,
};
use wxpay_shared::v3::headers::WechatpayHeaders;

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

/// Durable: the events exchange and its alternate survive a broker restart, as the quorum
/// queues bound to them do.
pub fn durable_exchange_options() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// The `message_id` property (the request id), whether or not the rest of the message
/// decodes: to log, list or pick a delivery by it.
pub fn message_id_text(properties: &BasicProperties) -> Option<&str> {
    properties.message_id().as_ref().map(|id| id.as_str())
}

/// A [`NotifyMessage`] in and out of AMQP properties.
pub trait AmqpMessage: Sized {
    /// The AMQP properties of this message: persistent, with id, timestamp, content type
    /// (always one of `CONTENT_TYPES`)
    /// and the contract's headers.
    fn properties(&self) -> BasicProperties;

    /// Rebuilds the message from an AMQP delivery. Strings and integers are both accepted
    /// for numeric headers, so a message re-published by an operator's tool still reads.
    fn from_amqp(properties: &BasicProperties, body: Vec<u8>) -> Result<Self, MessageError>;
}

impl AmqpMessage for NotifyMessage {
    fn properties(&self) -> BasicProperties {
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
        if let Some(sub_mch_id) = &self.sub_mch_id {
            put(header::SUB_MCH_ID, long_string(sub_mch_id));
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
            properties = properties
                .with_content_type(ShortString::from(content_type_property(content_type)));
        }
        properties
    }

    fn from_amqp(properties: &BasicProperties, body: Vec<u8>) -> Result<Self, MessageError> {
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
            sub_mch_id: text(header::SUB_MCH_ID)?,
            body,
        })
    }
}

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
    use wxpay_shared::message::{MAX_HEADER_VALUE, MAX_SHORT_STRING};

    /// Headers as WeChat Pay sends them, read the way the gateway reads a request.
    fn v3_headers() -> WechatpayHeaders {
        let sent = [
            ("Wechatpay-Timestamp", "1700000000"),
            ("Wechatpay-Nonce", "n0nce"),
            ("Wechatpay-Signature", "c2lnbmF0dXJl"),
            ("Wechatpay-Serial", "PUB_KEY_ID_0119000001092025"),
            ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"),
        ];
        WechatpayHeaders::from_lookup(|name| {
            sent.iter()
                .find(|(sent_name, _)| sent_name.eq_ignore_ascii_case(name))
                .map(|(_, value)| *value)
        })
        .expect("complete headers")
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
        message.sub_mch_id = Some("1900000201".into());
        let properties = message.properties();
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        let headers = properties.headers().clone().expect("headers");
        for name in [
            "x-wxpay-kind",
            "x-wxpay-mch-id",
            "x-wxpay-received-at-ms",
            "x-wxpay-attempt",
            "x-wxpay-sub-mch-id",
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

    fn encode(properties: &BasicProperties) -> BasicProperties {
        use lapin::protocol::basic::{gen_properties, parse_properties};
        let (buffer, _) =
            cookie_factory::gen(gen_properties(properties), Vec::new()).expect("properties encode");
        let (rest, parsed) = parse_properties(buffer.as_slice()).expect("properties parse");
        assert!(rest.is_empty());
        parsed
    }

    #[test]
    fn properties_at_the_limits_encode_as_they_are() {
        let longest = "x".repeat(MAX_HEADER_VALUE);
        let headers = WechatpayHeaders {
            timestamp: "9".repeat(12),
            nonce: longest.clone(),
            signature: longest.clone(),
            serial: longest.clone(),
            signature_type: Some(longest),
        };
        let hostile_type = format!("text/xml; x={}", "a".repeat(300));
        let message = NotifyMessage::new(
            NotifyKind::V3,
            "9".repeat(32),
            b"{}".to_vec(),
            Some(hostile_type.clone()),
            Some(headers),
        );
        assert_eq!(message.validate(), Ok(()));
        assert_eq!(message.content_type.as_deref(), Some("text/xml"));
        let properties = message.properties();
        assert_eq!(encode(&properties), properties);
        // Even a field set directly never reaches the wire as a long short string.
        let direct = NotifyMessage {
            content_type: Some(hostile_type),
            ..message.clone()
        };
        let wire = encode(&direct.properties());
        assert_eq!(
            wire.content_type().as_ref().map(ShortString::as_str),
            Some("text/xml")
        );
        for name in wire.headers().clone().expect("headers").inner().keys() {
            assert!(name.as_str().len() <= MAX_SHORT_STRING, "{name:?}");
        }
    }
}
