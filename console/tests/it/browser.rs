//! The console in a real browser: Debian's chromium, headless, driven through chromedriver
//! (started here on a free port) with fantoccini. Set `WXPAY_CONSOLE_SCREENSHOTS=DIR` to
//! save a screenshot of each page (docs/console/*.png are made this way).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use wxpay_testkit::eventually;
use wxpay_testkit::notifications::{v2_pay, v3_pay};

use crate::support::{spawn_worker, App, OPERATOR, VIEWER};

/// chromedriver, stopped (by its pid, the one this test started) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child =
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver runs (scripts/test installs Debian's chromium-driver)");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        eventually(
            Duration::from_secs(20),
            "chromedriver listening",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        driver
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn screenshot(browser: &Client, name: &str) {
    if let Ok(dir) = std::env::var("WXPAY_CONSOLE_SCREENSHOTS") {
        let png = browser.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(format!("{dir}/{name}.png"), png).expect("screenshot written");
    }
}

async fn log_in(browser: &Client, app: &App, user: &str, password: &str) {
    browser.goto(&app.url("/")).await.expect("goto");
    assert!(
        browser.current_url().await.expect("url").path() == "/login",
        "sent to the login page"
    );
    type_into(browser, Locator::Css("input[name=username]"), user).await;
    type_into(browser, Locator::Css("input[name=password]"), password).await;
    click(browser, Locator::Id("login")).await;
    let heading = text_when(browser, Locator::Css("h1"), |h| h == "Overview").await;
    assert_eq!(heading, "Overview");
}

/// The text of the element `locator` finds on the current page.
async fn text(browser: &Client, locator: Locator<'_>) -> String {
    browser
        .find(locator)
        .await
        .expect("element")
        .text()
        .await
        .expect("text")
}

/// Polls the text of `locator` until `done` holds or 10 s pass, and returns the last text
/// read: a click's (or a script's) navigation may still be under way, and the old page's
/// elements go stale meanwhile.
async fn text_when(browser: &Client, locator: Locator<'_>, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(element) = browser.find(locator).await {
            last = element.text().await.unwrap_or_default();
            if done(&last) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn body_text(browser: &Client) -> String {
    text(browser, Locator::Css("main")).await
}

async fn click(browser: &Client, locator: Locator<'_>) {
    browser
        .find(locator)
        .await
        .expect("element")
        .click()
        .await
        .expect("click");
}

async fn type_into(browser: &Client, locator: Locator<'_>, keys: &str) {
    browser
        .find(locator)
        .await
        .expect("field")
        .send_keys(keys)
        .await
        .expect("type");
}

/// Opens `path`; its text, after a screenshot named `name`.
async fn visit(browser: &Client, app: &App, path: &str, name: &str) -> String {
    browser.goto(&app.url(path)).await.expect("goto");
    let text = body_text(browser).await;
    screenshot(browser, name).await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_find_payments_and_replay_parked_messages_viewers_cannot() {
    let app = App::start().await;
    let env = &app.env;
    env.insert_order("order-paid", 2_500).await;
    env.insert_order("order-odd", 100).await;
    env.insert_order("order-parked", 700).await;
    let worker = spawn_worker(env.settings());
    env.publish(&v2_pay("order-paid", "4200000101", 2_500))
        .await;
    env.publish(&v2_pay("order-odd", "4200000102", 999)).await;
    eventually(
        Duration::from_secs(20),
        "paid and anomaly applied",
        || async {
            env.order("order-paid").await.state == "PAID"
                && env.anomalies("AMOUNT_MISMATCH").await == 1
        },
    )
    .await;
    let parked = v3_pay("order-parked", "4200000103", 700);
    app.park(&parked, "retries_exhausted: database unavailable")
        .await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Log in; every page needs it.
    browser.goto(&app.url("/login")).await.expect("goto");
    screenshot(&browser, "login").await;
    log_in(&browser, &app, OPERATOR.0, OPERATOR.1).await;
    let overview = body_text(&browser).await;
    assert!(
        overview.contains("APPLIED") && overview.contains("AMOUNT_MISMATCH"),
        "{overview}"
    );
    screenshot(&browser, "overview").await;

    // Search a paid order: PAID and its notification.
    browser.goto(&app.url("/search")).await.expect("goto");
    type_into(&browser, Locator::Id("q"), "order-paid").await;
    click(&browser, Locator::Id("search")).await;
    let state = text(&browser, Locator::Id("state-order-paid")).await;
    assert_eq!(state, "PAID");
    let notifications = text(&browser, Locator::Id("notifications")).await;
    assert!(
        notifications.contains("v2.pay") && notifications.contains("APPLIED"),
        "{notifications}"
    );
    screenshot(&browser, "search").await;

    let anomalies = visit(&browser, &app, "/anomalies", "anomalies").await;
    assert!(
        anomalies.contains("AMOUNT_MISMATCH") && anomalies.contains("order-odd"),
        "{anomalies}"
    );

    // Replay the parked message: it leaves the list, the worker pays the order.
    let list = visit(&browser, &app, "/parked", "parked").await;
    assert!(list.contains(&parked.message_id.to_string()), "{list}");
    click(&browser, Locator::Css("button.replay")).await;
    let after = text_when(&browser, Locator::Css("main"), |t| t.contains("replayed 1")).await;
    assert!(after.contains("No parked message."), "{after}");
    assert!(
        after.contains("parked.replay") && after.contains("replayed 1"),
        "audited: {after}"
    );
    eventually(Duration::from_secs(20), "replayed order paid", || async {
        env.order("order-parked").await.state == "PAID"
    })
    .await;
    browser
        .goto(&app.url("/search?q=order-parked"))
        .await
        .expect("goto");
    let state = text(&browser, Locator::Id("state-order-parked")).await;
    assert_eq!(state, "PAID");
    worker.stop().await;

    // Log out; then a viewer, whose forged replay is refused.
    browser.goto(&app.url("/logout")).await.expect("goto");
    click(&browser, Locator::Id("logout")).await;
    let heading = text_when(&browser, Locator::Css("h1"), |h| h == "Log in").await;
    assert_eq!(heading, "Log in", "logged out");
    app.park(
        &v2_pay("order-x", "4200000104", 1),
        "unknown_merchant: test",
    )
    .await;
    log_in(&browser, &app, VIEWER.0, VIEWER.1).await;
    browser.goto(&app.url("/parked")).await.expect("goto");
    assert!(
        browser.find(Locator::Css("button.replay")).await.is_err(),
        "no replay button"
    );
    browser
        .execute(
            "const csrf = document.querySelector('input[name=csrf]').value;\
             const f = document.createElement('form'); f.method = 'post'; f.action = '/parked/replay-all';\
             const i = document.createElement('input'); i.type = 'hidden'; i.name = 'csrf'; i.value = csrf;\
             f.appendChild(i); document.body.appendChild(f); f.submit();",
            vec![],
        )
        .await
        .expect("forged form");
    let heading = text_when(&browser, Locator::Css("h1"), |h| h != "Parked messages").await;
    assert_eq!(heading, "Only operators may do this");
    browser.close().await.expect("close");
    app.stop().await;
}
