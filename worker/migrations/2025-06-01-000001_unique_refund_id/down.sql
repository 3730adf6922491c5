DROP INDEX IF EXISTS refunds_mch_refund_id;
