//! The database layer: the hot-path statements are prepared once per connection.

use chrono::Utc;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use wxpay_worker::db::queries::MarkPaid;

use crate::builders;
use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_path_update_is_prepared_once_per_connection() {
    let env = TestEnv::new().await;
    env.insert_order("p-1", 100).await;
    let mut conn = env.conn().await;
    for _ in 0..3 {
        let updated = MarkPaid {
            mch_id: &builders::merchant_settings().mch_id,
            out_trade_no: "p-1",
            transaction_id: Some("4200p1"),
            paid_at: Utc::now(),
        }
        .execute(&mut conn)
        .await
        .expect("update");
        assert_eq!(updated, 1);
    }
    #[derive(QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // diesel's own UPDATE goes through an unnamed statement each time: not listed here.
    let prepared: Prepared = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1",
    )
    .bind::<Text, _>("UPDATE orders SET state = 'PAID'%")
    .get_result(&mut conn)
    .await
    .expect("count");
    assert_eq!(prepared.n, 1, "one named statement, reused");
}
