-- The refunds' key with the sub-merchant, as 2026-12-01-000001 for orders.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS refunds_sub_mch_key ON refunds (mch_id, sub_mch_id, out_refund_no);
