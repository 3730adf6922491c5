-- Every verified notification is kept and acted on (docs/ARCHITECTURE.md, "Every notification
-- kind"). Expand only (docs/MIGRATIONS.md): the widened CHECKs are NOT VALID (the old rows
-- satisfied the narrower ones), the new column is NULLable.
SET lock_timeout = '5s';

-- FORWARDED: a verified notification of a kind that moves no order here (merchant transfers,
-- profit sharing, pay score, any future kind), published as a `wechatpay.<event_type>` event.
ALTER TABLE notifications
    DROP CONSTRAINT notifications_outcome_check,
    ADD CONSTRAINT notifications_outcome_check
        CHECK (outcome IN ('APPLIED', 'NOOP', 'RECORDED', 'ANOMALY', 'FORWARDED')) NOT VALID;

-- The decrypted resource (v3) or the decrypted req_info (v2 refund) as JSON, for audit: the
-- raw body of a v3 notification is ciphertext. Never holds a key. NULL for rows written
-- before this migration and for v2 payments (their raw body is already clear text).
ALTER TABLE notifications ADD COLUMN resource JSONB NULL;

-- Forwarded events are routed as `wechatpay.<event_type>`.
ALTER TABLE outbox
    DROP CONSTRAINT outbox_event_type_check,
    ADD CONSTRAINT outbox_event_type_check
        CHECK (event_type IN ('order.paid', 'order.refunded', 'refund.updated', 'anomaly.detected')
               OR event_type LIKE 'wechatpay.%') NOT VALID;
