//! The exit codes of both binaries and their subcommands: one number per kind of end, so a script
//! or a 3 a.m. operator can tell "you typed it wrong" from "it is not configured" from "there is
//! no such thing" from "it tried and failed".

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It did what was asked (and, for a check, found nothing wrong).
    Success = 0,
    /// It ran and failed: a dependency was unreachable, an action failed, or a check
    /// (`audit verify`) found a problem. The message says which.
    Failure = 1,
    /// The command line was wrong (an unknown flag, a missing argument): clap's own code.
    Usage = 2,
    /// The configuration is missing or wrong; the message names the key.
    Config = 3,
    /// What the command was asked about does not exist (a dead letter id, a user's email).
    NotFound = 4,
    /// A safety check refused the action (`dr promote` on a server that is a primary already,
    /// or still replicates from a live primary, or is not the server named): nothing was changed.
    Refused = 5,
}

impl Exit {
    /// The code of a command that returned `error`.
    pub fn of(error: &anyhow::Error) -> Exit {
        if error.downcast_ref::<NotFound>().is_some() {
            Exit::NotFound
        } else if error.downcast_ref::<Refused>().is_some() {
            Exit::Refused
        } else if error.downcast_ref::<Usage>().is_some() {
            Exit::Usage
        } else if error.downcast_ref::<crate::config::ConfigError>().is_some() {
            Exit::Config
        } else {
            Exit::Failure
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// An error meaning "there is no such thing": exits with [`Exit::NotFound`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// An error meaning "a safety check said no; nothing was changed": exits with [`Exit::Refused`].
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// An error meaning "the command line cannot be acted on as written" (beyond what clap checks):
/// exits with [`Exit::Usage`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The table printed at the end of every `--help`.
pub const HELP: &str = "\
Exit codes:
  0  done (a check found nothing wrong)
  1  failed: a dependency was unreachable, an action failed, or a check found a problem
  2  usage: the command line is wrong
  3  configuration: a key is missing or wrong (the message names it)
  4  not found: what was asked about does not exist
  5  refused: a safety check said no (dr promote on the wrong server, ...); nothing was changed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_end_has_its_own_code() {
        assert_eq!(Exit::of(&anyhow::Error::new(NotFound("no dead letter 7".into()))), Exit::NotFound);
        assert_eq!(Exit::of(&anyhow::anyhow!("broker unreachable")), Exit::Failure);
        assert_eq!(Exit::of(&anyhow::Error::new(Usage("say which".into()))), Exit::Usage);
        let wrapped = anyhow::Error::new(NotFound("x".into())).context("while replaying");
        assert_eq!(Exit::of(&wrapped), Exit::NotFound, "context keeps the kind");
        assert_eq!(Exit::of(&anyhow::Error::new(Refused("a primary already".into()))), Exit::Refused);
        let codes =
            [Exit::Success, Exit::Failure, Exit::Usage, Exit::Config, Exit::NotFound, Exit::Refused].map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
        for code in codes {
            assert!(HELP.contains(&format!("  {code}  ")), "HELP documents {code}");
        }
    }
}
