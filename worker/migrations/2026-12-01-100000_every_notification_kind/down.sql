-- Fails while FORWARDED rows or wechatpay.* events exist: delete or archive them first (they
-- are the only record of those notifications).
SET lock_timeout = '5s';
ALTER TABLE outbox
    DROP CONSTRAINT outbox_event_type_check,
    ADD CONSTRAINT outbox_event_type_check
        CHECK (event_type IN ('order.paid', 'order.refunded', 'refund.updated', 'anomaly.detected'));
ALTER TABLE notifications DROP COLUMN resource;
ALTER TABLE notifications
    DROP CONSTRAINT notifications_outcome_check,
    ADD CONSTRAINT notifications_outcome_check
        CHECK (outcome IN ('APPLIED', 'NOOP', 'RECORDED', 'ANOMALY'));
