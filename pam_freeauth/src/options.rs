//! Module arguments from the PAM configuration line.

use std::path::PathBuf;
use std::time::Duration;

/// Default agent socket of a package install.
pub const DEFAULT_SOCKET: &str = "/run/freeauth/agent.sock";
/// Default user the agent runs as; the socket and the peer must belong to it.
pub const DEFAULT_AGENT_USER: &str = "freeauth";
/// Default timeout of the connect and of each read and write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSource {
    /// Ask through the conversation.
    Prompt,
    /// Only PAM_AUTHTOK, set by an earlier module.
    UseFirstPass,
    /// PAM_AUTHTOK if set, else ask.
    TryFirstPass,
    /// One answer (or PAM_AUTHTOK) holds the password followed by the code;
    /// the password stays in PAM_AUTHTOK for the next module.
    ForwardPass,
}

/// Parsed module arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub socket: PathBuf,
    pub agent_user: String,
    pub timeout: Duration,
    pub prompt: Option<String>,
    pub source: CodeSource,
    pub nullok: bool,
    pub ignore_unavailable: bool,
    pub debug: bool,
    pub quiet: bool,
    /// Arguments that were not understood, for one log line each.
    pub unknown: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: PathBuf::from(DEFAULT_SOCKET),
            agent_user: DEFAULT_AGENT_USER.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            prompt: None,
            source: CodeSource::Prompt,
            nullok: false,
            ignore_unavailable: false,
            debug: false,
            quiet: false,
            unknown: Vec::new(),
        }
    }
}

impl Options {
    /// Parses arguments. Unknown or invalid ones are kept in `unknown` and
    /// otherwise ignored, as PAM modules do; none of them can turn a safe
    /// default into an unsafe one.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Options {
        let mut options = Options::default();
        for arg in args {
            if !options.apply(arg) {
                options.unknown.push(arg.to_owned());
            }
        }
        options
    }

    fn apply(&mut self, arg: &str) -> bool {
        match arg.split_once('=') {
            Some(("socket", path)) if path.starts_with('/') => self.socket = PathBuf::from(path),
            Some(("agent_user", name)) if !name.is_empty() => self.agent_user = name.to_owned(),
            Some(("timeout", seconds)) => match seconds.parse::<u64>() {
                Ok(seconds @ 1..=600) => self.timeout = Duration::from_secs(seconds),
                _ => return false,
            },
            // An empty prompt would show the user nothing to answer.
            Some(("prompt", text)) if !text.is_empty() => self.prompt = Some(text.to_owned()),
            Some(_) => return false,
            None => match arg {
                "use_first_pass" => self.source = CodeSource::UseFirstPass,
                "try_first_pass" => self.source = CodeSource::TryFirstPass,
                "forward_pass" => self.source = CodeSource::ForwardPass,
                "nullok" => self.nullok = true,
                "ignore_unavailable" => self.ignore_unavailable = true,
                "debug" => self.debug = true,
                "quiet" => self.quiet = true,
                _ => return false,
            },
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fail_closed() {
        let options = Options::parse([]);
        assert_eq!(options.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(!options.nullok);
        assert!(!options.ignore_unavailable);
        assert_eq!(options.source, CodeSource::Prompt);
    }

    #[test]
    fn parses_every_option() {
        let options = Options::parse([
            "socket=/tmp/a.sock",
            "agent_user=root",
            "timeout=3",
            "prompt=Token code: ",
            "forward_pass",
            "nullok",
            "ignore_unavailable",
            "debug",
            "quiet",
        ]);
        assert_eq!(options.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(options.agent_user, "root");
        assert_eq!(options.timeout, Duration::from_secs(3));
        assert_eq!(options.prompt.as_deref(), Some("Token code: "));
        assert_eq!(options.source, CodeSource::ForwardPass);
        assert!(options.nullok && options.ignore_unavailable && options.debug && options.quiet);
        assert!(options.unknown.is_empty());
    }

    #[test]
    fn keeps_unknown_and_invalid_arguments() {
        let options = Options::parse([
            "bogus",
            "timeout=0",
            "timeout=x",
            "socket=relative",
            "agent_user=",
            "prompt=",
        ]);
        assert_eq!(
            options.unknown,
            [
                "bogus",
                "timeout=0",
                "timeout=x",
                "socket=relative",
                "agent_user=",
                "prompt="
            ]
        );
        assert_eq!(options.timeout, DEFAULT_TIMEOUT);
        assert_eq!(options.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(options.prompt, None);
    }
}
