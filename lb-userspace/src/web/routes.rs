//! The console's routes.
//!
//! Before sign-in only `/login` and `/assets/style.css` are served; any
//! other page sends the browser to `/login`, any API call gets `401`.
//! Every response carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, nothing inline) and is not cached. A
//! change must be a `POST` with the session's CSRF token in
//! `X-CSRF-Token`, by an `admin`.
//!
//! | route | |
//! | --- | --- |
//! | `GET /login`, `POST /login` | the sign-in page, the sign-in |
//! | `POST /logout` | ends the session (CSRF token in the form) |
//! | `GET /` | the console page |
//! | `GET /assets/...` | style sheet (public), script |
//! | `GET /api/overview` | status, HA, problems, last changes |
//! | `GET /api/history?service=S&server=R` | a server's last hour |
//! | `GET /api/preview?service=S&server=R&action=A[&weight=N]` | what a change would do |
//! | `POST /api/change` | `{"service","server","action","weight"}` |

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{
    sessions::{Session, Sessions, SignInLimiter, MAX_SESSION},
    users::{Role, Users},
    Action, Call,
};
use crate::{config::AdminState, control::protocol::Request as Control};

const LOGIN_HTML: &str = include_str!("assets/login.html");
const CONSOLE_HTML: &str = include_str!("assets/console.html");
const STYLE_CSS: &str = include_str!("assets/style.css");
const CONSOLE_JS: &str = include_str!("assets/console.js");

/// The session cookie's name.
pub const COOKIE: &str = "lbd_session";

/// The header a change carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Largest request body read (sign-in form, change).
const MAX_BODY: usize = 8 * 1024;

/// Longest the daemon's loop may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

type Reply = Response<Full<Bytes>>;

/// The console's state: sessions, the sign-in limiter, and the way to the
/// daemon's loop.
pub struct Console {
    node: String,
    users_file: PathBuf,
    sessions: Mutex<Sessions>,
    limiter: Mutex<SignInLimiter>,
    calls: mpsc::Sender<Call>,
}

impl Console {
    /// A console for node `node`, its users in `users_file`, sessions
    /// ending after `idle`.
    #[must_use]
    pub fn new(
        node: &str,
        users_file: PathBuf,
        idle: Duration,
        calls: mpsc::Sender<Call>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: node.to_owned(),
            users_file,
            sessions: Mutex::new(Sessions::new(idle)),
            limiter: Mutex::new(SignInLimiter::default()),
            calls,
        })
    }

    /// The live sessions, for the lbd a SIGUSR2 executes.
    #[must_use]
    pub fn export_sessions(&self) -> Vec<super::sessions::Saved> {
        self.sessions
            .lock()
            .map(|s| s.export(Instant::now()))
            .unwrap_or_default()
    }

    /// Takes over the sessions of the lbd this one re-executed.
    pub fn import_sessions(&self, saved: Vec<super::sessions::Saved>) {
        if let Ok(mut s) = self.sessions.lock() {
            s.import(Instant::now(), saved);
        }
    }

    /// Ends every session of `user` (deleted or changed by `lbctl user`).
    pub fn end_user(&self, user: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.end_user(user);
        }
    }

    /// Answers one request from `client`.
    pub async fn respond(&self, request: Request<Incoming>, client: IpAddr) -> Reply {
        let mut reply = self.route(request, client).await;
        secure(&mut reply);
        reply
    }

    async fn route(&self, request: Request<Incoming>, client: IpAddr) -> Reply {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        match (method.clone(), path.as_str()) {
            (Method::GET, "/login") => {
                if self.session(&request).is_some() {
                    return see_other("/");
                }
                return self.login_page(StatusCode::OK, "");
            }
            (Method::POST, "/login") => return self.sign_in(request, client).await,
            (Method::GET, "/assets/style.css") => {
                return asset(STYLE_CSS, "text/css; charset=utf-8");
            }
            _ => {}
        }
        let Some((token, session)) = self.session(&request) else {
            return if method == Method::GET && !path.starts_with("/api/") {
                see_other("/login")
            } else {
                error(StatusCode::UNAUTHORIZED, "sign in first")
            };
        };
        match (method, path.as_str()) {
            (Method::GET, "/" | "/index.html") => html(StatusCode::OK, CONSOLE_HTML.to_owned()),
            (Method::GET, "/assets/console.js") => {
                asset(CONSOLE_JS, "text/javascript; charset=utf-8")
            }
            (Method::POST, "/logout") => self.sign_out(request, &token, &session).await,
            (Method::GET, "/api/overview") => self.overview(&session).await,
            (Method::GET, "/api/history") => self.history(&query).await,
            (Method::GET, "/api/preview") => self.preview(&query).await,
            (Method::POST, "/api/change") => self.change(request, &session).await,
            (
                _,
                "/" | "/index.html" | "/assets/console.js" | "/api/overview" | "/api/history"
                | "/api/preview",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            (_, "/api/change" | "/logout") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            _ => error(StatusCode::NOT_FOUND, "no such page"),
        }
    }

    /// The request's live session, if any (its idle time restarted).
    fn session(&self, request: &Request<Incoming>) -> Option<(String, Session)> {
        let token = cookie(request, COOKIE)?;
        let session = self.sessions.lock().ok()?.touch(Instant::now(), &token)?;
        Some((token, session))
    }

    fn login_page(&self, status: StatusCode, message: &str) -> Reply {
        let page = LOGIN_HTML
            .replacen("{{node}}", &escape(&self.node), 1)
            .replacen("{{message}}", &escape(message), 1);
        html(status, page)
    }

    async fn sign_in(&self, request: Request<Incoming>, client: IpAddr) -> Reply {
        let Some(body) = body(request).await else {
            return self.login_page(StatusCode::BAD_REQUEST, "The sign-in form was too large.");
        };
        let (user, password) = credentials(&body);
        if user.is_empty() || password.is_empty() {
            return self.login_page(StatusCode::BAD_REQUEST, "Give a user name and a password.");
        }
        let held = self
            .limiter
            .lock()
            .ok()
            .and_then(|mut l| l.check(Instant::now(), client, &user));
        if let Some(wait) = held {
            log::warn!(
                "web console: sign-in as {user:?} from {client} refused: too many failed attempts"
            );
            return self.login_page(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many failed sign-in attempts; try again in {} s.",
                    wait.as_secs().max(1)
                ),
            );
        }
        let file = self.users_file.clone();
        let name = user.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let users = Users::load(&file)?;
            Ok::<_, super::users::UsersError>(users.verify(&name, &password).map(|u| u.role))
        })
        .await;
        let role = match checked {
            Ok(Ok(role)) => role,
            Ok(Err(e)) => {
                log::error!("web console: {e}");
                return self.login_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The users file cannot be read; see lbd's log.",
                );
            }
            Err(_) => {
                return self.login_page(StatusCode::INTERNAL_SERVER_ERROR, "Try again.");
            }
        };
        let Some(role) = role else {
            if let Ok(mut l) = self.limiter.lock() {
                l.failed(Instant::now(), client, &user);
            }
            log::warn!("web console: failed sign-in as {user:?} from {client}");
            return self.login_page(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
        };
        if let Ok(mut l) = self.limiter.lock() {
            l.succeeded(&user);
        }
        let Ok(token) = self
            .sessions
            .lock()
            .map(|mut s| s.start(Instant::now(), &user, role))
        else {
            return self.login_page(StatusCode::INTERNAL_SERVER_ERROR, "Try again.");
        };
        log::info!("web console: {user} ({role}) signed in from {client}");
        let mut reply = see_other("/");
        let cookie = format!(
            "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            MAX_SESSION.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().insert(header::SET_COOKIE, v);
        }
        reply
    }

    async fn sign_out(&self, request: Request<Incoming>, token: &str, session: &Session) -> Reply {
        let body = body(request).await.unwrap_or_default();
        let csrf = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
        if !csrf.is_some_and(|c| same(&c, &session.csrf)) {
            return error(
                StatusCode::FORBIDDEN,
                "the sign-out form's CSRF token is not this session's",
            );
        }
        if let Ok(mut s) = self.sessions.lock() {
            s.end(token);
        }
        let mut reply = see_other("/login");
        reply.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "lbd_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
        );
        reply
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Call) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.calls.send(make(tx)).await.ok()?;
        tokio::time::timeout(ANSWER_TIMEOUT, rx).await.ok()?.ok()
    }

    async fn overview(&self, session: &Session) -> Reply {
        let Some(o) = self.ask(Call::Overview).await else {
            return unavailable();
        };
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        json_reply(
            StatusCode::OK,
            &json!({
                "node": self.node,
                "user": session.user,
                "role": session.role,
                "csrf": session.csrf,
                "time": time,
                "can_change": o.can_change,
                "refusal": o.refusal,
                "problems": o.problems,
                "status": o.status,
                "audit": o.audit,
            }),
        )
    }

    async fn history(&self, query: &str) -> Reply {
        let q = Query::parse(query);
        let (Some(service), Some(server)) = (q.get("service"), q.get("server")) else {
            return error(StatusCode::BAD_REQUEST, "give service= and server=");
        };
        let answer = self
            .ask(|reply| Call::History {
                service: service.clone(),
                server: server.clone(),
                reply,
            })
            .await;
        match answer {
            Some(Some(series)) => json_reply(StatusCode::OK, &series),
            Some(None) => error(
                StatusCode::NOT_FOUND,
                &format!("no real server {server:?} in service {service:?}"),
            ),
            None => unavailable(),
        }
    }

    async fn preview(&self, query: &str) -> Reply {
        let q = Query::parse(query);
        let (Some(service), Some(server), Some(action)) =
            (q.get("service"), q.get("server"), q.get("action"))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "give service=, server= and action=",
            );
        };
        let action: Action = match action.parse() {
            Ok(a) => a,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let weight = match q.get("weight").map(|w| w.parse::<u16>()) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "weight must be 0 to 65535"),
        };
        let answer = self
            .ask(|reply| Call::Preview {
                service: service.clone(),
                server: server.clone(),
                action,
                weight,
                reply,
            })
            .await;
        match answer {
            Some(Ok(preview)) => json_reply(StatusCode::OK, &preview),
            Some(Err(e)) => error(StatusCode::BAD_REQUEST, &e),
            None => unavailable(),
        }
    }

    async fn change(&self, request: Request<Incoming>, session: &Session) -> Reply {
        let token = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !token.is_some_and(|t| same(&t, &session.csrf)) {
            log::warn!(
                "web console: a change by {} without this session's CSRF token was refused",
                session.user
            );
            return error(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token; reload the page",
            );
        }
        if session.role != Role::Admin {
            log::warn!(
                "web console: viewer {} tried a change; refused",
                session.user
            );
            return error(
                StatusCode::FORBIDDEN,
                &format!("{} is a viewer: only admins change anything", session.user),
            );
        }
        let Some(body) = body(request).await else {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "the request is too large");
        };
        let change: Change = match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad change: {e}")),
        };
        let control = match change.into_request() {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let message = match &control {
            Control::SetState {
                service,
                server,
                state,
            } => format!("{server} in {service} is now {state}"),
            Control::Weight {
                service,
                server,
                weight,
            } => format!("the weight of {server} in {service} is now {weight}"),
            _ => "done".to_owned(),
        };
        let answer = self
            .ask(|reply| Call::Change {
                user: session.user.clone(),
                request: control,
                reply,
            })
            .await;
        match answer {
            Some(Ok(_)) => json_reply(StatusCode::OK, &json!({"message": message})),
            Some(Err(e)) => error(StatusCode::CONFLICT, &e),
            None => unavailable(),
        }
    }
}

/// The body of `POST /api/change`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    service: String,
    server: String,
    action: Action,
    #[serde(default)]
    weight: Option<u16>,
}

impl Change {
    fn into_request(self) -> Result<Control, String> {
        let state = |state| Control::SetState {
            service: self.service.clone(),
            server: self.server.clone(),
            state,
        };
        match (self.action, self.weight) {
            (Action::Drain, None) => Ok(state(AdminState::Drain)),
            (Action::Halt, None) => Ok(state(AdminState::Halt)),
            (Action::Online, None) => Ok(state(AdminState::Online)),
            (Action::Weight, Some(weight)) => Ok(Control::Weight {
                service: self.service,
                server: self.server,
                weight,
            }),
            (Action::Weight, None) => Err("a weight change needs \"weight\"".into()),
            (_, Some(_)) => Err("\"weight\" goes with action weight only".into()),
        }
    }
}

/// The user name and password of a sign-in: the page's form
/// (`user`, or `username`, and `password`, URL-encoded), or the same as a
/// JSON object (for scripts).
fn credentials(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct Json {
        #[serde(alias = "username")]
        user: String,
        password: String,
    }
    if body.first() == Some(&b'{') {
        return serde_json::from_slice::<Json>(body)
            .map(|j| (j.user, j.password))
            .unwrap_or_default();
    }
    let mut user = String::new();
    let mut password = String::new();
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "user" | "username" => user = v.into_owned(),
            "password" => password = v.into_owned(),
            _ => {}
        }
    }
    (user, password)
}

/// A parsed query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// The body, at most [`MAX_BODY`] bytes; `None` when larger or broken.
async fn body(request: Request<Incoming>) -> Option<Bytes> {
    Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()
        .map(http_body_util::Collected::to_bytes)
}

/// A cookie's value.
fn cookie(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Compares two tokens in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// HTML-escapes text for the sign-in page.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn with_type(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn html(status: StatusCode, page: String) -> Reply {
    with_type(status, page, "text/html; charset=utf-8")
}

fn asset(text: &'static str, content_type: &'static str) -> Reply {
    with_type(StatusCode::OK, text, content_type)
}

fn json_reply<T: serde::Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, bytes, "application/json"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::to_vec(&json!({"error": message})).unwrap_or_default();
    with_type(status, body, "application/json")
}

fn unavailable() -> Reply {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "lbd did not answer in time; try again",
    )
}

fn see_other(location: &'static str) -> Reply {
    let mut r = with_type(StatusCode::SEE_OTHER, "", "text/plain; charset=utf-8");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    r
}

/// The headers every answer carries.
fn secure(reply: &mut Reply) {
    let h = reply.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_maps_to_the_request_lbctl_sends() {
        let parse = |text: &str| {
            serde_json::from_str::<Change>(text)
                .map_err(|e| e.to_string())
                .and_then(Change::into_request)
        };
        assert_eq!(
            parse(r#"{"service":"web","server":"rs1","action":"drain"}"#),
            Ok(Control::SetState {
                service: "web".into(),
                server: "rs1".into(),
                state: AdminState::Drain
            })
        );
        assert_eq!(
            parse(r#"{"service":"web","server":"rs1","action":"weight","weight":5}"#),
            Ok(Control::Weight {
                service: "web".into(),
                server: "rs1".into(),
                weight: 5
            })
        );
        for bad in [
            r#"{"service":"web","server":"rs1","action":"weight"}"#,
            r#"{"service":"web","server":"rs1","action":"halt","weight":5}"#,
            r#"{"service":"web","server":"rs1","action":"reboot"}"#,
            r#"{"service":"web","server":"rs1","action":"drain","extra":1}"#,
            r#"{"service":"web","server":"rs1","action":"weight","weight":70000}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        for body in [
            &b"user=alice&password=p%40ss+word"[..],
            b"username=alice&password=p%40ss+word",
            br#"{"user":"alice","password":"p@ss word"}"#,
            br#"{"username":"alice","password":"p@ss word"}"#,
        ] {
            assert_eq!(credentials(body), ("alice".into(), "p@ss word".into()));
        }
        assert_eq!(credentials(b"{not json"), (String::new(), String::new()));
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
