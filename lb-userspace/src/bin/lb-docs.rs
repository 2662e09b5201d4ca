//! `lb-docs DIR`: the man pages of lbd and lbctl (`DIR/man/lbd.8`,
//! `DIR/man/lbctl.8`) and their bash and zsh completions
//! (`DIR/completions/`), generated from their clap definitions. Run by
//! `cargo xtask package`; not installed.

use std::{fs, path::PathBuf, process::ExitCode};

use clap::CommandFactory as _;
use clap_complete::Shell;
use lb_userspace::cli::{lbctl::Lbctl, lbd::Lbd};

fn generate(dir: &std::path::Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    for (name, command) in [("lbd", Lbd::command()), ("lbctl", Lbctl::command())] {
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .section("8")
            .render(&mut page)?;
        fs::write(man.join(format!("{name}.8")), page)?;
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), name, &mut script);
            fs::write(completions.join(file), script)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: lb-docs DIR");
        return ExitCode::from(2);
    };
    match generate(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lb-docs: writing into {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}
