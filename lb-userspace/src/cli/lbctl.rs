//! `lbctl`'s command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Control a running lbd.
///
/// Talks to lbd over its control socket (root only). Exits 0 on success,
/// 1 on an error (one line on stderr), 2 on a usage error. Every change is
/// written to lbd's audit log with the calling Unix user.
#[derive(Parser, Debug)]
#[command(name = "lbctl", version)]
pub struct Lbctl {
    /// lbd's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/run/lbd/lbd.sock"
    )]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// What lbctl asks lbd.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Node, HA state, services, real servers and counters.
    Status,
    /// Send no new clients to a server; its clients stay until their persistence expires.
    Drain {
        /// The service's name.
        service: String,
        /// The real server's name.
        server: String,
    },
    /// Send nothing more to a server; its clients move at once.
    Halt {
        /// The service's name.
        service: String,
        /// The real server's name.
        server: String,
    },
    /// Return a server to service.
    Online {
        /// The service's name.
        service: String,
        /// The real server's name.
        server: String,
    },
    /// Change a server's weight (0..=65535).
    Weight {
        /// The service's name.
        service: String,
        /// The real server's name.
        server: String,
        /// The new weight (0 takes no new clients).
        weight: u16,
    },
    /// Validate and apply a configuration file.
    Apply {
        /// The configuration file.
        file: PathBuf,
    },
    /// Which real server a client goes to, and why.
    Affinity {
        /// The service's name.
        service: String,
        /// The client's address.
        client: std::net::Ipv4Addr,
    },
    /// A NAT or SNAT service's tracked connections (client, server, state,
    /// age), optionally one real server's.
    Connections {
        /// The service's name.
        service: String,
        /// Only this real server's connections.
        server: Option<String>,
    },
    /// Before applying: the share of clients each service would move.
    Plan {
        /// The configuration file.
        file: PathBuf,
    },
    /// Role, VRRP state, peer, sync state.
    Ha,
    /// Web console users (`node.web.users_file`).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
}

/// `lbctl user`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user, or set a user's role and password. The password is read
    /// from the terminal (twice), or from the first line of stdin when it is
    /// not a terminal.
    Add {
        /// The sign-in name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// `admin` (also drains, halts, returns and re-weights servers) or
        /// `viewer` (sees everything, changes nothing).
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
        /// Write this users file directly instead of asking lbd (when lbd
        /// is not running; mode 0600 is kept).
        #[arg(long, value_name = "PATH")]
        users_file: Option<PathBuf>,
    },
    /// Remove a user; their sessions end.
    Del {
        /// The sign-in name.
        name: String,
        /// Write this users file directly instead of asking lbd.
        #[arg(long, value_name = "PATH")]
        users_file: Option<PathBuf>,
    },
}
