//! A running console over a fresh test environment (wxpay-testkit's, with the worker's
//! migrated schema), a worker to apply what tests publish, users with known passwords, and
//! an HTTP client that logs in like a browser (login cookie, CSRF field, session cookie).

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use reqwest::redirect::Policy;
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use wxpay_console::{auth, Console};
use wxpay_runtime::amqp::AmqpMessage;
use wxpay_runtime::config::{ConsoleRole, ConsoleSettings, ConsoleUser, Settings};
use wxpay_shared::message::NotifyMessage;
use wxpay_testkit::{Background, TestEnv};
use wxpay_worker::{migrate, retry, Worker};

pub const OPERATOR: (&str, &str) = ("olivia", "operator password 1");
pub const VIEWER: (&str, &str) = ("victor", "viewer password 2");

fn hash(password: &'static str, slot: &'static OnceLock<String>) -> SecretString {
    SecretString::from(
        slot.get_or_init(|| auth::hash_password(password).expect("hash"))
            .clone(),
    )
}

pub fn users() -> Vec<ConsoleUser> {
    static OPERATOR_HASH: OnceLock<String> = OnceLock::new();
    static VIEWER_HASH: OnceLock<String> = OnceLock::new();
    vec![
        ConsoleUser {
            name: OPERATOR.0.into(),
            password_hash: Some(hash(OPERATOR.1, &OPERATOR_HASH)),
            role: ConsoleRole::Operator,
        },
        ConsoleUser {
            name: VIEWER.0.into(),
            password_hash: Some(hash(VIEWER.1, &VIEWER_HASH)),
            role: ConsoleRole::Viewer,
        },
    ]
}

pub struct App {
    pub env: TestEnv,
    pub base: String,
    handle: ServerHandle,
}

impl App {
    pub async fn start() -> App {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ConsoleSettings)) -> App {
        let env = TestEnv::new("console", wxpay_testkit::default_settings());
        migrate::migrate(&env.db_url(), Duration::from_secs(5))
            .await
            .expect("migrates");
        let mut settings: Settings = env.settings();
        settings.console = ConsoleSettings {
            listen: "127.0.0.1:0".into(),
            users: users(),
            ..ConsoleSettings::default()
        };
        adjust(&mut settings.console);
        let console = Console::new(settings).expect("console builds");
        let (server, address) = console.serve("127.0.0.1:0").expect("binds");
        let handle = server.handle();
        tokio::spawn(server);
        App {
            env,
            base: format!("http://{address}"),
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` with `headers` (a cookie, proxy headers), following no redirect.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = client().get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("get")
    }

    /// POSTs `form` to `path` with `headers` (a cookie), following no redirect.
    pub async fn post_form(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        form: &impl serde::Serialize,
    ) -> Response {
        let mut request = client().post(self.url(path)).form(form);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("post")
    }

    /// Parks `message` as the worker would have (with a park reason), confirmed.
    pub async fn park(&self, message: &NotifyMessage, reason: &str) {
        let properties = retry::with_headers(&message.properties(), Some(5), Some(reason), None);
        let parked = self.env.settings.rabbitmq.parked_queue();
        wxpay_testkit::amqp::publish_raw(&parked, &[(&message.body, properties)]).await;
    }

    /// Corrects an order's amount, as a person does before reapplying its AMOUNT_MISMATCH.
    pub async fn correct_order_amount(&self, out_trade_no: &str, amount_total: i64) {
        use diesel::sql_types::{BigInt, Text};
        use diesel_async::RunQueryDsl;
        let mut conn = self.env.conn().await;
        let updated =
            diesel::sql_query("UPDATE orders SET amount_total = $1 WHERE out_trade_no = $2")
                .bind::<BigInt, _>(amount_total)
                .bind::<Text, _>(out_trade_no)
                .execute(&mut conn)
                .await
                .expect("order corrected");
        assert_eq!(updated, 1, "one order {out_trade_no}");
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A page's body, fetched with a session cookie.
pub async fn fetch(app: &App, path: &str, cookie: &str) -> String {
    app.get(path, &[("cookie", cookie)])
        .await
        .text()
        .await
        .expect("body")
}

/// A worker applying what the tests publish, until stopped.
pub fn spawn_worker(settings: Settings) -> Background {
    let worker = Worker::new(settings).expect("worker builds");
    Background::spawn(|token| async move { worker.run(token).await })
}

/// The value of `name="…" value="…"` hidden input in a page.
pub fn hidden(body: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body.find(&marker)? + marker.len();
    let end = body[start..].find('"')?;
    Some(body[start..start + end].to_owned())
}

/// `name=value` of a response's Set-Cookie for `name`, with its attributes.
pub fn set_cookie(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}

/// A client that follows no redirect, so that tests see the 303s.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// A logged-in user: the `Cookie` header value and the session's CSRF token.
pub struct Login {
    pub cookie: String,
    pub csrf: String,
}

/// Logs in through the form; `extra` headers go with every request (proxy headers).
pub async fn try_login(app: &App, user: &str, password: &str, extra: &[(&str, &str)]) -> Response {
    let form = app.get("/login", extra).await;
    let login_cookie = cookie_pair(&set_cookie(&form, "console_login").expect("login cookie"));
    let csrf = hidden(&form.text().await.expect("body"), "csrf").expect("csrf field");
    let mut headers = vec![("cookie", login_cookie.as_str())];
    headers.extend_from_slice(extra);
    let fields = [("username", user), ("password", password), ("csrf", &csrf)];
    app.post_form("/login", &headers, &fields).await
}

pub async fn login(app: &App, user: &str, password: &str) -> Login {
    let answer = try_login(app, user, password, &[]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "login succeeds");
    let cookie = cookie_pair(&set_cookie(&answer, "console_session").expect("session cookie"));
    let page = app.get("/parked", &[("cookie", &cookie)]).await;
    let csrf = hidden(&page.text().await.expect("body"), "csrf").expect("csrf on every page");
    Login { cookie, csrf }
}
