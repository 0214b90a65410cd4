//! The exit codes of every xenchan binary (the "Exit codes" of each binary's `--help` and docs/OPERATING.md): 0 ok, 2 usage (clap's own),
//! sysexits(3) for the rest, 130 when interrupted.

/// Why a binary exits. Each error type of a binary maps itself to one of these with
/// [`HasExit`], so the codes an operator or a unit file sees are chosen in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A check ran and said "no" (e.g. `registry check` on a clashing name).
    Failure = 1,
    /// The command line is wrong (clap exits with 2 itself).
    Usage = 2,
    /// EX_DATAERR: the input data is wrong (a bad document, a refused request).
    DataErr = 65,
    /// EX_NOINPUT: an input file does not exist or cannot be read.
    NoInput = 66,
    /// EX_UNAVAILABLE: a service the command needs is not there or refused.
    Unavailable = 69,
    /// EX_SOFTWARE: an internal error (a bug).
    Software = 70,
    /// EX_IOERR: reading or writing failed.
    IoErr = 74,
    /// EX_TEMPFAIL: try again later (a timeout, a busy resource).
    TempFail = 75,
    /// EX_NOPERM: not permitted.
    NoPerm = 77,
    /// EX_CONFIG: the configuration is unusable.
    Config = 78,
    /// Stopped by SIGINT (128 + 2), as shells report it.
    Interrupted = 130,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// An error that knows the exit code its binary should end with.
pub trait HasExit {
    /// The code.
    fn exit(&self) -> Exit;
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_sysexits() {
        assert_eq!(Exit::DataErr.code(), 65);
        assert_eq!(Exit::Unavailable.code(), 69);
        assert_eq!(Exit::IoErr.code(), 74);
        assert_eq!(Exit::Config.code(), 78);
        assert_eq!(Exit::Interrupted.code(), 130);
    }
}
