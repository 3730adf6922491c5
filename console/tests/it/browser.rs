//! The console in a real browser: Debian's chromium, headless, driven through chromedriver
//! (started here on a free port) with fantoccini. Set `WXPAY_CONSOLE_SCREENSHOTS=DIR` to
//! save a screenshot of each page (docs/console/*.png are made this way).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use wxpay_testkit::eventually;
use wxpay_testkit::notifications::{v2_pay, v3_pay};

use crate::support::{spawn_worker, App, OPERATOR, VIEWER};

/// chromedriver in a process group of its own, the browsers it starts included: the group
/// (the one this test started) is killed when dropped, so that a failing test, which never
/// closes its session, leaves no browser behind.
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
                .process_group(0)
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
        if let Ok(group) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
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

/// The XPath of the open anomaly of `order` (its row in the operator's table).
fn open_anomaly_row(order: &str) -> String {
    format!("//table[@id='open-anomalies']//tr[td[4]='{order}']")
}

/// The cells' texts of the first row of table `id` with a cell reading `cell`.
async fn row_cells(browser: &Client, id: &str, cell: &str) -> Vec<String> {
    let row = browser
        .find(Locator::XPath(&format!(
            "//table[@id='{id}']//tr[td[.='{cell}']]"
        )))
        .await
        .unwrap_or_else(|_| panic!("a row of #{id} reads {cell:?}"));
    let mut texts = Vec::new();
    for td in row.find_all(Locator::Css("td")).await.expect("cells") {
        texts.push(td.text().await.expect("text"));
    }
    texts
}

/// Clicks `action` (reapply / dismiss) on the open anomaly of `order`, whose note field
/// already holds `note`, and waits for the audit line that names the note.
async fn resolve_anomaly(browser: &Client, order: &str, action: &str, note: &str) {
    click(
        browser,
        Locator::XPath(&format!(
            "{}//button[@value='{action}']",
            open_anomaly_row(order)
        )),
    )
    .await;
    let audit = text_when(browser, Locator::Id("audit"), |t| t.contains(note)).await;
    assert!(audit.contains(note), "{action} {order} audited: {audit}");
}

/// Asserts the audit line with `note`: this operator, now, this action, and its result.
async fn assert_audited(browser: &Client, note: &str, action: &str, result: &str) {
    let cells = row_cells(browser, "audit", note).await;
    let [when, who, what, _target, _note, outcome] = &cells[..] else {
        panic!("audit columns: {cells:?}");
    };
    let when = chrono::NaiveDateTime::parse_from_str(when, "%Y-%m-%d %H:%M:%S UTC")
        .unwrap_or_else(|_| panic!("a time: {when:?}"))
        .and_utc();
    let age = chrono::Utc::now() - when;
    assert!(
        age >= chrono::Duration::seconds(-5) && age < chrono::Duration::minutes(2),
        "just now: {when}"
    );
    assert_eq!(who, OPERATOR.0);
    assert_eq!(what, action);
    assert!(outcome.contains(result), "{action}: {outcome}");
}

/// Opens `path`; its text, after a screenshot named `name`.
async fn visit(browser: &Client, app: &App, path: &str, name: &str) -> String {
    browser.goto(&app.url(path)).await.expect("goto");
    let text = body_text(browser).await;
    screenshot(browser, name).await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_find_payments_resolve_anomalies_and_replay_parked_messages_viewers_cannot() {
    let app = App::start().await;
    let env = &app.env;
    env.insert_order("order-paid", 2_500).await;
    env.insert_order("order-parked", 700).await;
    // Three amount mismatches: one the operator corrects and reapplies, one dismissed, one
    // left open for the viewer.
    for (order, transaction_id) in [
        ("order-odd", "4200000102"),
        ("order-stray", "4200000105"),
        ("order-open", "4200000106"),
    ] {
        env.insert_order(order, 100).await;
        env.publish(&v2_pay(order, transaction_id, 999)).await;
    }
    let worker = spawn_worker(env.settings());
    env.publish(&v2_pay("order-paid", "4200000101", 2_500))
        .await;
    eventually(
        Duration::from_secs(20),
        "paid and anomalies applied",
        || async {
            env.order("order-paid").await.state == "PAID"
                && env.anomalies("AMOUNT_MISMATCH").await == 3
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

    // Anomalies: the person corrects order-odd's amount and reapplies its notification (the
    // order is paid once), dismisses order-stray; both leave the open list, noted and audited.
    browser.goto(&app.url("/anomalies")).await.expect("goto");
    let open = text(&browser, Locator::Id("open-anomalies")).await;
    assert!(
        ["order-odd", "order-stray", "order-open"]
            .iter()
            .all(|order| open.contains(order))
            && open.contains("AMOUNT_MISMATCH"),
        "{open}"
    );
    app.correct_order_amount("order-odd", 999).await;
    let reapplied = "amount corrected with the merchant";
    let note_field = format!("{}//input[@name='note']", open_anomaly_row("order-odd"));
    type_into(&browser, Locator::XPath(&note_field), reapplied).await;
    screenshot(&browser, "anomalies").await;
    resolve_anomaly(&browser, "order-odd", "reapply", reapplied).await;
    let dismissed = "test payment, refunded in the merchant platform";
    let note_field = format!("{}//input[@name='note']", open_anomaly_row("order-stray"));
    type_into(&browser, Locator::XPath(&note_field), dismissed).await;
    resolve_anomaly(&browser, "order-stray", "dismiss", dismissed).await;
    assert_audited(&browser, reapplied, "anomaly.reapply", "APPLIED").await;
    assert_audited(&browser, dismissed, "anomaly.dismiss", "DISMISSED").await;
    let open = text(&browser, Locator::Id("open-anomalies")).await;
    assert!(
        !open.contains("order-odd") && !open.contains("order-stray") && open.contains("order-open"),
        "{open}"
    );
    let recorded = row_cells(&browser, "anomalies", "order-odd").await;
    let resolution = recorded.last().expect("a resolution column");
    assert!(
        resolution.contains("reapply → APPLIED")
            && resolution.contains(OPERATOR.0)
            && resolution.contains(reapplied),
        "{recorded:?}"
    );
    let recorded = row_cells(&browser, "anomalies", "order-stray").await;
    let resolution = recorded.last().expect("a resolution column");
    assert!(resolution.contains("dismiss → DISMISSED"), "{recorded:?}");
    let recorded = row_cells(&browser, "anomalies", "order-open").await;
    assert_eq!(recorded.last().map(String::as_str), Some("open"));
    // The screenshot shows the resolutions and the audit below them.
    browser
        .execute(
            "document.getElementById('anomalies').scrollIntoView()",
            vec![],
        )
        .await
        .expect("scroll");
    screenshot(&browser, "anomalies-resolved").await;
    // The reapplied payment on the order's story: PAID, its new notification APPLIED beside
    // the anomaly; the dismissed order is left unpaid.
    browser
        .goto(&app.url("/search?q=order-odd"))
        .await
        .expect("goto");
    assert_eq!(text(&browser, Locator::Id("state-order-odd")).await, "PAID");
    let notifications = text(&browser, Locator::Id("notifications")).await;
    assert!(
        notifications.contains("ANOMALY") && notifications.contains("APPLIED"),
        "{notifications}"
    );
    browser
        .goto(&app.url("/search?q=order-stray"))
        .await
        .expect("goto");
    assert_eq!(
        text(&browser, Locator::Id("state-order-stray")).await,
        "NOTPAY"
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
    // A viewer reads the open anomaly but has no form to resolve it.
    browser.goto(&app.url("/anomalies")).await.expect("goto");
    let open = text(&browser, Locator::Id("open-anomalies")).await;
    assert!(open.contains("order-open"), "{open}");
    assert!(
        browser
            .find(Locator::Css("form[action='/anomalies/resolve']"))
            .await
            .is_err(),
        "no resolve form"
    );
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
