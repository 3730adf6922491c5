-- One refund id per merchant (refund_id stays NULLable: a refund the business system
-- registered before WeChat Pay numbered it). Built CONCURRENTLY, so writes to refunds go on
-- meanwhile; hence a migration of its own, outside a transaction (metadata.toml).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS refunds_mch_refund_id ON refunds (mch_id, refund_id);
