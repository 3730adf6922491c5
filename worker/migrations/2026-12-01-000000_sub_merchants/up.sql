-- Issue 14: service providers (服务商) notified for their sub-merchants. An order and a refund
-- belong to (mch_id = the provider, sub_mch_id, out_trade_no / out_refund_no): two
-- sub-merchants may use the same out_trade_no. '' is a direct merchant, so every existing
-- row keeps its meaning. Expand (docs/MIGRATIONS.md): columns with a constant default (no
-- rewrite); the keys change in 2026-12-01-000001 … 000003.
SET lock_timeout = '5s';

ALTER TABLE orders ADD COLUMN sub_mch_id TEXT NOT NULL DEFAULT '';
ALTER TABLE refunds ADD COLUMN sub_mch_id TEXT NOT NULL DEFAULT '';
-- The sub-merchant a notification was for (the console's search, the anomaly list).
ALTER TABLE notifications ADD COLUMN sub_mch_id TEXT NOT NULL DEFAULT '';
