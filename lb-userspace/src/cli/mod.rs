//! The command lines of `lbd` and `lbctl`: their clap definitions, here in
//! the library so that the binaries and `lb-docs` (man pages and shell
//! completions for the Debian package) read the same ones; and the
//! password side of `lbctl user`.

pub mod lbctl;
pub mod lbd;
pub mod user;
