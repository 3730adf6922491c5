-- The contract with the merchant's business system (docs/ARCHITECTURE.md, "Database"): it inserts
-- (mch_id, out_trade_no, appid, amount_total, state = 'NOTPAY') before the user pays; the
-- worker moves the state. Amounts are BIGINT fen (分), never floats.
CREATE TABLE orders (
    mch_id          TEXT        NOT NULL,
    out_trade_no    TEXT        NOT NULL,
    appid           TEXT        NOT NULL,
    amount_total    BIGINT      NOT NULL CHECK (amount_total >= 0),
    state           TEXT        NOT NULL DEFAULT 'NOTPAY'
                    CHECK (state IN ('NOTPAY', 'PAID', 'PARTIALLY_REFUNDED', 'REFUNDED', 'CLOSED')),
    transaction_id  TEXT        NULL,
    paid_at         TIMESTAMPTZ NULL,
    refunded_total  BIGINT      NOT NULL DEFAULT 0 CHECK (refunded_total >= 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (mch_id, out_trade_no)
);
-- The reconciler looks for old unpaid orders.
CREATE INDEX orders_state_created_at ON orders (state, created_at);

CREATE TABLE refunds (
    mch_id          TEXT        NOT NULL,
    out_refund_no   TEXT        NOT NULL,
    out_trade_no    TEXT        NOT NULL,
    refund_id       TEXT        NULL,
    refund_fee      BIGINT      NOT NULL CHECK (refund_fee >= 0),
    status          TEXT        NOT NULL
                    CHECK (status IN ('PROCESSING', 'SUCCESS', 'CHANGE', 'CLOSED', 'ABNORMAL')),
    succeeded_at    TIMESTAMPTZ NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (mch_id, out_refund_no)
);
CREATE INDEX refunds_order ON refunds (mch_id, out_trade_no);
CREATE INDEX refunds_status_created_at ON refunds (status, created_at);

-- Every notification processed. dedupe_key is a business key (the same whichever channel
-- brought the news): its uniqueness is the authority of exactly-once.
CREATE TABLE notifications (
    id              BIGSERIAL   PRIMARY KEY,
    dedupe_key      TEXT        NOT NULL UNIQUE,
    message_id      UUID        NOT NULL,
    kind            TEXT        NOT NULL,
    mch_id          TEXT        NOT NULL,
    out_trade_no    TEXT        NULL,
    out_refund_no   TEXT        NULL,
    transaction_id  TEXT        NULL,
    raw_body        BYTEA       NOT NULL,
    outcome         TEXT        NOT NULL CHECK (outcome IN ('APPLIED', 'NOOP', 'RECORDED', 'ANOMALY')),
    anomaly_reason  TEXT        NULL,
    anomaly_detail  TEXT        NULL,
    received_at     TIMESTAMPTZ NOT NULL,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX notifications_order ON notifications (mch_id, out_trade_no);
CREATE INDEX notifications_anomalies ON notifications (processed_at) WHERE outcome = 'ANOMALY';

-- Domain events, written in the same transaction as the state change, published by the
-- relay. id is the stable event id (AMQP message_id) consumers dedupe on.
CREATE TABLE outbox (
    id              UUID        PRIMARY KEY,
    event_type      TEXT        NOT NULL
                    CHECK (event_type IN ('order.paid', 'order.refunded', 'refund.updated', 'anomaly.detected')),
    mch_id          TEXT        NOT NULL,
    aggregate_key   TEXT        NOT NULL,
    payload         JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ NULL
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
