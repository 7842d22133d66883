//! The authentication steps in plain Rust, over the [`Host`] trait, so the
//! logic does not depend on raw PAM calls. Every outcome is mapped to a PAM
//! return code in one place, [`Outcome::code`].

use freeauth_proto::{ErrorKind, Origin, Response, SecretString, VerifyResult};
use pam::constants::PamResultCode;
use zeroize::Zeroizing;

use crate::agent::{Account, Agent, AgentError};
use crate::options::{CodeSource, Options};

/// Longest answer accepted from the conversation or PAM_AUTHTOK, in bytes:
/// a long password followed by a code. Longer input is rejected.
pub const MAX_ANSWER_LEN: usize = 512;

/// Prompt used when the agent sends none.
const DEFAULT_PROMPT: &str = "Verification code: ";

/// Syslog priority of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

/// Operations the flow needs from the PAM stack.
pub trait Host {
    /// Returns the user name, or an error saying why PAM has none.
    fn user(&mut self) -> Result<String, String>;
    /// PAM_SERVICE, PAM_RHOST, PAM_TTY, PAM_RUSER.
    fn context(&self) -> Origin;
    fn authtok(&self) -> Option<Zeroizing<String>>;
    fn set_authtok(&mut self, value: &str) -> Result<(), String>;
    /// Asks with echo off; `None` if the conversation failed.
    fn ask_secret(&mut self, prompt: &str) -> Option<Zeroizing<String>>;
    /// Shows an informational or error message to the user.
    fn tell(&mut self, message: &str, error: bool);
    fn log(&self, priority: Priority, message: &str);
}

/// Every way an authentication can end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
    Locked,
    /// The user has no active token and `nullok` is not set.
    NoToken,
    /// The user has no active token and `nullok` is set.
    NoTokenAllowed,
    /// The agent cannot be reached or failed.
    Unavailable,
    /// The agent cannot be reached and `ignore_unavailable` is set.
    UnavailableIgnored,
    /// The user gave no answer, or the conversation failed.
    ConversationFailed,
    /// PAM itself failed (no user name, an item could not be set).
    PamFailed,
}

impl Outcome {
    /// The PAM return code of each outcome: the only place that decides it.
    pub fn code(self) -> PamResultCode {
        match self {
            Outcome::Accepted => PamResultCode::PAM_SUCCESS,
            Outcome::Rejected => PamResultCode::PAM_AUTH_ERR,
            Outcome::Locked => PamResultCode::PAM_MAXTRIES,
            Outcome::NoToken => PamResultCode::PAM_USER_UNKNOWN,
            Outcome::NoTokenAllowed | Outcome::UnavailableIgnored => PamResultCode::PAM_IGNORE,
            Outcome::Unavailable => PamResultCode::PAM_AUTHINFO_UNAVAIL,
            Outcome::ConversationFailed => PamResultCode::PAM_CONV_ERR,
            Outcome::PamFailed => PamResultCode::PAM_SERVICE_ERR,
        }
    }
}

/// Runs `pam_sm_authenticate`.
pub fn authenticate(host: &mut dyn Host, options: &Options) -> Outcome {
    for argument in &options.unknown {
        host.log(
            Priority::Warning,
            &format!("unknown or invalid option ignored: {argument}"),
        );
    }
    let user = match host.user() {
        Ok(user) => user,
        Err(err) => {
            host.log(Priority::Error, &format!("cannot get the user name: {err}"));
            return Outcome::PamFailed;
        }
    };
    let connected = Agent::connect_and_lookup(&options.socket, &options.agent_user, options.timeout, &user);
    let (mut agent, account) = match connected {
        Ok(pair) => pair,
        Err(AgentError::Refused { kind, message }) => return refused(host, options, "lookup", &user, kind, &message),
        Err(err) => return unavailable(host, options, &user, &err),
    };
    if let Some(outcome) = before_prompt(host, options, &user, &account) {
        // A remote party sees the same prompt whatever the account's state,
        // so it cannot list enrolled or locked accounts; nullok is the
        // documented exception, since it lets the user in without one.
        if outcome != Outcome::NoTokenAllowed && is_remote(host) {
            let _ignored = read_answer(host, options, &account);
        }
        return outcome;
    }
    let answer = match read_answer(host, options, &account) {
        Some(answer) => answer,
        None => return Outcome::ConversationFailed,
    };
    let origin = host.context();
    let mut outcome = verify_answer(host, options, &mut agent, &user, &answer, &account, origin.clone());
    // try_first_pass: a rejected PAM_AUTHTOK gets one prompt, as pam_unix does.
    let retry = options.source == CodeSource::TryFirstPass && outcome == Outcome::Rejected;
    if retry && host.authtok().is_some_and(|token| *token == *answer) {
        let prompt = options.prompt.clone().unwrap_or_else(|| account.prompt.clone());
        let prompt = if prompt.is_empty() {
            DEFAULT_PROMPT.to_owned()
        } else {
            prompt
        };
        let Some(second) = host.ask_secret(&prompt) else {
            return Outcome::ConversationFailed;
        };
        outcome = verify_answer(host, options, &mut agent, &user, &second, &account, origin);
    }
    log_outcome(host, options, &user, outcome);
    outcome
}

/// Decides without prompting when the account has no token or is locked.
fn before_prompt(host: &mut dyn Host, options: &Options, user: &str, account: &Account) -> Option<Outcome> {
    if account.disabled {
        host.log(
            Priority::Notice,
            &format!("user {user} has only disabled tokens; refused"),
        );
        return Some(Outcome::Rejected);
    }
    if !account.enrolled {
        let outcome = if options.nullok {
            Outcome::NoTokenAllowed
        } else {
            Outcome::NoToken
        };
        let verb = if options.nullok { "skipped (nullok)" } else { "refused" };
        host.log(Priority::Notice, &format!("user {user} has no active token; {verb}"));
        return Some(outcome);
    }
    if account.locked {
        host.log(
            Priority::Notice,
            &format!("user {user} is locked after too many failures"),
        );
        if !options.quiet && !is_remote(host) {
            host.tell("Too many failed codes; this account is locked for a while.", true);
        }
        return Some(Outcome::Locked);
    }
    None
}

/// Returns whether the login comes from another host (PAM_RHOST is set).
fn is_remote(host: &dyn Host) -> bool {
    matches!(host.context(), Origin::Pam { rhost: Some(rhost), .. } if !rhost.is_empty())
}

/// Returns whether `text`, spaces removed, has the length of one of the account's
/// codes and only characters a code can have (digits, or hex for Mobile-OTP).
fn looks_like_code(text: &str, lengths: &[u8]) -> bool {
    let compact: String = text.trim().chars().filter(|c| *c != ' ').collect();
    let right_length = lengths.iter().any(|length| compact.len() == usize::from(*length));
    right_length && compact.chars().all(|c| c.is_ascii_hexdigit())
}

/// Reads the code (or password and code) from the source `options` names.
fn read_answer(host: &mut dyn Host, options: &Options, account: &Account) -> Option<Zeroizing<String>> {
    let prompt = options
        .prompt
        .clone()
        .or_else(|| (!account.prompt.is_empty()).then(|| account.prompt.clone()))
        .unwrap_or_else(|| DEFAULT_PROMPT.to_owned());
    let answer = match options.source {
        CodeSource::Prompt => host.ask_secret(&prompt),
        CodeSource::UseFirstPass => host.authtok(),
        CodeSource::TryFirstPass => match host.authtok() {
            // Only a value shaped like one of the account's codes is sent, so
            // the password of an earlier module never reaches the agent.
            Some(token) if looks_like_code(&token, &account.code_lengths) => Some(token),
            _ => host.ask_secret(&prompt),
        },
        CodeSource::ForwardPass => host.authtok().or_else(|| {
            let combined = options
                .prompt
                .clone()
                .unwrap_or_else(|| "Password followed by verification code: ".into());
            host.ask_secret(&combined)
        }),
    }?;
    if answer.is_empty() || answer.len() > MAX_ANSWER_LEN {
        return None;
    }
    Some(answer)
}

fn verify_answer(
    host: &mut dyn Host,
    options: &Options,
    agent: &mut Agent,
    user: &str,
    answer: &str,
    account: &Account,
    origin: Origin,
) -> Outcome {
    if options.source != CodeSource::ForwardPass {
        // A response that cannot be a code is not sent. sshd's password
        // method sends the password to every prompt, and so does a mail
        // client on common-auth. Counting those as failures would lock the
        // account, and the agent would receive a password.
        if !looks_like_code(answer, &account.code_lengths) {
            host.log(
                Priority::Notice,
                &format!("answer for {user} is not shaped like a code; rejected without asking the agent"),
            );
            return Outcome::Rejected;
        }
        return ask_agent(host, options, agent, user, answer, origin);
    }
    // Try each code length the account uses, longest first, on the end of
    // the answer; the rest is the password for the next module.
    let mut lengths = account.code_lengths.clone();
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    let mut outcome = Outcome::Rejected;
    for length in lengths {
        let Some(split) = answer.len().checked_sub(usize::from(length)) else {
            continue;
        };
        if !answer.is_char_boundary(split) {
            continue;
        }
        let (password, code) = answer.split_at(split);
        // A tail that cannot be a code is not sent: it would count as a
        // failure and hand part of the password to the agent.
        if !looks_like_code(code, &[length]) {
            continue;
        }
        outcome = ask_agent(host, options, agent, user, code, origin.clone());
        if outcome == Outcome::Accepted {
            if let Err(err) = host.set_authtok(password) {
                host.log(Priority::Error, &format!("cannot pass the password on: {err}"));
                return Outcome::PamFailed;
            }
            return outcome;
        }
        if outcome != Outcome::Rejected {
            return outcome;
        }
    }
    outcome
}

fn ask_agent(
    host: &mut dyn Host,
    options: &Options,
    agent: &mut Agent,
    user: &str,
    code: &str,
    origin: Origin,
) -> Outcome {
    match agent.verify(user, SecretString::new(code), origin) {
        Ok(Response::Verdict { result, .. }) => match result {
            VerifyResult::Accepted => Outcome::Accepted,
            VerifyResult::Rejected => Outcome::Rejected,
            VerifyResult::Locked => Outcome::Locked,
            // The lookup found a token; losing it since then is no reason
            // to let the user in, nullok or not.
            VerifyResult::NoToken => Outcome::Rejected,
        },
        // Once the code is sent, nothing may turn into PAM_IGNORE: the agent
        // was up for the lookup, so any failure now fails closed.
        Ok(Response::Error { kind, message }) => match refused(host, options, "verification", user, kind, &message) {
            Outcome::UnavailableIgnored => Outcome::Unavailable,
            outcome => outcome,
        },
        Ok(_) => {
            host.log(
                Priority::Error,
                &format!("unexpected answer from the agent on the code of {user}; failing closed"),
            );
            Outcome::Unavailable
        }
        // A failure after the code was sent, such as a rejection held back by
        // the failure delay for longer than `timeout`, fails closed too.
        Err(err) => {
            host.log(
                Priority::Error,
                &format!("no answer from the agent on the code of {user}: {err}; failing closed"),
            );
            Outcome::Unavailable
        }
    }
}

/// Maps an error response of the agent. A refusal of this caller or request
/// (forbidden, rate limited, invalid) fails the authentication: it is not
/// an outage, so `ignore_unavailable` must not turn it into PAM_IGNORE.
fn refused(
    host: &mut dyn Host,
    options: &Options,
    request: &str,
    user: &str,
    kind: ErrorKind,
    message: &str,
) -> Outcome {
    host.log(
        Priority::Error,
        &format!("agent refused {request} of {user}: {message}"),
    );
    match kind {
        ErrorKind::RateLimited => Outcome::Locked,
        ErrorKind::Forbidden | ErrorKind::Invalid | ErrorKind::NotFound => Outcome::Rejected,
        _ => unavailable_outcome(options),
    }
}

fn unavailable_outcome(options: &Options) -> Outcome {
    if options.ignore_unavailable {
        Outcome::UnavailableIgnored
    } else {
        Outcome::Unavailable
    }
}

fn unavailable(host: &mut dyn Host, options: &Options, user: &str, err: &AgentError) -> Outcome {
    let action = if options.ignore_unavailable {
        "ignoring the module (ignore_unavailable)"
    } else {
        "failing closed"
    };
    host.log(
        Priority::Error,
        &format!("agent unavailable while authenticating {user}: {err}; {action}"),
    );
    unavailable_outcome(options)
}

fn log_outcome(host: &mut dyn Host, options: &Options, user: &str, outcome: Outcome) {
    let (priority, text) = match outcome {
        Outcome::Accepted => (Priority::Info, "code accepted"),
        Outcome::Rejected => (Priority::Notice, "code rejected"),
        Outcome::Locked => (Priority::Notice, "rejected: account locked or rate limited"),
        _ => (Priority::Debug, "authentication ended"),
    };
    if priority != Priority::Debug || options.debug {
        host.log(priority, &format!("{text} for {user}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_code_shapes() {
        assert!(looks_like_code("123456", &[6]));
        assert!(looks_like_code(" 123 456 ", &[6, 8]));
        assert!(looks_like_code("12345678", &[6, 8]));
        assert!(!looks_like_code("hunter22", &[6]));
        assert!(!looks_like_code("correct horse", &[6, 8]));
        assert!(!looks_like_code("123456", &[]));
    }

    #[test]
    fn maps_every_outcome_once() {
        let cases = [
            (Outcome::Accepted, PamResultCode::PAM_SUCCESS),
            (Outcome::Rejected, PamResultCode::PAM_AUTH_ERR),
            (Outcome::Locked, PamResultCode::PAM_MAXTRIES),
            (Outcome::NoToken, PamResultCode::PAM_USER_UNKNOWN),
            (Outcome::NoTokenAllowed, PamResultCode::PAM_IGNORE),
            (Outcome::Unavailable, PamResultCode::PAM_AUTHINFO_UNAVAIL),
            (Outcome::UnavailableIgnored, PamResultCode::PAM_IGNORE),
            (Outcome::ConversationFailed, PamResultCode::PAM_CONV_ERR),
            (Outcome::PamFailed, PamResultCode::PAM_SERVICE_ERR),
        ];
        for (outcome, code) in cases {
            assert_eq!(outcome.code(), code, "{outcome:?}");
        }
    }
}
