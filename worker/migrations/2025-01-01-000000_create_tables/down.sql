DROP TABLE outbox;
DROP TABLE notifications;
DROP TABLE refunds;
DROP TABLE orders;
