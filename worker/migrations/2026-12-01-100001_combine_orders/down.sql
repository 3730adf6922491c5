ALTER TABLE orders DROP COLUMN combine_out_trade_no;
