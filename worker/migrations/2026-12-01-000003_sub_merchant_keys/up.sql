-- The unique indexes built by 000001 and 000002 become the primary keys (no index build under
-- the lock: the swap takes the tables' lock only for the catalog change). From here an
-- older worker's refund upsert, ON CONFLICT (mch_id, out_refund_no), finds no such key and
-- is retried through the tiers: docs/MIGRATIONS.md, "Service providers' keys".
SET lock_timeout = '5s';

ALTER TABLE orders
    DROP CONSTRAINT orders_pkey,
    ADD CONSTRAINT orders_pkey PRIMARY KEY USING INDEX orders_sub_mch_key;
ALTER TABLE refunds
    DROP CONSTRAINT refunds_pkey,
    ADD CONSTRAINT refunds_pkey PRIMARY KEY USING INDEX refunds_sub_mch_key;
