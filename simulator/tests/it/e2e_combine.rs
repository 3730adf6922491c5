//! End to end, a combine payment (合单支付): `wxpay-sim notify --kind v3-combine` →
//! `wxpay-gateway` → RabbitMQ → `wxpay-worker` → PostgreSQL books each sub order on its own
//! order once, and `wxpay-worker reconcile --once` finds a lost combine payment through
//! `wxpay-sim serve`'s combine query, asked once for all its sub orders.

use std::time::Duration;

use diesel_async::AsyncPgConnection;
use wxpay_testkit::db::join_combine;

use crate::e2e_support::{count, insert_order, reconcile_at_once, wait_paid, Stack};

/// `(out_trade_no, fen)` of the two orders paid together.
const SUB_ORDERS: [(&str, i64); 2] = [("CMB-A", 1200), ("CMB-B", 800)];

/// The two NOTPAY orders, placed as sub orders of `combine_out_trade_no`.
async fn insert_sub_orders(conn: &mut AsyncPgConnection, s: &Stack, combine_out_trade_no: &str) {
    for (no, amount) in SUB_ORDERS {
        insert_order(conn, s, no, amount).await;
        join_combine(conn, (&s.mch_id, ""), no, combine_out_trade_no).await;
    }
}

/// `--kind v3-combine --out-trade-no <combine> --sub-order …` of [`SUB_ORDERS`].
fn combine_args(combine_out_trade_no: &str) -> Vec<String> {
    let mut args = vec![
        "--kind".to_owned(),
        "v3-combine".to_owned(),
        "--out-trade-no".to_owned(),
        combine_out_trade_no.to_owned(),
        "--amount".to_owned(),
        SUB_ORDERS
            .iter()
            .map(|(_, fen)| fen)
            .sum::<i64>()
            .to_string(),
    ];
    for (no, amount) in SUB_ORDERS {
        args.extend(["--sub-order".to_owned(), format!("{no}:{amount}")]);
    }
    args
}

async fn order_paid_events(conn: &mut AsyncPgConnection) -> i64 {
    count(conn, "FROM outbox WHERE event_type = 'order.paid'").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combine_payment_through_gateway_and_worker_pays_both_orders_once() {
    let s = Stack::start().await;
    let mut conn = s.conn().await;
    insert_sub_orders(&mut conn, &s, "CMB-1").await;
    let args = combine_args("CMB-1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sent = s.notify_once(&args).await;
    assert!(
        sent.success && sent.stdout.contains("acknowledged after 1 attempt(s)"),
        "{}\n{}",
        sent.describe(),
        s.logs(30)
    );
    for (no, _) in SUB_ORDERS {
        wait_paid(&mut conn, &s, no).await;
    }
    assert_eq!(order_paid_events(&mut conn).await, 2);

    // Sent again (the book keeps its transactions: WeChat Pay's re-send): nothing twice.
    let before = s.worker_done().await;
    let again = s.notify_once(&args).await;
    assert!(again.success, "{}", again.describe());
    s.until_worker_done_beyond(before, "the worker finishing the re-send")
        .await;
    assert_eq!(order_paid_events(&mut conn).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_books_a_lost_combine_payment_through_the_combine_query() {
    let mut s = Stack::prepare(reconcile_at_once).await;
    s.start_all().await;
    let mut conn = s.conn().await;
    insert_sub_orders(&mut conn, &s, "CMB-LOST").await;
    // WeChat Pay knows the combine payment; its notification went to a closed port.
    let mut args = vec![
        "notify".to_owned(),
        "--target".to_owned(),
        "http://127.0.0.1:1".to_owned(),
        "--max-attempts".to_owned(),
        "1".to_owned(),
    ];
    args.extend(combine_args("CMB-LOST"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lost = s.sim(&args).await;
    assert!(!lost.success, "{}", lost.describe());

    let round = s
        .worker_cmd(&["reconcile", "--once"], Duration::from_secs(60))
        .await;
    assert!(round.success, "{}\n{}", round.describe(), s.logs(40));
    for (no, _) in SUB_ORDERS {
        wait_paid(&mut conn, &s, no).await;
    }
    assert_eq!(order_paid_events(&mut conn).await, 2);
    let booked_by_query =
        "FROM notifications WHERE kind = 'query.pay' AND outcome = 'APPLIED' AND dedupe_key LIKE 'pay:%'";
    assert_eq!(count(&mut conn, booked_by_query).await, 2);
    // Two due sub orders, one combine query.
    let queries: serde_json::Value = reqwest::get(format!("{}/sim/queries", s.sim_url()))
        .await
        .expect("GET /sim/queries")
        .json()
        .await
        .expect("JSON");
    assert_eq!(queries["orders"]["CMB-LOST"], 1, "{queries}");
    assert!(queries["orders"].get("CMB-A").is_none(), "{queries}");
}
