ALTER TABLE notifications DROP COLUMN sub_mch_id;
ALTER TABLE refunds DROP COLUMN sub_mch_id;
ALTER TABLE orders DROP COLUMN sub_mch_id;
