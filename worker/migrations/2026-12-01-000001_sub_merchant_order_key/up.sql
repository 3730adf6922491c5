-- The orders' key with the sub-merchant, built CONCURRENTLY (writes go on meanwhile), so one
-- statement outside a transaction (metadata.toml); 000003 makes it the primary key.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_sub_mch_key ON orders (mch_id, sub_mch_id, out_trade_no);
