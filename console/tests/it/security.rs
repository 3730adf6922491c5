//! The security rules over plain HTTP: sessions, CSRF, roles, cookies, the login limit,
//! the trusted proxy, escaping, and the audit trail of an action.

use std::time::Duration;

use reqwest::StatusCode;

use wxpay_testkit::eventually;
use wxpay_testkit::notifications::v2_pay;

use crate::support::{fetch, login, set_cookie, spawn_worker, try_login, App, OPERATOR, VIEWER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_pages_redirect_to_login_and_actions_answer_401() {
    let app = App::start().await;
    for path in ["/", "/search?q=x", "/anomalies", "/parked", "/logout"] {
        let answer = app.get(path, &[]).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "GET {path}");
        assert_eq!(answer.headers()["location"], "/login", "GET {path}");
    }
    for path in ["/parked/replay", "/parked/replay-all", "/logout"] {
        let answer = app
            .post_form(path, &[], &[("csrf", "x"), ("id", "y")])
            .await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "POST {path}");
    }
    // A made-up session cookie is no session.
    let answer = app.get("/", &[("cookie", "console_session=00ff")]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_their_csrf_token_are_refused_with_403() {
    let app = App::start().await;
    let operator = login(&app, OPERATOR.0, OPERATOR.1).await;
    for form in [vec![], vec![("csrf", "0".repeat(64))]] {
        for path in ["/parked/replay-all", "/parked/replay", "/logout"] {
            let answer = app
                .post_form(path, &[("cookie", &operator.cookie)], &form)
                .await;
            assert_eq!(
                answer.status(),
                StatusCode::FORBIDDEN,
                "POST {path} {form:?}"
            );
        }
    }
    // The login form has its own token: a cross-site login POST is refused too.
    let answer = app
        .post_form(
            "/login",
            &[],
            &[("username", OPERATOR.0), ("password", OPERATOR.1)],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    // With the token, the same action is accepted (and audited).
    let answer = app
        .post_form(
            "/parked/replay-all",
            &[("cookie", &operator.cookie)],
            &[("csrf", operator.csrf.as_str())],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        app.env
            .count("FROM console_audit WHERE actor = 'olivia' AND action = 'parked.replay_all' AND result = 'replayed 0'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_every_action_is_refused_with_403() {
    let app = App::start().await;
    app.park(&v2_pay("order-v", "tx-v", 100), "unknown_merchant: test")
        .await;
    let viewer = login(&app, VIEWER.0, VIEWER.1).await;
    let page = app.get("/parked", &[("cookie", &viewer.cookie)]).await;
    assert_eq!(page.status(), StatusCode::OK);
    let body = page.text().await.expect("body");
    assert!(body.contains("unknown_merchant: test"), "{body}");
    assert!(
        !body.contains("/parked/replay"),
        "no replay form for a viewer"
    );
    let id = v2_pay("order-v", "tx-v", 100).message_id.to_string();
    for (path, form) in [
        (
            "/parked/replay",
            vec![("csrf", viewer.csrf.clone()), ("id", id)],
        ),
        ("/parked/replay-all", vec![("csrf", viewer.csrf.clone())]),
    ] {
        let answer = app
            .post_form(path, &[("cookie", &viewer.cookie)], &form)
            .await;
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "POST {path}");
    }
    assert_eq!(app.env.count("FROM console_audit").await, 0);
    let still = fetch(&app, "/parked", &viewer.cookie).await;
    assert!(still.contains("unknown_merchant: test"), "still parked");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_httponly_strict_and_secure_only_behind_tls() {
    /// The operator's session cookie after a login with `headers`.
    async fn session_cookie(app: &App, headers: &[(&str, &str)]) -> String {
        let answer = try_login(app, OPERATOR.0, OPERATOR.1, headers).await;
        set_cookie(&answer, "console_session").expect("cookie")
    }
    let behind_tls = [("x-forwarded-proto", "https")];
    let app = App::start_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    let cookie = session_cookie(&app, &[]).await;
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let cookie = session_cookie(&app, &behind_tls).await;
    assert!(cookie.contains("Secure"), "{cookie}");
    app.stop().await;

    // The same header from an untrusted peer changes nothing.
    let app = App::start_with(|c| c.trusted_proxies = vec!["10.0.0.0/8".into()]).await;
    let cookie = session_cookie(&app, &behind_tls).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_user_and_address() {
    let app = App::start_with(|c| c.login_max_failures = 3).await;
    for _ in 0..3 {
        let answer = try_login(&app, OPERATOR.0, "wrong", &[]).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert!(set_cookie(&answer, "console_session").is_none());
    }
    let answer = try_login(&app, OPERATOR.0, OPERATOR.1, &[]).await;
    assert_eq!(
        answer.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    // Another user from the same address is not locked out.
    let answer = try_login(&app, VIEWER.0, VIEWER.1, &[]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_header_counts_only_from_a_trusted_proxy_and_only_for_known_users() {
    let app = App::start_with(|c| {
        c.auth_header = Some("x-forwarded-user".into());
        c.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let answer = app.get("/", &[("x-forwarded-user", OPERATOR.0)]).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        set_cookie(&answer, "console_session").is_some(),
        "a session for its forms"
    );
    let answer = app.get("/", &[("x-forwarded-user", "stranger")]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    app.stop().await;

    let app = App::start_with(|c| {
        c.auth_header = Some("x-forwarded-user".into());
        c.trusted_proxies = vec!["10.0.0.0/8".into()];
    })
    .await;
    let answer = app.get("/", &[("x-forwarded-user", OPERATOR.0)]).await;
    assert_eq!(
        answer.status(),
        StatusCode::SEE_OTHER,
        "not from a trusted proxy"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shows_the_story_escaped_and_never_a_body() {
    let app = App::start().await;
    app.env.insert_order("order-1", 100).await;
    let running = spawn_worker(app.env.settings());
    app.env.publish(&v2_pay("order-1", "4200000001", 100)).await;
    eventually(std::time::Duration::from_secs(20), "order paid", || async {
        app.env.order("order-1").await.state == "PAID"
    })
    .await;
    running.stop().await;
    let viewer = login(&app, VIEWER.0, VIEWER.1).await;
    for q in ["order-1", "4200000001"] {
        let body = fetch(&app, &format!("/search?q={q}"), &viewer.cookie).await;
        assert!(body.contains("id=\"state-order-1\">PAID<"), "{body}");
        assert!(body.contains("APPLIED") && body.contains("v2"), "{body}");
        assert!(body.contains("order.paid"), "the event: {body}");
        assert!(
            !body.contains("<xml>") && !body.contains("&lt;xml&gt;"),
            "no raw body"
        );
    }
    let body = fetch(
        &app,
        "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        &viewer.cookie,
    )
    .await;
    assert!(!body.contains("<script>"), "{body}");
    assert!(body.contains("&lt;script&gt;"), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_without_a_session() {
    let app = App::start().await;
    assert_eq!(app.get("/healthz", &[]).await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz", &[]).await.status(), StatusCode::OK);
    let login = try_login(&app, OPERATOR.0, "wrong", &[]).await;
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
    let metrics = app.get("/metrics", &[]).await.text().await.expect("body");
    assert!(metrics.contains("wxpay_console_logins_total"), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reapplies_a_corrected_anomaly_once_and_a_viewer_cannot() {
    let app = App::start().await;
    let env = &app.env;
    env.insert_order("order-odd", 100).await;
    let worker = spawn_worker(env.settings());
    env.publish(&v2_pay("order-odd", "4200000901", 999)).await;
    eventually(Duration::from_secs(20), "anomaly recorded", || async {
        env.anomalies("AMOUNT_MISMATCH").await == 1
    })
    .await;
    let anomaly_id: i64 = {
        use diesel_async::RunQueryDsl;
        let mut conn = env.conn().await;
        diesel::sql_query("SELECT id FROM notifications WHERE outcome = 'ANOMALY'")
            .get_result::<AnomalyId>(&mut conn)
            .await
            .expect("anomaly id")
            .id
    };
    let form = |csrf: &str, action: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("id", anomaly_id.to_string()),
            ("action", action.to_owned()),
            ("note", "amount corrected with the merchant".to_owned()),
        ]
    };
    let reapply = async |cookie: &str, csrf: &str| {
        let cookie = [("cookie", cookie)];
        app.post_form("/anomalies/resolve", &cookie, &form(csrf, "reapply"))
            .await
    };
    let viewer = login(&app, VIEWER.0, VIEWER.1).await;
    let refused = reapply(&viewer.cookie, &viewer.csrf).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let operator = login(&app, OPERATOR.0, OPERATOR.1).await;
    // Open, it is listed for both; only the operator's row ends with its resolve form.
    let as_operator = fetch(&app, "/anomalies", &operator.cookie).await;
    let its_form = format!("name=\"id\" value=\"{anomaly_id}\"");
    assert!(
        as_operator.contains("action=\"/anomalies/resolve\"") && as_operator.contains(&its_form),
        "{as_operator}"
    );
    let as_viewer = fetch(&app, "/anomalies", &viewer.cookie).await;
    assert!(
        as_viewer.contains("id=\"open-anomalies\"") && !as_viewer.contains("/anomalies/resolve"),
        "{as_viewer}"
    );
    let no_token = reapply(&operator.cookie, "").await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.order("order-odd").await.state, "NOTPAY");

    // The person corrects the order, then reapplies: the payment is booked once.
    app.correct_order_amount("order-odd", 999).await;
    let done = reapply(&operator.cookie, &operator.csrf).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(env.order("order-odd").await.state, "PAID");
    assert_eq!(
        env.count("FROM console_audit WHERE actor = 'olivia' AND action = 'anomaly.reapply'")
            .await,
        1
    );
    // Resolved: no longer open, and a second reapply changes nothing.
    let again = reapply(&operator.cookie, &operator.csrf).await;
    assert_eq!(again.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(env.outbox_count("order.paid").await, 1);
    let page = fetch(&app, "/anomalies", &operator.cookie).await;
    assert!(page.contains("No open anomaly."), "{page}");
    worker.stop().await;
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct AnomalyId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}
