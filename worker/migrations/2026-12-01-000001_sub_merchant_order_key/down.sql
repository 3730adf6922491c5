DROP INDEX IF EXISTS orders_sub_mch_key;
