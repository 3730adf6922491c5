DROP TABLE anomaly_resolutions;
DROP INDEX notifications_open_anomalies;
ALTER TABLE notifications DROP COLUMN wechatpay_headers;
ALTER TABLE notifications DROP COLUMN resolved_at;
ALTER TABLE orders DROP CONSTRAINT orders_refunded_within_amount;
ALTER TABLE orders DROP COLUMN event_seq;
ALTER TABLE orders DROP COLUMN currency;
