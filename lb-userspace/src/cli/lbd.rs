//! `lbd`'s command line.

use std::path::PathBuf;

use clap::Parser;

/// The XDP load-balancer daemon: forwards VIP traffic to sticky real servers.
///
/// Runs in the foreground and logs to stderr. SIGHUP reloads the
/// configuration (an invalid file changes nothing); SIGUSR2 re-executes the
/// file at lbd's path in place (an upgrade: same PID, the data path and
/// every table kept, a pair's master staying master); SIGTERM stops
/// cleanly (detaches the data path, removes the VIPs). The data path
/// outlives a crash; the next lbd takes it over.
#[derive(Parser, Debug)]
#[command(name = "lbd", version)]
pub struct Lbd {
    /// The YAML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the configuration, print its errors, and exit (0 valid, 1 not).
    #[arg(long)]
    pub check: bool,
}
