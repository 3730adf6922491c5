-- Issue 15: combine payments (合单支付). An order paid as one of a combine payment's sub orders
-- names that combine payment's number, set by the business system when it places the combine
-- order, so the reconciler asks the combine query (GET
-- /v3/combine-transactions/out-trade-no/{combine_out_trade_no}) once per combine payment: a
-- sub order cannot be asked about on its own. NULL: a plain order, every existing row's
-- meaning. Expand (docs/MIGRATIONS.md): a NULLable column, no rewrite.
SET lock_timeout = '5s';

ALTER TABLE orders ADD COLUMN combine_out_trade_no TEXT;
