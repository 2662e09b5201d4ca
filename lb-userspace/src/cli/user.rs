//! `lbctl user`: the password is read and hashed here, so it never travels
//! or reaches lbd's log; lbd writes the users file (and audits the change),
//! or with `--users-file` lbctl writes it itself.

use std::{
    io::{BufRead as _, IsTerminal as _},
    path::Path,
};

use crate::{
    control::protocol::UserReport,
    web::users::{self, hash_password, Role, MIN_PASSWORD_LEN},
};

/// Reads a new password: from the terminal, twice and without echo, or
/// from the first line of stdin when stdin is not a terminal.
///
/// # Errors
/// When nothing can be read, the two entries differ, or the password is
/// empty.
pub fn read_password(name: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("password for {name}: "))
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let again = rpassword::prompt_password("the same password again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != again {
            return Err("the two passwords differ; nothing changed".into());
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err("no password given (type it, or pipe it on stdin); nothing changed".into());
    }
    Ok(password)
}

/// Hashes `password` for `lbctl user add`, warning on stderr when it is
/// shorter than [`MIN_PASSWORD_LEN`].
///
/// # Errors
/// An empty password.
pub fn hash(password: &str) -> Result<String, String> {
    let len = password.chars().count();
    if len > 0 && len < MIN_PASSWORD_LEN {
        eprintln!(
            "lbctl: warning: a password of {len} characters is easy to guess; use {MIN_PASSWORD_LEN} or more"
        );
    }
    hash_password(password).map_err(|e| format!("{e}; nothing changed"))
}

/// `lbctl user add --users-file PATH`: writes the file directly.
///
/// # Errors
/// A bad name, or a file that cannot be read (or has a loose mode) or written.
pub fn add_to_file(path: &Path, name: &str, role: Role, hash: &str) -> Result<UserReport, String> {
    users::add_to_file(path, name, role, hash)
        .map(|before| UserReport::added(name, before, role, path))
        .map_err(|e| format!("{e}; nothing changed"))
}

/// `lbctl user del --users-file PATH`.
///
/// # Errors
/// No such user, or the file cannot be read or written.
pub fn del_from_file(path: &Path, name: &str) -> Result<UserReport, String> {
    users::remove_from_file(path, name)
        .map(|_| UserReport::removed(name, path))
        .map_err(|e| format!("{e}; nothing changed"))
}

/// The line `lbctl user` prints.
#[must_use]
pub fn report(r: &UserReport) -> String {
    match r.role {
        Some(role) => format!("{} {} as {role} in {}\n", r.name, r.change, r.users_file),
        None => format!("{} {} from {}\n", r.name, r.change, r.users_file),
    }
}
