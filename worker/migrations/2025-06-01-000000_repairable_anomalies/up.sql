-- Issue 12: money checks, per-order event sequence, repairable anomalies. Expand only
-- (docs/MIGRATIONS.md): new columns have defaults or are NULLable, the new CHECK is NOT VALID
-- (enforced for every write from now on; a later migration validates the old rows).
SET lock_timeout = '5s';

-- The order's currency (WeChat Pay's default when a notification names none); a
-- notification in another currency is an anomaly CURRENCY_MISMATCH.
ALTER TABLE orders ADD COLUMN currency TEXT NOT NULL DEFAULT 'CNY';
-- Sequence number of the order's last outbox event: bumped under the order's row lock in
-- the transaction that writes the event, so consumers can order events across replicas.
ALTER TABLE orders ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD CONSTRAINT orders_refunded_within_amount
    CHECK (refunded_total <= amount_total) NOT VALID;

-- An anomaly is closed by a person (anomaly resolve); its dedupe key is then renamed
-- `<key>#released:<id>` by a reapply, so the notification can be applied again.
ALTER TABLE notifications ADD COLUMN resolved_at TIMESTAMPTZ NULL;
-- The five Wechatpay-* headers of v3 notifications and v3 query answers (JSON object), so a
-- reapply re-verifies the signature of exactly what was received. NULL for v2 and for rows
-- written before this migration.
ALTER TABLE notifications ADD COLUMN wechatpay_headers JSONB NULL;
CREATE INDEX notifications_open_anomalies ON notifications (id)
    WHERE outcome = 'ANOMALY' AND resolved_at IS NULL;

-- Who closed which anomaly, how, why and with what result: the audit trail of every
-- hand-made decision about money.
CREATE TABLE anomaly_resolutions (
    id                  BIGSERIAL   PRIMARY KEY,
    anomaly_id          BIGINT      NOT NULL UNIQUE REFERENCES notifications (id),
    action              TEXT        NOT NULL CHECK (action IN ('reapply', 'dismiss')),
    actor               TEXT        NOT NULL,
    note                TEXT        NOT NULL,
    result              TEXT        NOT NULL,
    new_notification_id BIGINT      NULL REFERENCES notifications (id),
    at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);
