//! `lbd`: the load-balancer daemon. See the README and shared contract.

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use lb_userspace::config::{check_key_file, error_at, Config};
use lb_userspace::{cli::lbd::Lbd as Args, daemon};

fn main() -> ExitCode {
    // First, before anything opens a descriptor or starts a thread: what a
    // re-executing lbd handed over.
    let inherited = lb_userspace::inherit::from_env();
    let reexecuted = daemon::was_reexecuted();
    let (mut handed_over, unreadable) = daemon::handed_over();
    handed_over.reexecuted = reexecuted;
    let exec = daemon::Exec::at_start();
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|f, record| writeln!(f, "lbd[{}]: {}", record.level(), record.args()))
        .init();
    if reexecuted {
        log::info!(
            "re-executed (SIGUSR2) from {}, {} listeners handed over: {inherited:?}",
            exec.path().display(),
            inherited.len()
        );
    }
    if let Some(error) = unreadable {
        log::error!("{error}");
    }

    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            if !args.check {
                eprintln!("lbd: the configuration is invalid; nothing was started");
            }
            return ExitCode::FAILURE;
        }
    };
    // Errors about the files the configuration names, at the key naming each.
    let refuse = |path: &[&str], message: &str| {
        let text = Config::read_text(&args.config).unwrap_or_default();
        let file = args.config.display().to_string();
        eprintln!("{}", error_at(&file, &text, path, message));
        ExitCode::FAILURE
    };
    if let Some(sync) = config.cluster.as_ref().and_then(|c| c.sync.as_ref()) {
        if let Err(message) = check_key_file(&sync.key_file) {
            return refuse(&["cluster", "sync", "key_file"], &message);
        }
    }
    if let Some(web) = &config.node.web {
        if let Err(e) = lb_userspace::web::users::Users::load(&web.users_file) {
            return refuse(&["node", "web", "users_file"], &e.to_string());
        }
        if let Some(tls) = &web.tls {
            // Reads the files only; nothing is generated or written.
            let loaded = lb_userspace::web::tls::Identity::load(
                Some(tls),
                &config.node.state_dir,
                web.listen,
            )
            .and_then(lb_userspace::web::tls::Identity::server_config);
            if let Err(e) = loaded {
                return refuse(&["node", "web", "tls"], &e.to_string());
            }
        }
    }
    if args.check {
        println!(
            "{}: valid ({} services)",
            args.config.display(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(args.config, config, exec, handed_over)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
