//! The database layer: a pool checkout never waits forever, and the hot-path statements
//! are prepared once per connection.

use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::PoolError;
use diesel_async::RunQueryDsl;
use wxpay_worker::db;
use wxpay_worker::db::queries::MarkPaid;

use crate::builders;
use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_of_an_exhausted_pool_times_out() {
    let env = TestEnv::new().await;
    let wait = Duration::from_millis(200);
    let pool = db::build_pool(&env.db_url(), 1, Duration::from_secs(2), wait).expect("pool");
    let held = pool.get().await.expect("first checkout");
    let started = Instant::now();
    // The outer bound only turns a hang into a failure; the pool must answer well before.
    let second = tokio::time::timeout(Duration::from_secs(5), pool.get())
        .await
        .expect("checkout bounded by the pool's wait timeout");
    let waited = started.elapsed();
    let Err(error) = second else {
        panic!("a second connection out of a pool of one");
    };
    assert!(matches!(error, PoolError::Timeout(_)), "{error}");
    assert!(waited >= wait, "gave up after {waited:?}");
    drop(held);
    let _again = pool
        .get()
        .await
        .expect("checkout once the connection is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_from_a_server_that_never_answers_times_out() {
    // Accepts TCP, then says nothing: the startup handshake would wait forever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let connect = Duration::from_millis(500);
    let pool = db::build_pool(
        &format!("postgres://postgres@{address}/wxpay"),
        2,
        connect,
        Duration::from_secs(1),
    )
    .expect("pool");
    let started = Instant::now();
    let checkout = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("checkout bounded by the pool's create timeout");
    assert!(checkout.is_err(), "a connection out of a silent server");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after {:?}",
        started.elapsed()
    );
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_path_update_is_prepared_once_per_connection() {
    let env = TestEnv::new().await;
    env.insert_order("p-1", 100).await;
    let mut conn = env.conn().await;
    for _ in 0..3 {
        let updated = MarkPaid {
            mch_id: &builders::merchant_settings().mch_id,
            sub_mch_id: "",
            out_trade_no: "p-1",
            transaction_id: Some("4200p1"),
            paid_at: Utc::now(),
            event_seq: 1,
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
