//! Diesel schema of the tables in `worker/migrations` (kept by hand: diesel here has no libpq,
//! so `diesel print-schema` is not part of the build).

diesel::table! {
    orders (mch_id, sub_mch_id, out_trade_no) {
        mch_id -> Text,
        out_trade_no -> Text,
        appid -> Text,
        amount_total -> Int8,
        state -> Text,
        transaction_id -> Nullable<Text>,
        paid_at -> Nullable<Timestamptz>,
        refunded_total -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        currency -> Text,
        event_seq -> Int8,
        sub_mch_id -> Text,
        combine_out_trade_no -> Nullable<Text>,
    }
}

diesel::table! {
    refunds (mch_id, sub_mch_id, out_refund_no) {
        mch_id -> Text,
        out_refund_no -> Text,
        out_trade_no -> Text,
        refund_id -> Nullable<Text>,
        refund_fee -> Int8,
        status -> Text,
        succeeded_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        sub_mch_id -> Text,
    }
}

diesel::table! {
    notifications (id) {
        id -> Int8,
        dedupe_key -> Text,
        message_id -> Uuid,
        kind -> Text,
        mch_id -> Text,
        out_trade_no -> Nullable<Text>,
        out_refund_no -> Nullable<Text>,
        transaction_id -> Nullable<Text>,
        raw_body -> Bytea,
        outcome -> Text,
        anomaly_reason -> Nullable<Text>,
        anomaly_detail -> Nullable<Text>,
        received_at -> Timestamptz,
        processed_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
        wechatpay_headers -> Nullable<Jsonb>,
        // sub_mch_id (TEXT NOT NULL DEFAULT '') is left out: a 17th column would need
        // diesel's 32-column-tables feature, and only the fixed INSERT of
        // `queries::InsertNotification` writes it.
    }
}

diesel::table! {
    anomaly_resolutions (id) {
        id -> Int8,
        anomaly_id -> Int8,
        action -> Text,
        actor -> Text,
        note -> Text,
        result -> Text,
        new_notification_id -> Nullable<Int8>,
        at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Uuid,
        event_type -> Text,
        mch_id -> Text,
        aggregate_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    orders,
    refunds,
    notifications,
    outbox,
    anomaly_resolutions
);
