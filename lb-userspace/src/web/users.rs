//! The console's users: `node.web.users_file`, written by `lbctl user`.
//!
//! One user a line, `NAME ROLE HASH`, the hash an argon2id PHC string
//! (`$argon2id$v=19$m=...`); lines starting with `#` are comments. The file
//! holds password hashes, so like the cluster key it must be readable by
//! its owner only (mode 0600 or stricter), or it is refused. Passwords are
//! hashed by the `argon2` crate with its default (OWASP-recommended)
//! parameters and a random salt.

use std::{
    fmt,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    str::FromStr,
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher as _, SaltString},
    Argon2, PasswordVerifier as _,
};

use crate::state_file;

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Also drains, halts, returns and re-weights real servers.
    Admin,
}

impl Role {
    /// The word in the file and on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UsersError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "admin" => Ok(Self::Admin),
            other => Err(UsersError::Role(other.to_owned())),
        }
    }
}

/// Errors reading or changing the users file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsersError {
    /// The file cannot be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// Group or others may read the file.
    #[error("{path}: mode {mode:04o} lets other users read the console's password hashes; run: chmod 600 {path}")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `NAME ROLE HASH`.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Not a role.
    #[error("{0:?} is not a role; use admin or viewer")]
    Role(String),
    /// Not a valid user name.
    #[error("{0:?} is not a valid user name; use 1 to 64 of A-Z a-z 0-9 . _ -")]
    Name(String),
    /// The password is unusable.
    #[error("{0}")]
    Password(String),
    /// No such user.
    #[error("no user {0:?} in the users file")]
    Unknown(String),
}

/// One console user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Sign-in name.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// The argon2id PHC string.
    pub hash: String,
}

/// The users file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    users: Vec<User>,
}

/// Passwords shorter than this are accepted with a warning (NIST SP
/// 800-63B's minimum): the sign-in limiter slows guessing, and the
/// hospital's own policy decides.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Whether `name` is a valid user name.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Hashes `password` with argon2id and a fresh random salt.
///
/// # Errors
/// When the password is empty or cannot be hashed.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::Password("the password is empty".into()));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Password(format!("cannot hash the password: {e}")))
}

/// Whether `hash` is an argon2id PHC string this module can verify.
#[must_use]
pub fn valid_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}

impl Users {
    /// Reads `path`: no file is no users; a file others may read is refused.
    ///
    /// # Errors
    /// When the file cannot be read, has a loose mode, or a bad line.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file_error = |message: String| UsersError::File {
            path: path.to_owned(),
            message,
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(file_error(format!("cannot read the users file: {e}"))),
        };
        if !meta.is_file() {
            return Err(file_error("the users file must be a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(UsersError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| file_error(format!("cannot read the users file: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses the file's text (`path` names it in errors).
    ///
    /// # Errors
    /// At the first line that is not `NAME ROLE HASH`, or a name given twice.
    pub fn parse(text: &str, path: &Path) -> Result<Self, UsersError> {
        let mut users: Vec<User> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_error = |message: String| UsersError::Line {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(line_error(
                    "expected NAME ROLE HASH; write users with lbctl user add".into(),
                ));
            };
            if !valid_name(name) {
                return Err(line_error(UsersError::Name(name.to_owned()).to_string()));
            }
            let role = role
                .parse()
                .map_err(|e: UsersError| line_error(e.to_string()))?;
            if !valid_hash(hash) {
                return Err(line_error(format!(
                    "the password of {name:?} is not an argon2id hash; set it again with lbctl user add"
                )));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(line_error(format!("user {name:?} is listed twice")));
            }
            users.push(User {
                name: name.to_owned(),
                role,
                hash: hash.to_owned(),
            });
        }
        Ok(Self { users })
    }

    /// The file's text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# lbd web console users: NAME ROLE ARGON2ID-HASH (written by lbctl user)\n",
        );
        for u in &self.users {
            out.push_str(&format!("{} {} {}\n", u.name, u.role, u.hash));
        }
        out
    }

    /// Writes the file atomically, mode 0600.
    ///
    /// # Errors
    /// When the file or its directory cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let file_error = |e: std::io::Error| UsersError::File {
            path: path.to_owned(),
            message: format!("cannot write the users file: {e}"),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(file_error)?;
        }
        state_file::write_atomically(path, self.render().as_bytes()).map_err(file_error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(file_error)
    }

    /// Every user, in file order.
    #[must_use]
    pub fn all(&self) -> &[User] {
        &self.users
    }

    /// The user named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Adds `name` or replaces its role and hash; true when it was new.
    ///
    /// # Errors
    /// A bad name or hash.
    pub fn set(&mut self, name: &str, role: Role, hash: &str) -> Result<bool, UsersError> {
        if !valid_name(name) {
            return Err(UsersError::Name(name.to_owned()));
        }
        if !valid_hash(hash) {
            return Err(UsersError::Password(
                "the password hash is not argon2id".into(),
            ));
        }
        let user = User {
            name: name.to_owned(),
            role,
            hash: hash.to_owned(),
        };
        if let Some(u) = self.users.iter_mut().find(|u| u.name == name) {
            *u = user;
            return Ok(false);
        }
        self.users.push(user);
        Ok(true)
    }

    /// Removes `name`.
    ///
    /// # Errors
    /// When there is no such user.
    pub fn remove(&mut self, name: &str) -> Result<User, UsersError> {
        let i = self
            .users
            .iter()
            .position(|u| u.name == name)
            .ok_or_else(|| UsersError::Unknown(name.to_owned()))?;
        Ok(self.users.remove(i))
    }

    /// The user `name` if `password` is theirs. Costs one argon2 hash even
    /// for an unknown name, so the answer's time does not tell which names
    /// exist.
    #[must_use]
    pub fn verify(&self, name: &str, password: &str) -> Option<&User> {
        let user = self.get(name);
        let hash = user.map_or(DUMMY_HASH, |u| u.hash.as_str());
        let ok = PasswordHash::new(hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        });
        user.filter(|_| ok)
    }
}

/// Adds `name` to the users file at `path`, or sets its role and hash;
/// the role it had before (`None`: a new user). Written atomically, mode
/// 0600; on any error the file is unchanged.
///
/// # Errors
/// A bad name or hash, or a file that cannot be read (or others may read) or
/// written.
pub fn add_to_file(
    path: &Path,
    name: &str,
    role: Role,
    hash: &str,
) -> Result<Option<Role>, UsersError> {
    let mut users = Users::load(path)?;
    let before = users.get(name).map(|u| u.role);
    users.set(name, role, hash)?;
    users.save(path)?;
    Ok(before)
}

/// Removes `name` from the users file at `path`; the role it had.
///
/// # Errors
/// No such user, or a file that cannot be read or written.
pub fn remove_from_file(path: &Path, name: &str) -> Result<Role, UsersError> {
    let mut users = Users::load(path)?;
    let gone = users.remove(name)?;
    users.save(path)?;
    Ok(gone.role)
}

/// The hash of a random password nobody knows, with the default
/// parameters: checked against for unknown names.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Vx2tGfAEmlHhDcaB4tXnFQpkqbjTwP7s2RslQ1mEsLI";

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lbd-users-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("users")
    }

    #[test]
    fn a_user_added_signs_in_with_their_password_only() {
        let path = temp("add");
        let mut users = Users::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(users.all().is_empty(), "no file is no users");
        let hash = hash_password("correct horse").unwrap_or_else(|e| panic!("{e}"));
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_eq!(users.set("alice", Role::Admin, &hash), Ok(true));
        users.save(&path).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let read = Users::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, users);
        assert_eq!(
            read.verify("alice", "correct horse").map(|u| u.role),
            Some(Role::Admin)
        );
        assert!(read.verify("alice", "wrong horse").is_none());
        assert!(read.verify("bob", "correct horse").is_none());
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
    }

    #[test]
    fn a_readable_file_and_bad_lines_are_refused() {
        let path = temp("mode");
        let mut users = Users::default();
        let hash = hash_password("password1").unwrap_or_else(|e| panic!("{e}"));
        users
            .set("bob", Role::Viewer, &hash)
            .unwrap_or_else(|e| panic!("{e}"));
        users.save(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));

        let p = Path::new("/etc/lbd/users");
        for (text, wanted) in [
            ("bob viewer\n", "1: expected NAME ROLE HASH"),
            ("bob root $argon2id$x\n", "\"root\" is not a role"),
            ("b/b viewer x\n", "not a valid user name"),
            (
                "bob viewer $2b$10$abcdefghijklmnopqrstuv\n",
                "not an argon2id hash",
            ),
            (
                &format!("# c\nbob viewer {hash}\nbob admin {hash}\n"),
                "3: user \"bob\" is listed twice",
            ),
        ] {
            let e = Users::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(wanted), "{text:?}: {e}");
        }
        assert!(hash_password("").is_err());
        assert!(
            valid_hash(DUMMY_HASH),
            "unknown names must cost a real verification"
        );
        assert!(users.set("a b", Role::Admin, &hash).is_err());
        assert_eq!(
            users.remove("nobody"),
            Err(UsersError::Unknown("nobody".into()))
        );
        assert!(users.remove("bob").is_ok());
    }
}
