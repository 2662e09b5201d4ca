//! The web console at `node.web.listen`: HTTPS only, signed in, audited.
//!
//! - [`users`]: the users file and its argon2id hashes (`lbctl user`).
//! - [`sessions`]: sessions, CSRF tokens and the sign-in limiter (sans-IO).
//! - [`tls`]: the certificate, configured or self-signed.
//! - [`history`]: the last hour of every real server, for the charts.
//! - [`overview`]: the problems list and the confirmations' sentences.
//! - [`server`]: the listener (bounded, plain HTTP refused); [`routes`]: the pages.
//!
//! The console reads and changes nothing itself: each page asks the
//! daemon's loop through a [`Call`], and a change becomes the same
//! [`Request`] `lbctl` sends, answered by the same code, refused where
//! `lbctl` is refused, and audited with the console user's name. The pages
//! (HTML, CSS, JavaScript) are embedded in the binary.

pub mod history;
pub mod overview;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod users;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::control::protocol::{Answer, Request, StatusReport};

pub use overview::{Action, Problem};

/// The console listener's caps: a few people at once, each browser opening
/// up to six connections.
pub const CAPS: crate::limits::Caps = crate::limits::Caps {
    per_address: 16,
    total: 128,
};

/// What the overview shows, from the daemon.
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// `lbctl status`.
    pub status: StatusReport,
    /// Whether this node accepts changes.
    pub can_change: bool,
    /// Why not, as `lbctl` would say it.
    pub refusal: Option<String>,
    /// Problems first.
    pub problems: Vec<Problem>,
    /// The last changes, newest first.
    pub audit: Vec<Value>,
}

/// A maintenance confirmation's preview.
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// The action.
    pub action: Action,
    /// Live persistence entries on the server.
    pub active_clients: u64,
    /// NAT and SNAT: its live connections.
    pub active_connections: Option<u64>,
    /// Share of new clients whose server would change, as `lbctl plan`.
    pub moved_share: f64,
    /// The sentence to confirm.
    pub summary: String,
    /// Why this node would refuse it, as `lbctl` would say it.
    pub refused: Option<String>,
}

/// A question from the console to the daemon's loop.
#[derive(Debug)]
pub enum Call {
    /// The overview.
    Overview(oneshot::Sender<Overview>),
    /// One server's last hour.
    History {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
        /// The answer (`None`: no such server).
        reply: oneshot::Sender<Option<history::Series>>,
    },
    /// What a change would do.
    Preview {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
        /// The action.
        action: Action,
        /// The new weight (weight only).
        weight: Option<u16>,
        /// The answer, or why it cannot be previewed.
        reply: oneshot::Sender<Result<Preview, String>>,
    },
    /// A change, by a console admin.
    Change {
        /// The console user.
        user: String,
        /// The same request `lbctl` sends.
        request: Request,
        /// The answer, or the refusal.
        reply: oneshot::Sender<Result<Answer, String>>,
    },
}
