-- Fails while two sub-merchants share an out_trade_no or out_refund_no, as it must.
ALTER TABLE refunds DROP CONSTRAINT refunds_pkey, ADD PRIMARY KEY (mch_id, out_refund_no);
ALTER TABLE orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (mch_id, out_trade_no);
CREATE UNIQUE INDEX refunds_sub_mch_key ON refunds (mch_id, sub_mch_id, out_refund_no);
CREATE UNIQUE INDEX orders_sub_mch_key ON orders (mch_id, sub_mch_id, out_trade_no);
