//! Console sessions and the sign-in limiter, sans-IO: every call takes the
//! time, so tests drive them with a fake clock.
//!
//! A session is a random 256-bit token in a cookie, with its own random
//! CSRF token that every change must echo in a header. It ends after
//! `session_timeout_s` without a request, after [`MAX_SESSION`] whatever
//! happens, on sign-out, and when lbd restarts (sessions live in memory
//! only). The limiter counts failed sign-ins per client address and per
//! user name in a sliding window and refuses further attempts, right or
//! wrong, until the oldest failure leaves the window.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::users::Role;

/// Longest a session lasts, active or not.
pub const MAX_SESSION: Duration = Duration::from_hours(12);

/// Most sessions held at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 1024;

/// A signed-in user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Their console user name.
    pub user: String,
    /// Their role when they signed in.
    pub role: Role,
    /// The token every change must carry in `X-CSRF-Token`.
    pub csrf: String,
    started: Instant,
    last_seen: Instant,
}

/// The sessions of one console.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    by_token: HashMap<String, Session>,
}

/// 32 random bytes as hex.
///
/// # Panics
/// When the kernel has no randomness to give (`getrandom` fails), which a
/// running Linux system never does once booted.
#[must_use]
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the kernel's random source");
    bytes.iter().fold(String::with_capacity(64), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

impl Sessions {
    /// Sessions that end after `idle` without a request.
    #[must_use]
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            by_token: HashMap::new(),
        }
    }

    /// Starts a session for `user`; returns its cookie token.
    pub fn start(&mut self, now: Instant, user: &str, role: Role) -> String {
        self.expire(now);
        if self.by_token.len() >= MAX_SESSIONS {
            let oldest = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(t, _)| t.clone());
            if let Some(t) = oldest {
                self.by_token.remove(&t);
            }
        }
        let token = random_token();
        self.by_token.insert(
            token.clone(),
            Session {
                user: user.to_owned(),
                role,
                csrf: random_token(),
                started: now,
                last_seen: now,
            },
        );
        token
    }

    /// The live session of `token`, its idle time restarted; `None` when
    /// there is none or it has expired (it is then forgotten).
    pub fn touch(&mut self, now: Instant, token: &str) -> Option<Session> {
        let live = self.by_token.get(token).is_some_and(|s| self.live(s, now));
        if !live {
            self.by_token.remove(token);
            return None;
        }
        let session = self.by_token.get_mut(token)?;
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends `token`'s session.
    pub fn end(&mut self, token: &str) {
        self.by_token.remove(token);
    }

    /// Ends every session of `user` (deleted, or their role changed).
    pub fn end_user(&mut self, user: &str) {
        self.by_token.retain(|_, s| s.user != user);
    }

    /// Sessions held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) < self.idle
            && now.saturating_duration_since(s.started) < MAX_SESSION
    }

    fn expire(&mut self, now: Instant) {
        let idle = self.idle;
        self.by_token.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < idle
                && now.saturating_duration_since(s.started) < MAX_SESSION
        });
    }
}

/// A session as handed to the next lbd on SIGUSR2: its times as ages, since
/// an `Instant` does not cross an exec.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    token: String,
    user: String,
    role: Role,
    csrf: String,
    age_ms: u64,
    idle_ms: u64,
}

impl Sessions {
    /// The live sessions, for the next lbd.
    #[must_use]
    pub fn export(&self, now: Instant) -> Vec<Saved> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.by_token
            .iter()
            .filter(|(_, s)| self.live(s, now))
            .map(|(token, s)| Saved {
                token: token.clone(),
                user: s.user.clone(),
                role: s.role,
                csrf: s.csrf.clone(),
                age_ms: ms(now.saturating_duration_since(s.started)),
                idle_ms: ms(now.saturating_duration_since(s.last_seen)),
            })
            .collect()
    }

    /// Takes over the sessions the previous lbd exported (those still live).
    pub fn import(&mut self, now: Instant, saved: Vec<Saved>) {
        for s in saved.into_iter().take(MAX_SESSIONS) {
            let back = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
            let session = Session {
                user: s.user,
                role: s.role,
                csrf: s.csrf,
                started: back(s.age_ms),
                last_seen: back(s.idle_ms),
            };
            if self.live(&session, now) && s.token.len() == 64 {
                self.by_token.insert(s.token, session);
            }
        }
    }
}

/// Failed sign-ins allowed per client address, and per user name, in
/// [`WINDOW`].
pub const MAX_FAILURES: usize = 5;

/// The sliding window failures are counted in.
pub const WINDOW: Duration = Duration::from_mins(5);

/// Most addresses and names tracked; beyond it the stalest go.
const MAX_TRACKED: usize = 4096;

/// Counts failed sign-ins per client address and per user name.
#[derive(Debug, Default)]
pub struct SignInLimiter {
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    by_user: HashMap<String, VecDeque<Instant>>,
}

impl SignInLimiter {
    /// `None` when `address` may try to sign in as `user` now, else how
    /// long until it may.
    pub fn check(&mut self, now: Instant, address: IpAddr, user: &str) -> Option<Duration> {
        let a = Self::wait(&mut self.by_address, &address, now);
        let u = Self::wait(&mut self.by_user, user, now);
        a.max(u)
    }

    /// Records a failed attempt.
    pub fn failed(&mut self, now: Instant, address: IpAddr, user: &str) {
        Self::push(&mut self.by_address, address, now);
        Self::push(&mut self.by_user, user.to_owned(), now);
    }

    /// Records a success: the user's failures are forgotten (the address's
    /// stay, so one good password does not open a guessing window for
    /// other names).
    pub fn succeeded(&mut self, user: &str) {
        self.by_user.remove(user);
    }

    fn wait<K, Q>(
        map: &mut HashMap<K, VecDeque<Instant>>,
        key: &Q,
        now: Instant,
    ) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let failures = map.get_mut(key)?;
        while failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            failures.pop_front();
        }
        if failures.is_empty() {
            map.remove(key);
            return None;
        }
        (failures.len() >= MAX_FAILURES).then(|| {
            let oldest = failures.front().copied().unwrap_or(now);
            WINDOW.saturating_sub(now.saturating_duration_since(oldest))
        })
    }

    fn push<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, VecDeque<Instant>>,
        key: K,
        now: Instant,
    ) {
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| {
                f.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < WINDOW)
            });
        }
        if map.len() >= MAX_TRACKED {
            return;
        }
        let failures = map.entry(key).or_default();
        failures.push_back(now);
        while failures.len() > MAX_FAILURES {
            failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_past_its_timeout_and_at_sign_out() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let token = s.start(t0, "alice", Role::Admin);
        assert_eq!(token.len(), 64);
        let first = s.touch(t0 + Duration::from_secs(59), &token);
        assert_eq!(first.as_ref().map(|s| s.user.as_str()), Some("alice"));
        assert!(
            s.touch(t0 + Duration::from_secs(118), &token).is_some(),
            "each request restarts the idle time"
        );
        assert!(s.touch(t0 + Duration::from_secs(178), &token).is_none());
        assert!(s.is_empty(), "an expired session is forgotten");

        let token = s.start(t0, "bob", Role::Viewer);
        assert!(s.touch(t0, "not-a-token").is_none());
        let csrf = s.touch(t0, &token).map(|s| s.csrf);
        assert!(csrf.is_some_and(|c| c.len() == 64 && c != token));
        s.end(&token);
        assert!(s.touch(t0, &token).is_none());

        let token = s.start(t0, "carol", Role::Viewer);
        let mut t = t0;
        while t < t0 + MAX_SESSION - Duration::from_secs(30) {
            t += Duration::from_secs(30);
            assert!(s.touch(t, &token).is_some());
        }
        assert!(
            s.touch(t + Duration::from_secs(30), &token).is_none(),
            "no session outlives MAX_SESSION"
        );
        let token = s.start(t0, "dave", Role::Viewer);
        s.end_user("dave");
        assert!(s.touch(t0, &token).is_none());
    }

    #[test]
    fn sessions_cross_a_re_execution_with_their_times() {
        let t0 = Instant::now();
        let mut old = Sessions::new(Duration::from_secs(60));
        let alice = old.start(t0, "alice", Role::Admin);
        let bob = old.start(t0, "bob", Role::Viewer);
        let t1 = t0 + Duration::from_secs(50);
        assert!(old.touch(t1, &alice).is_some());
        let saved = old.export(t1);
        let text = serde_json::to_string(&saved).unwrap_or_default();
        let read: Vec<Saved> = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(read, saved);

        let mut new = Sessions::new(Duration::from_secs(60));
        new.import(t1, read);
        let kept = new.touch(t1, &alice);
        assert_eq!(
            kept.as_ref().map(|s| s.csrf.clone()),
            old.touch(t1, &alice).map(|s| s.csrf)
        );
        assert_eq!(kept.map(|s| s.role), Some(Role::Admin));
        assert!(
            new.touch(t1 + Duration::from_secs(11), &bob).is_none(),
            "bob's idle time went on across the exec"
        );
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address_and_per_user() {
        let t0 = Instant::now();
        let mut l = SignInLimiter::default();
        let a: IpAddr = [198, 18, 0, 1].into();
        let b: IpAddr = [198, 18, 0, 2].into();
        for i in 0..MAX_FAILURES {
            assert_eq!(l.check(t0, a, "alice"), None, "attempt {i}");
            l.failed(t0, a, &format!("user{i}"));
        }
        let wait = l.check(t0 + Duration::from_secs(60), a, "someone");
        assert_eq!(
            wait,
            Some(WINDOW - Duration::from_secs(60)),
            "the address is held"
        );
        assert_eq!(l.check(t0, b, "someone"), None, "another address is not");
        assert_eq!(
            l.check(t0 + WINDOW, a, "someone"),
            None,
            "until the window passes"
        );

        for _ in 0..MAX_FAILURES {
            l.failed(t0, [198, 18, 1, 1].into(), "alice");
            l.failed(t0, [198, 18, 1, 2].into(), "alice");
        }
        assert!(
            l.check(t0, b, "alice").is_some(),
            "the name is held from anywhere"
        );
        l.succeeded("alice");
        assert_eq!(l.check(t0, b, "alice"), None);
    }
}
