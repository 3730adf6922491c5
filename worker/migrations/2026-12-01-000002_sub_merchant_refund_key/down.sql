DROP INDEX IF EXISTS refunds_sub_mch_key;
