//! The pages and the actions. Every GET page needs a session (else 303 to `/login`); every
//! POST action needs a session (else 401), its form's CSRF token (else 403) and the
//! operator role (else 403), and leaves a line in the audit table.
//!
//! An action is `act` with a closure: anomaly `reapply` / `dismiss` become one route and
//! one call of the worker's resolution each, with the note as the audit note.

use std::future::Future;
use std::net::IpAddr;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use wxpay_runtime::config::ConsoleRole;
use wxpay_runtime::platform_keys;
use wxpay_runtime::reload::MerchantsHandle;
use wxpay_runtime::telemetry::metric;
use wxpay_worker::anomaly::{self, Action};
use wxpay_worker::retry::{self, ReplaySelection};

use crate::auth::{random_token, tokens_match, Session};
use crate::data::{self, AuditRow, NotificationRow, RecordedAnomaly, Story};
use crate::html::{self, escape, mask_openids, opt, opt_time, table, time, Viewer};
use crate::State;

/// The session cookie (HttpOnly, SameSite=Strict, Secure behind TLS).
pub const SESSION_COOKIE: &str = "console_session";
/// The login form's own CSRF cookie (double submit: before a session exists).
pub const LOGIN_COOKIE: &str = "console_login";

type Data = web::Data<State>;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(overview))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/logout", web::get().to(logout_form))
        .route("/logout", web::post().to(logout))
        .route("/search", web::get().to(search))
        .route("/anomalies", web::get().to(anomalies))
        .route("/anomalies/resolve", web::post().to(resolve_anomaly))
        .route("/parked", web::get().to(parked))
        .route("/parked/replay", web::post().to(replay_one))
        .route("/parked/replay-all", web::post().to(replay_all));
}

// ------------------------------------------------------------------ requests and answers

fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn header_text<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

fn from_trusted_proxy(state: &State, req: &HttpRequest) -> bool {
    req.peer_addr()
        .is_some_and(|peer| state.proxies.trusts(peer.ip()))
}

/// The client's address: the peer, or behind a trusted proxy the address it appended last.
fn client_ip(state: &State, req: &HttpRequest) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|peer| peer.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !state.proxies.trusts(peer) {
        return peer;
    }
    header_text(req, "x-forwarded-for")
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

fn secure(state: &State, req: &HttpRequest) -> bool {
    state.settings.console.secure_cookies
        || (from_trusted_proxy(state, req)
            && header_text(req, "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case("https")))
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> String {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

fn respond(status: StatusCode, body: String, cookies: &[String]) -> HttpResponse {
    let mut answer = HttpResponse::build(status);
    answer
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ));
    for cookie in cookies {
        answer.append_header((header::SET_COOKIE, cookie.as_str()));
    }
    answer.body(body)
}

fn redirect(location: &str, cookies: &[String]) -> HttpResponse {
    let mut answer = HttpResponse::SeeOther();
    answer
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    for cookie in cookies {
        answer.append_header((header::SET_COOKIE, cookie.as_str()));
    }
    answer.finish()
}

fn refusal(status: StatusCode, message: &str) -> HttpResponse {
    respond(
        status,
        html::page(message, None, "<p><a href=\"/\">Back</a></p>"),
        &[],
    )
}

/// A request with a user behind it.
struct Authed {
    session: Session,
    /// A session created for a proxy-authenticated user: its cookie goes out with the answer.
    new_cookie: Option<String>,
}

impl Authed {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            user: &self.session.user,
            role: self.session.role.as_str(),
            csrf: &self.session.csrf,
        }
    }

    fn page(&self, title: &str, body: &str) -> HttpResponse {
        let cookies: Vec<String> = self.new_cookie.iter().cloned().collect();
        respond(
            StatusCode::OK,
            html::page(title, Some(&self.viewer()), body),
            &cookies,
        )
    }

    fn is_operator(&self) -> bool {
        self.session.role == ConsoleRole::Operator
    }
}

/// The session cookie's session, or a user named by the trusted proxy's header (who then
/// gets a session, so that forms carry a CSRF token like everyone's).
fn authenticate(state: &State, req: &HttpRequest) -> Option<Authed> {
    let proxy_user = state
        .proxies
        .auth_header
        .as_deref()
        .filter(|_| from_trusted_proxy(state, req))
        .and_then(|name| header_text(req, name))
        .filter(|user| !user.is_empty());
    if let Some(session) = cookie(req, SESSION_COOKIE).and_then(|t| state.sessions.get(&t)) {
        // The proxy may have switched users: its word wins over an older session of its own.
        if !session.via_proxy || proxy_user == Some(session.user.as_str()) {
            return Some(Authed {
                session,
                new_cookie: None,
            });
        }
    }
    let user = proxy_user?;
    let role = state.users.role(user)?;
    let (token, session) = state.sessions.create(user, role, true);
    Some(Authed {
        session,
        new_cookie: Some(set_cookie(SESSION_COOKIE, &token, None, secure(state, req))),
    })
}

fn to_login() -> HttpResponse {
    redirect("/login", &[])
}

fn error_note(what: &str, error: &dyn std::fmt::Display) -> String {
    tracing::warn!(what, %error, "console page data unavailable");
    format!(
        "<p class=\"warn\">{} unavailable: {}</p>",
        escape(what),
        escape(&error.to_string())
    )
}

// ------------------------------------------------------------------ login and logout

#[derive(Default, Deserialize)]
#[serde(default)]
struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

fn login_page(
    status: StatusCode,
    state: &State,
    req: &HttpRequest,
    message: Option<&str>,
) -> HttpResponse {
    let token = random_token();
    let message = message
        .map(|m| format!("<p class=\"warn\" id=\"login-error\">{}</p>", escape(m)))
        .unwrap_or_default();
    let body = format!(
        "{message}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <p><label>User name <input name=\"username\" autocomplete=\"username\" required></label></p>\
         <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
         <p><button type=\"submit\" id=\"login\">Log in</button></p></form>"
    );
    respond(
        status,
        html::page("Log in", None, &body),
        &[set_cookie(
            LOGIN_COOKIE,
            &token,
            Some(600),
            secure(state, req),
        )],
    )
}

async fn login_form(state: Data, req: HttpRequest) -> HttpResponse {
    if authenticate(&state, &req).is_some() {
        return redirect("/", &[]);
    }
    login_page(StatusCode::OK, &state, &req, None)
}

/// The login form again, with `message`, counted as a login of `result`.
fn login_again(
    state: &State,
    req: &HttpRequest,
    status: StatusCode,
    result: &'static str,
    message: &str,
) -> HttpResponse {
    metrics::counter!(metric::CONSOLE_LOGINS_TOTAL, "result" => result).increment(1);
    login_page(status, state, req, Some(message))
}

async fn login(state: Data, req: HttpRequest, form: web::Form<LoginForm>) -> HttpResponse {
    let form = form.into_inner();
    let expected = cookie(&req, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !tokens_match(&expected, &form.csrf) {
        metrics::counter!(metric::CONSOLE_LOGINS_TOTAL, "result" => "refused").increment(1);
        return refusal(StatusCode::FORBIDDEN, "Missing or wrong CSRF token");
    }
    let client = client_ip(&state, &req);
    if state.limiter.blocked(&form.username, client) {
        tracing::warn!(user = form.username.as_str(), %client, "console login rate-limited");
        let message = "Too many failed attempts: try again later.";
        return login_again(
            &state,
            &req,
            StatusCode::TOO_MANY_REQUESTS,
            "limited",
            message,
        );
    }
    let verifier = state.clone().into_inner();
    let (user, password) = (form.username.clone(), form.password);
    let role = web::block(move || verifier.users.verify(&user, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        state.limiter.failed(&form.username, client);
        tracing::info!(user = form.username.as_str(), %client, "console login failed");
        let message = "Wrong user name or password.";
        return login_again(&state, &req, StatusCode::UNAUTHORIZED, "failed", message);
    };
    state.limiter.succeeded(&form.username, client);
    metrics::counter!(metric::CONSOLE_LOGINS_TOTAL, "result" => "ok").increment(1);
    tracing::info!(user = form.username.as_str(), %client, "console login");
    let (token, _) = state.sessions.create(&form.username, role, false);
    let secure = secure(&state, &req);
    redirect(
        "/",
        &[
            set_cookie(SESSION_COOKIE, &token, None, secure),
            set_cookie(LOGIN_COOKIE, "", Some(0), secure),
        ],
    )
}

async fn logout_form(state: Data, req: HttpRequest) -> HttpResponse {
    let Some(auth) = authenticate(&state, &req) else {
        return to_login();
    };
    let body = format!(
        "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"logout\">Log out</button></form>",
        escape(&auth.session.csrf)
    );
    auth.page("Log out", &body)
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct CsrfForm {
    csrf: String,
}

async fn logout(state: Data, req: HttpRequest, form: web::Form<CsrfForm>) -> HttpResponse {
    let Some(auth) = authenticate(&state, &req) else {
        return refusal(StatusCode::UNAUTHORIZED, "Not logged in");
    };
    if !tokens_match(&auth.session.csrf, &form.csrf) {
        return refusal(StatusCode::FORBIDDEN, "Missing or wrong CSRF token");
    }
    if let Some(token) = cookie(&req, SESSION_COOKIE) {
        state.sessions.remove(&token);
    }
    redirect(
        "/login",
        &[set_cookie(
            SESSION_COOKIE,
            "",
            Some(0),
            secure(&state, &req),
        )],
    )
}

// ------------------------------------------------------------------ overview

async fn overview(state: Data, req: HttpRequest) -> HttpResponse {
    let Some(auth) = authenticate(&state, &req) else {
        return to_login();
    };
    let (database, depths) = tokio::join!(
        data::overview(&state.pool, &state.settings),
        data::queue_depths(&state.settings)
    );
    let mut body = String::from("<h2>Last hour, by outcome</h2>");
    match database {
        Ok(overview) => {
            let rows: Vec<Vec<String>> = overview
                .outcomes
                .iter()
                .map(|(outcome, reason, n)| {
                    vec![escape(outcome.as_str()), opt(reason), n.to_string()]
                })
                .collect();
            body.push_str(&table(
                "outcomes",
                &["Outcome", "Reason", "Notifications"],
                &rows,
                "No notification processed in the last hour.",
            ));
            body.push_str(
                "<p class=\"muted\">Rejected requests (bad signature, unknown merchant) never \
                 reach the database: see <code>wxpay_gateway_requests_total</code>. Failed \
                 messages are the parked ones below.</p>",
            );
            let lag = &overview.lag;
            body.push_str(&format!(
                "<h2>Lag (processed − received, last hour)</h2><table id=\"lag\">\
                 <tr><th>Processed</th><th>Average</th><th>95th percentile</th><th>Max</th></tr>\
                 <tr><td>{}</td><td>{:.3} s</td><td>{:.3} s</td><td>{:.3} s</td></tr></table>",
                lag.processed, lag.avg_s, lag.p95_s, lag.max_s
            ));
            body.push_str("<h2>Oldest unpaid order the reconciler is watching</h2>");
            match &overview.oldest_unpaid {
                Some(unpaid) => body.push_str(&format!(
                    "<p id=\"oldest-unpaid\"><a href=\"/search?q={}\">{}</a> (merchant {}), created {}</p>",
                    escape(&unpaid.out_trade_no),
                    escape(&unpaid.out_trade_no),
                    escape(&unpaid.mch_id),
                    time(&unpaid.created_at)
                )),
                None => body.push_str("<p class=\"muted\" id=\"oldest-unpaid\">None in the window.</p>"),
            }
        }
        Err(error) => body.push_str(&error_note("Database", &error)),
    }
    body.push_str("<h2>Queues (ready messages)</h2>");
    match depths {
        Ok(depths) => {
            let rows: Vec<Vec<String>> = depths
                .iter()
                .map(|(name, depth)| {
                    vec![
                        escape(name),
                        depth
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "not declared".into()),
                    ]
                })
                .collect();
            body.push_str(&table("queues", &["Queue", "Ready"], &rows, "No queues."));
        }
        Err(error) => body.push_str(&error_note("RabbitMQ", &error)),
    }
    auth.page("Overview", &body)
}

// ------------------------------------------------------------------ search

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

fn notification_cells(n: &NotificationRow) -> Vec<String> {
    let anomaly = match (&n.anomaly_reason, &n.anomaly_detail) {
        (Some(reason), detail) => format!(
            "<span class=\"warn\">{}</span> {}",
            escape(reason),
            escape(&mask_openids(detail.as_deref().unwrap_or("")))
        ),
        (None, _) => "—".into(),
    };
    vec![
        n.id.to_string(),
        escape(&n.kind),
        time(&n.received_at),
        time(&n.processed_at),
        escape(n.outcome.as_str()),
        anomaly,
        opt(&n.transaction_id),
        opt(&n.out_refund_no),
    ]
}

const NOTIFICATION_HEAD: &[&str] = &[
    "Id",
    "Kind",
    "Received",
    "Processed",
    "Outcome",
    "Anomaly",
    "transaction_id",
    "out_refund_no",
];

fn story(story: &Story) -> String {
    let mut out = format!(
        "<section class=\"story\"><h2>Order {} <span class=\"muted\">merchant {}{}</span></h2>",
        escape(&story.key.out_trade_no),
        escape(&story.key.mch_id),
        match story.key.sub_mch_id.as_str() {
            "" => String::new(),
            sub_mch_id => format!(", sub-merchant {}", escape(sub_mch_id)),
        }
    );
    match &story.order {
        Some(order) => out.push_str(&format!(
            "<table class=\"order\"><tr><th>State</th><td class=\"state\" id=\"state-{}\">{}</td></tr>\
             <tr><th>Amount</th><td>{}</td></tr><tr><th>Refunded</th><td>{}</td></tr>\
             <tr><th>transaction_id</th><td>{}</td></tr><tr><th>appid</th><td>{}</td></tr>\
             <tr><th>Paid at</th><td>{}</td></tr>\
             <tr><th>combine_out_trade_no</th><td>{}</td></tr></table>",
            escape(&order.out_trade_no),
            escape(order.state.as_str()),
            html::fen(order.amount_total),
            html::fen(order.refunded_total),
            opt(&order.transaction_id),
            escape(&order.appid),
            opt_time(&order.paid_at),
            // The combine payment (合单支付) the order was paid in, if any.
            opt(&order.combine_out_trade_no)
        )),
        None => out.push_str("<p class=\"warn\">No such order in the orders table.</p>"),
    }
    out.push_str("<h3>Notifications</h3>");
    let rows: Vec<Vec<String>> = story.notifications.iter().map(notification_cells).collect();
    out.push_str(&table(
        "notifications",
        NOTIFICATION_HEAD,
        &rows,
        "No notification yet.",
    ));
    out.push_str("<h3>Refunds</h3>");
    let rows: Vec<Vec<String>> = story
        .refunds
        .iter()
        .map(|r| {
            vec![
                escape(&r.out_refund_no),
                opt(&r.refund_id),
                html::fen(r.refund_fee),
                escape(r.status.as_str()),
                opt_time(&r.succeeded_at),
            ]
        })
        .collect();
    out.push_str(&table(
        "refunds",
        &[
            "out_refund_no",
            "refund_id",
            "Amount",
            "Status",
            "Succeeded",
        ],
        &rows,
        "No refund.",
    ));
    out.push_str("<h3>Events published</h3>");
    let rows: Vec<Vec<String>> = story
        .events
        .iter()
        .map(|e| {
            vec![
                escape(&e.id.0.to_string()),
                escape(&e.event_type),
                time(&e.created_at),
                e.published_at
                    .as_ref()
                    .map(time)
                    .unwrap_or_else(|| "<span class=\"warn\">pending</span>".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        "events",
        &["Event id", "Type", "Written", "Published"],
        &rows,
        "No event.",
    ));
    out.push_str("</section>");
    out
}

async fn search(state: Data, req: HttpRequest, query: web::Query<SearchQuery>) -> HttpResponse {
    let Some(auth) = authenticate(&state, &req) else {
        return to_login();
    };
    let q = query.q.trim();
    let mut body = format!(
        "<form method=\"get\" action=\"/search\"><label>out_trade_no, transaction_id, \
         out_refund_no or refund_id <input name=\"q\" id=\"q\" value=\"{}\" maxlength=\"{}\" size=\"36\"></label> \
         <button type=\"submit\" id=\"search\">Search</button></form>",
        escape(q),
        data::MAX_QUERY_LEN
    );
    if q.is_empty() {
        return auth.page("Search", &body);
    }
    if q.len() > data::MAX_QUERY_LEN {
        body.push_str("<p class=\"warn\">Too long to be an id.</p>");
        return auth.page("Search", &body);
    }
    match data::search(&state.pool, q).await {
        Ok(stories) if stories.is_empty() => body.push_str(&format!(
            "<p id=\"not-found\">Nothing found for {}.</p>",
            escape(q)
        )),
        Ok(stories) => {
            for s in &stories {
                body.push_str(&story(s));
            }
        }
        Err(error) => body.push_str(&error_note("Database", &error)),
    }
    auth.page("Search", &body)
}

// ------------------------------------------------------------------ anomalies

/// The table `id` of `items` (`empty` when there is none), one row of `cells` each; for an
/// operator, each row ends with the form `action` writes for its item.
fn operator_table<T>(
    auth: &Authed,
    id: &str,
    head: &[&str],
    items: &[T],
    empty: &str,
    cells: impl Fn(&T) -> Vec<String>,
    action: impl Fn(&T) -> String,
) -> String {
    let operator = auth.is_operator();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let mut row = cells(item);
            if operator {
                row.push(action(item));
            }
            row
        })
        .collect();
    let mut head = head.to_vec();
    if operator {
        head.push("");
    }
    table(id, &head, &rows, empty)
}

fn audit_table(rows: &[AuditRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|a| {
            vec![
                time(&a.at),
                escape(&a.actor),
                escape(&a.action),
                escape(&a.target),
                opt(&a.note),
                escape(&a.result),
            ]
        })
        .collect();
    format!(
        "<h2>Audit</h2>{}",
        table(
            "audit",
            &["When", "Who", "What", "Target", "Note", "Result"],
            &rows,
            "Nothing done here yet.",
        )
    )
}

/// A page where operators act: `body`, then the audit trail of the actions named
/// `prefix…`, so what was done here is seen where it is done.
async fn audited_page(
    state: &State,
    auth: &Authed,
    title: &str,
    mut body: String,
    prefix: &str,
) -> HttpResponse {
    body.push_str(&match data::audit_trail(&state.pool, prefix, 50).await {
        Ok(rows) => audit_table(&rows),
        Err(error) => error_note("Audit trail", &error),
    });
    auth.page(title, &body)
}

fn recorded_anomaly_cells(recorded: &RecordedAnomaly) -> Vec<String> {
    let n = &recorded.notification;
    let order = n
        .out_trade_no
        .as_deref()
        .map(|o| format!("<a href=\"/search?q={}\">{}</a>", escape(o), escape(o)))
        .unwrap_or_else(|| "—".into());
    let resolution = match &recorded.resolution {
        Some(done) => format!(
            "{} → {}<br><span class=\"muted\">{}, {}</span><br>{}",
            escape(&done.action),
            escape(&done.result),
            escape(&done.actor),
            time(&done.at),
            escape(&done.note)
        ),
        None => "<span class=\"warn\">open</span>".into(),
    };
    vec![
        n.id.to_string(),
        time(&n.processed_at),
        escape(&n.kind),
        escape(&n.mch_id),
        order,
        opt(&n.out_refund_no),
        opt(&n.anomaly_reason),
        escape(&mask_openids(n.anomaly_detail.as_deref().unwrap_or(""))),
        resolution,
    ]
}

async fn anomalies(state: Data, req: HttpRequest) -> HttpResponse {
    let Some(auth) = authenticate(&state, &req) else {
        return to_login();
    };
    let csrf = escape(&auth.session.csrf);
    let mut body = String::from(
        "<h2>Open</h2><p class=\"muted\">Correct the order first, then <b>reapply</b>: the original \
         notification goes through the normal apply path once. <b>Dismiss</b> closes it unapplied. \
         Both need a note and are audited.</p>",
    );
    match anomaly::list(&state.pool).await {
        Ok(open) => body.push_str(&operator_table(
            &auth,
            "open-anomalies",
            &[
                "Id", "Received", "Merchant", "Order", "Refund", "Reason", "Detail",
            ],
            &open,
            "No open anomaly.",
            |a| {
                vec![
                    a.id.to_string(),
                    time(&a.received_at),
                    escape(&a.mch_id),
                    opt(&a.out_trade_no),
                    opt(&a.out_refund_no),
                    opt(&a.anomaly_reason),
                    escape(&mask_openids(a.anomaly_detail.as_deref().unwrap_or(""))),
                ]
            },
            |a| {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/anomalies/resolve\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <input type=\"hidden\" name=\"id\" value=\"{}\">\
                     <input type=\"text\" name=\"note\" required placeholder=\"note\">\
                     <button type=\"submit\" name=\"action\" value=\"reapply\">Reapply</button>\
                     <button type=\"submit\" name=\"action\" value=\"dismiss\">Dismiss</button></form>",
                    a.id
                )
            },
        )),
        Err(error) => body.push_str(&error_note("Database", &error)),
    }
    body.push_str(
        "<h2>Recorded</h2><p class=\"muted\">Every anomaly the worker recorded, newest first, \
         with its resolution (here or by <code>wxpay-worker anomaly resolve</code>).</p>",
    );
    match data::anomalies(&state.pool, 200).await {
        Ok(rows) => {
            let rows: Vec<Vec<String>> = rows.iter().map(recorded_anomaly_cells).collect();
            body.push_str(&table(
                "anomalies",
                &[
                    "Id",
                    "Processed",
                    "Kind",
                    "Merchant",
                    "Order",
                    "Refund",
                    "Reason",
                    "Detail",
                    "Resolution",
                ],
                &rows,
                "No anomaly.",
            ));
        }
        Err(error) => body.push_str(&error_note("Database", &error)),
    }
    audited_page(&state, &auth, "Anomalies", body, "anomaly.").await
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ResolveForm {
    /// The anomaly, by its id.
    #[serde(flatten)]
    target: TargetForm,
    action: String,
    note: String,
}

/// `reapply` / `dismiss` one anomaly through the worker's own resolution (the same function
/// as `wxpay-worker anomaly resolve`), with the operator as the actor.
async fn resolve_anomaly(
    state: Data,
    req: HttpRequest,
    form: web::Form<ResolveForm>,
) -> HttpResponse {
    let form = form.into_inner();
    let audit_action = match form.action.as_str() {
        "reapply" => "anomaly.reapply",
        "dismiss" => "anomaly.dismiss",
        _ => "anomaly.unknown",
    };
    let actor = authenticate(&state, &req)
        .map(|auth| auth.session.user.clone())
        .unwrap_or_default();
    let (pool, settings) = (state.pool.clone(), state.settings.clone());
    let id = form.target.id.clone();
    let (action, note) = (form.action.clone(), form.note.clone());
    act(
        &state,
        &req,
        &form.target.csrf,
        audit_action,
        &form.target.id,
        Some(&form.note),
        "/anomalies",
        || async move {
            let id: i64 = id
                .trim()
                .parse()
                .map_err(|_| format!("{id:?} is not an anomaly id"))?;
            let action: Action = action.parse()?;
            let merchants = settings.merchants().map_err(|error| error.to_string())?;
            let merchants = MerchantsHandle::fixed(merchants);
            // A merchant that downloads its platform certificates verifies with them.
            if let Err(error) = platform_keys::learn_retained(&settings.rabbitmq, &merchants).await {
                tracing::warn!(%error, "platform keys stream not read: only the file's keys verify");
            }
            let resolution = anomaly::resolve(&pool, &merchants.current(), id, action, &actor, &note)
                .await
                .map_err(|error| error.to_string())?;
            // As the CLI prints it: the verdict, and a new anomaly's id when the order still
            // disagrees.
            Ok(resolution.to_string())
        },
    )
    .await
}

// ------------------------------------------------------------------ parked messages

async fn parked(state: Data, req: HttpRequest) -> HttpResponse {
    let Some(auth) = authenticate(&state, &req) else {
        return to_login();
    };
    let csrf = escape(&auth.session.csrf);
    let mut body = String::new();
    match retry::dlq_list(&state.settings).await {
        Ok(list) => {
            body.push_str(&operator_table(
                &auth,
                "parked",
                &["Id", "Kind", "Merchant", "Attempt", "Reason", "Received"],
                &list,
                "No parked message.",
                |p| {
                    vec![
                        escape(&p.id),
                        escape(&p.kind),
                        escape(&p.mch_id),
                        p.attempt.to_string(),
                        escape(&mask_openids(&p.reason)),
                        escape(&p.received_at),
                    ]
                },
                |p| {
                    format!(
                        "<form class=\"inline\" method=\"post\" action=\"/parked/replay\">\
                         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                         <input type=\"hidden\" name=\"id\" value=\"{}\">\
                         <button type=\"submit\" class=\"replay\">Replay</button></form>",
                        escape(&p.id)
                    )
                },
            ));
            if auth.is_operator() && !list.is_empty() {
                body.push_str(&format!(
                    "<form method=\"post\" action=\"/parked/replay-all\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\" id=\"replay-all\">Replay all {}</button></form>",
                    list.len()
                ));
            }
        }
        Err(error) => body.push_str(&error_note("RabbitMQ", &error)),
    }
    audited_page(&state, &auth, "Parked messages", body, "parked.").await
}

/// A form that acts on one thing (a parked message, an anomaly), named by `id`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct TargetForm {
    csrf: String,
    id: String,
}

async fn replay_one(state: Data, req: HttpRequest, form: web::Form<TargetForm>) -> HttpResponse {
    let form = form.into_inner();
    let settings = state.settings.clone();
    let id = form.id.clone();
    act(
        &state,
        &req,
        &form.csrf,
        "parked.replay",
        &form.id,
        None,
        "/parked",
        || async move {
            match retry::dlq_replay(&settings, &ReplaySelection::Id(id)).await {
                Ok(0) => Ok("not found (already replayed?)".to_owned()),
                Ok(moved) => Ok(format!("replayed {moved}")),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await
}

async fn replay_all(state: Data, req: HttpRequest, form: web::Form<CsrfForm>) -> HttpResponse {
    let settings = state.settings.clone();
    act(
        &state,
        &req,
        &form.csrf,
        "parked.replay_all",
        "*",
        None,
        "/parked",
        || async move {
            retry::dlq_replay(&settings, &ReplaySelection::All)
                .await
                .map(|moved| format!("replayed {moved}"))
                .map_err(|error| error.to_string())
        },
    )
    .await
}

/// An operator's action: session (401), CSRF token (403), role (403), then `run`, whose
/// result (or error) goes into the audit table; answers 303 back to `back`.
#[allow(clippy::too_many_arguments)]
async fn act<F, Fut>(
    state: &State,
    req: &HttpRequest,
    csrf: &str,
    action: &'static str,
    target: &str,
    note: Option<&str>,
    back: &str,
    run: F,
) -> HttpResponse
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let Some(auth) = authenticate(state, req) else {
        return refusal(StatusCode::UNAUTHORIZED, "Not logged in");
    };
    if !tokens_match(&auth.session.csrf, csrf) {
        metrics::counter!(metric::CONSOLE_ACTIONS_TOTAL, "action" => action, "result" => "refused")
            .increment(1);
        return refusal(StatusCode::FORBIDDEN, "Missing or wrong CSRF token");
    }
    if !auth.is_operator() {
        metrics::counter!(metric::CONSOLE_ACTIONS_TOTAL, "action" => action, "result" => "refused")
            .increment(1);
        tracing::warn!(
            user = auth.session.user.as_str(),
            action,
            "console action refused: not an operator"
        );
        return refusal(StatusCode::FORBIDDEN, "Only operators may do this");
    }
    let (result, failed) = match run().await {
        Ok(done) => (done, false),
        Err(error) => (format!("error: {error}"), true),
    };
    let user = auth.session.user.as_str();
    tracing::info!(
        user,
        action,
        target,
        result = result.as_str(),
        "console action"
    );
    metrics::counter!(
        metric::CONSOLE_ACTIONS_TOTAL,
        "action" => action,
        "result" => if failed { "error" } else { "ok" }
    )
    .increment(1);
    if let Err(error) = data::audit(&state.pool, user, action, target, note, &result).await {
        // The action happened; its trail did not: say so loudly, on the page too.
        tracing::error!(user, action, target, %error, "console audit line not written");
        return refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Done ({result}), but the audit line was not written"),
        );
    }
    if failed {
        return refusal(StatusCode::BAD_GATEWAY, &result);
    }
    let cookies: Vec<String> = auth.new_cookie.into_iter().collect();
    redirect(back, &cookies)
}
