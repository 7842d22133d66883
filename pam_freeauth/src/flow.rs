//! The authentication steps in plain Rust, over the [`Host`] trait, so the
//! logic does not depend on raw PAM calls. Every outcome is mapped to a PAM
//! return code in one place, [`Outcome::code`].

use freeauth_proto::{ErrorKind, Origin, Response, SecretString, VerifyResult, MAX_USER_LEN};
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
    /// Returns the name the user database gives for `name`, `None` when it
    /// has no such user, or an error when the lookup failed.
    fn database_name(&self, name: &str) -> Result<Option<String>, String>;
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
    let outcome = authenticate_code(host, options);
    // sshd closes the connection on PAM_MAXTRIES, which would tell a remote
    // client that the account, or its own address, is locked.
    if outcome == Outcome::Locked && is_remote(host) {
        return Outcome::Rejected;
    }
    outcome
}

fn authenticate_code(host: &mut dyn Host, options: &Options) -> Outcome {
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
    // The agent rejects such a name as invalid. A name too long for its
    // 16 KiB request frame would end in a frame error instead, which reads
    // as an outage, so `ignore_unavailable` would skip the code.
    if user.len() > MAX_USER_LEN {
        host.log(
            Priority::Notice,
            &format!(
                "user name of {} bytes is longer than the {MAX_USER_LEN} bytes the agent accepts; rejected",
                user.len()
            ),
        );
        return Outcome::Rejected;
    }
    let connected = Agent::connect_and_lookup(&options.socket, &options.agent_user, options.timeout, &user);
    let (mut agent, account) = match connected {
        Ok(pair) => pair,
        Err(AgentError::Refused { kind, message }) => return refused(host, options, "lookup", &user, kind, &message),
        Err(err) => return unavailable(host, options, &user, &err),
    };
    let (user, account) = match database_spelling(host, &mut agent, user, account) {
        Ok(pair) => pair,
        Err(outcome) => return outcome,
    };
    if let Some(outcome) = before_prompt(host, options, &user, &account) {
        if outcome == Outcome::NoTokenAllowed || !is_remote(host) {
            return outcome;
        }
        return reject_remote(host, options, &mut agent, &user, &account, outcome);
    }
    let outcome = read_and_verify(host, options, &mut agent, &user, &account, false);
    log_outcome(host, options, &user, outcome);
    outcome
}

/// Returns the name and account to go on with. When the agent has no token
/// under the name as typed, looks up the user database's spelling of it.
/// A database that ignores case (LDAP, Active Directory through SSSD or
/// winbind) lets `JO` log in as `jo`. The agent, asked about `JO` only,
/// would find no token, so `nullok` would skip the code. A typed name with
/// a token needs no lookup: its code is asked for anyway.
fn database_spelling(
    host: &mut dyn Host,
    agent: &mut Agent,
    typed: String,
    account: Account,
) -> Result<(String, Account), Outcome> {
    if account.enrolled || account.disabled {
        return Ok((typed, account));
    }
    let name = match host.database_name(&typed) {
        Ok(Some(name)) if name != typed => name,
        // The database lacks the name or spells it the same way: the
        // modules that check the password fail for it, or know the user
        // some other way.
        Ok(_) => return Ok((typed, account)),
        Err(err) => {
            host.log(
                Priority::Error,
                &format!("cannot look {typed} up in the user database: {err}"),
            );
            return Err(Outcome::PamFailed);
        }
    };
    match agent.lookup(&name) {
        Ok(found) => {
            host.log(
                Priority::Info,
                &format!("user {typed} is {name} in the user database; asking about {name}"),
            );
            Ok((name, found))
        }
        Err(err) => {
            host.log(
                Priority::Error,
                &format!("agent failed the lookup of {name} (typed as {typed}): {err}; failing closed"),
            );
            Err(Outcome::Unavailable)
        }
    }
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

/// Reads the code, has the agent verify it and, with `try_first_pass`,
/// prompts once more when the agent rejected the value of PAM_AUTHTOK. With
/// `rejected_at_lookup`, the lookup already rejected the login, and any answer but an
/// acceptance counts as a rejection, so the prompts are those of an
/// account that is not locked.
fn read_and_verify(
    host: &mut dyn Host,
    options: &Options,
    agent: &mut Agent,
    user: &str,
    account: &Account,
    rejected_at_lookup: bool,
) -> Outcome {
    let Some(answer) = read_answer(host, options, account) else {
        return Outcome::ConversationFailed;
    };
    let origin = host.context();
    let outcome = verify_answer(host, options, agent, user, &answer, account, origin.clone());
    // A remote login hides locks, so a lock met only here gets the retry of
    // a wrong code. The lookup request carries no remote host, so an
    // enrolled account meets its host's lock at this point, while a name
    // without a token was rejected at the lookup already.
    let rejected = match outcome {
        Outcome::Accepted => false,
        Outcome::Rejected => true,
        Outcome::Locked if is_remote(host) => true,
        _ => rejected_at_lookup,
    };
    // try_first_pass: a rejected PAM_AUTHTOK gets one prompt, as pam_unix does.
    let retry = options.source == CodeSource::TryFirstPass && rejected;
    if !(retry && host.authtok().is_some_and(|token| *token == *answer)) {
        return outcome;
    }
    let prompt = options.prompt.clone().unwrap_or_else(|| account.prompt.clone());
    let prompt = if prompt.is_empty() {
        DEFAULT_PROMPT.to_owned()
    } else {
        prompt
    };
    let Some(second) = host.ask_secret(&prompt) else {
        return Outcome::ConversationFailed;
    };
    verify_answer(host, options, agent, user, &second, account, origin)
}

/// Ends a remote login that the lookup already refused, so that the remote
/// party cannot tell why. It gets the usual prompts, and its answers go to
/// the agent, which delays the refusal as it does any wrong code.
/// [`authenticate`] then turns a lock into PAM_AUTH_ERR. `nullok` is the
/// documented exception: it lets a user without token in without a prompt.
fn reject_remote(
    host: &mut dyn Host,
    options: &Options,
    agent: &mut Agent,
    user: &str,
    account: &Account,
    outcome: Outcome,
) -> Outcome {
    // The account's code lengths do not matter here: a remote login checks
    // responses against the shapes of every kind of account.
    match read_and_verify(host, options, agent, user, account, true) {
        // A lock may have ended while the user typed, so a right code is accepted.
        Outcome::Accepted => Outcome::Accepted,
        // Only the agent's delay mattered; the verdict was known already.
        _ => outcome,
    }
}

/// Returns whether the login comes from another host (PAM_RHOST is set).
fn is_remote(host: &dyn Host) -> bool {
    matches!(host.context(), Origin::Pam { rhost: Some(rhost), .. } if !rhost.is_empty())
}

/// Returns whether `answer` is sent to the agent as a code. A local login
/// checks it against the account's own code shapes. A remote login checks
/// it against the shapes of every kind of account. Then which responses
/// reach the agent, and so wait for its failure delay, does not tell the
/// remote party whether the account has a token, backup codes or a
/// Mobile-OTP token.
fn answer_looks_like_code(host: &dyn Host, answer: &str, account: &Account) -> bool {
    if is_remote(host) {
        looks_like_any_code(answer)
    } else {
        looks_like_code(answer, &account.code_lengths, account.hex_codes)
    }
}

/// The shapes of every kind of account's codes, as lengths and whether hex
/// digits are allowed: 6 or 8 digits (HOTP and TOTP codes, backup codes) or
/// 6 hex digits (Mobile-OTP).
const ANY_CODE_SHAPES: [(u8, bool); 3] = [(6, false), (8, false), (6, true)];

/// Returns whether `text` has the shape of a code of any account.
fn looks_like_any_code(text: &str) -> bool {
    ANY_CODE_SHAPES
        .iter()
        .any(|(length, hex)| looks_like_code(text, &[*length], *hex))
}

/// Returns whether `text`, spaces removed, has the length of one of the
/// account's codes and only characters its codes can have: digits, and the
/// letters a to f when `hex` is set (Mobile-OTP). Counts in place, so that no
/// copy of a password is left in freed memory.
fn looks_like_code(text: &str, lengths: &[u8], hex: bool) -> bool {
    let mut count = 0usize;
    for c in text.trim().chars().filter(|c| *c != ' ') {
        if !(c.is_ascii_digit() || (hex && c.is_ascii_hexdigit())) {
            return false;
        }
        count += 1;
    }
    lengths.iter().any(|length| count == usize::from(*length))
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
            Some(token) if answer_looks_like_code(host, &token, account) => Some(token),
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
        if !answer_looks_like_code(host, answer, account) {
            host.log(
                Priority::Notice,
                &format!("answer for {user} is not shaped like a code; rejected without asking the agent"),
            );
            return Outcome::Rejected;
        }
        return ask_agent(host, options, agent, user, answer, origin);
    }
    // The agent checks the end of the response against each code length of
    // the account, as one attempt. The module sends the longest end shaped
    // like a code, so the rest of the password does not reach the agent. A
    // remote login takes the shapes of every kind of account, as
    // `answer_looks_like_code` does.
    let shapes: Vec<(u8, bool)> = if is_remote(host) {
        ANY_CODE_SHAPES.to_vec()
    } else {
        account
            .code_lengths
            .iter()
            .map(|length| (*length, account.hex_codes))
            .collect()
    };
    let Some(tail) = code_shaped_tail(answer, &shapes) else {
        host.log(
            Priority::Notice,
            &format!("answer for {user} does not end in a code; rejected without asking the agent"),
        );
        return Outcome::Rejected;
    };
    if let Err(outcome) = reconnect_if_closed(host, agent, user) {
        return outcome;
    }
    let response = agent.verify_tail(user, SecretString::new(tail), origin);
    let (outcome, code_length) = read_verdict(host, options, user, response);
    if outcome != Outcome::Accepted {
        return outcome;
    }
    let Some(password) = password_before_code(answer, tail, code_length) else {
        host.log(
            Priority::Error,
            &format!("the agent accepted the code of {user} without a valid code length; failing closed"),
        );
        return Outcome::Unavailable;
    };
    if let Err(err) = host.set_authtok(password) {
        host.log(Priority::Error, &format!("cannot pass the password on: {err}"));
        return Outcome::PamFailed;
    }
    Outcome::Accepted
}

/// Returns the part of `answer` before the code that the agent accepted.
/// The code is the last `code_length` bytes of `tail`, the end of `answer`
/// that was sent to the agent. Only a faulty agent sends a length of 0 or
/// one longer than `tail`. Either would pass the code on with the
/// password, so both give `None`.
fn password_before_code<'a>(answer: &'a str, tail: &str, code_length: Option<u8>) -> Option<&'a str> {
    let length = usize::from(code_length?);
    if length == 0 || length > tail.len() {
        return None;
    }
    answer.get(..answer.len().checked_sub(length)?)
}

/// Returns the longest end of `answer` that fits one of `shapes`, or
/// `None`. A shape is a length and whether hex digits are allowed besides
/// decimal ones. The shorter ends the agent tries are then made of code
/// characters too.
fn code_shaped_tail<'a>(answer: &'a str, shapes: &[(u8, bool)]) -> Option<&'a str> {
    shapes
        .iter()
        .filter_map(|(length, hex)| {
            let tail = answer.get(answer.len().checked_sub(usize::from(*length))?..)?;
            let shaped = tail
                .chars()
                .all(|c| c.is_ascii_digit() || (*hex && c.is_ascii_hexdigit()));
            shaped.then_some(tail)
        })
        .max_by_key(|tail| tail.len())
}

fn ask_agent(
    host: &mut dyn Host,
    options: &Options,
    agent: &mut Agent,
    user: &str,
    code: &str,
    origin: Origin,
) -> Outcome {
    if let Err(outcome) = reconnect_if_closed(host, agent, user) {
        return outcome;
    }
    let response = agent.verify(user, SecretString::new(code), origin);
    read_verdict(host, options, user, response).0
}

/// Connects to the agent again when it closed the connection while the
/// user typed, so that the code is not lost to a restart of the agent or to
/// its idle limit. A failure fails closed, also with `ignore_unavailable`,
/// because the user has typed a code by then.
fn reconnect_if_closed(host: &mut dyn Host, agent: &mut Agent, user: &str) -> Result<(), Outcome> {
    match agent.reconnect_if_closed() {
        Ok(false) => Ok(()),
        Ok(true) => {
            host.log(
                Priority::Info,
                &format!("the agent closed the connection while waiting for the code of {user}; connected again"),
            );
            Ok(())
        }
        Err(err) => {
            host.log(
                Priority::Error,
                &format!("cannot connect to the agent again for the code of {user}: {err}; failing closed"),
            );
            Err(Outcome::Unavailable)
        }
    }
}

/// Maps the agent's response to a code, with the accepted code's length
/// when the agent gives one.
fn read_verdict(
    host: &mut dyn Host,
    options: &Options,
    user: &str,
    response: Result<Response, AgentError>,
) -> (Outcome, Option<u8>) {
    let (result, code_length) = match response {
        Ok(Response::Verdict { result, .. }) => (result, None),
        Ok(Response::TailVerdict { result, code_length }) => (result, code_length),
        // Once the code is sent, nothing may turn into PAM_IGNORE: the agent
        // was up for the lookup, so any failure now fails closed.
        Ok(Response::Error { kind, message }) => {
            let outcome = match refused(host, options, "verification", user, kind, &message) {
                Outcome::UnavailableIgnored => Outcome::Unavailable,
                outcome => outcome,
            };
            return (outcome, None);
        }
        Ok(_) => {
            host.log(
                Priority::Error,
                &format!("unexpected answer from the agent on the code of {user}; failing closed"),
            );
            return (Outcome::Unavailable, None);
        }
        // A failure after the code was sent, such as a rejection held back by
        // the failure delay for longer than `timeout`, fails closed too.
        Err(err) => {
            host.log(
                Priority::Error,
                &format!("no answer from the agent on the code of {user}: {err}; failing closed"),
            );
            return (Outcome::Unavailable, None);
        }
    };
    let outcome = match result {
        VerifyResult::Accepted => Outcome::Accepted,
        VerifyResult::Rejected => Outcome::Rejected,
        VerifyResult::Locked => Outcome::Locked,
        // The lookup found a token; losing it since then is no reason
        // to let the user in, nullok or not.
        VerifyResult::NoToken => Outcome::Rejected,
    };
    (outcome, code_length)
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
    // Another process where the agent should be points to tampering, not
    // to an outage: `ignore_unavailable` must not skip the code for it.
    if matches!(err, AgentError::Untrusted { .. }) {
        host.log(
            Priority::Error,
            &format!("refusing {user}: {err}; failing closed, also with ignore_unavailable"),
        );
        return Outcome::Unavailable;
    }
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
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn recognises_code_shapes() {
        assert!(looks_like_code("123456", &[6], false));
        assert!(looks_like_code(" 123 456 ", &[6, 8], false));
        assert!(looks_like_code("12345678", &[6, 8], false));
        assert!(!looks_like_code("hunter22", &[6], true));
        assert!(!looks_like_code("correct horse", &[6, 8], true));
        assert!(!looks_like_code("123456", &[], false));
        assert!(!looks_like_code("facade", &[6], false), "letters only for Mobile-OTP");
        assert!(!looks_like_code("deadbeef", &[6, 8], false));
        assert!(looks_like_code("fac4de", &[6], true));
        assert!(looks_like_code("FAC 4DE", &[6], true));
    }

    #[test]
    fn any_code_shape_covers_every_kind() {
        assert!(looks_like_any_code("123456"), "HOTP and TOTP");
        assert!(looks_like_any_code("1234 5678"), "8-digit codes and backup codes");
        assert!(looks_like_any_code("FAC4DE"), "Mobile-OTP");
        assert!(!looks_like_any_code("deadbeef"), "Mobile-OTP codes have 6 characters");
        assert!(!looks_like_any_code("1234567"));
        assert!(!looks_like_any_code("hunter22"));
    }

    /// A PAM stack whose user database spells `JO` as `jo`, and fails for
    /// `broken`.
    struct CaseFoldingHost;

    impl Host for CaseFoldingHost {
        fn user(&mut self) -> Result<String, String> {
            Ok("JO".into())
        }
        fn database_name(&self, name: &str) -> Result<Option<String>, String> {
            match name {
                "broken" => Err("LDAP server down".into()),
                "nobody-here" => Ok(None),
                other => Ok(Some(other.to_lowercase())),
            }
        }
        fn context(&self) -> Origin {
            Origin::Pam {
                service: "test".into(),
                rhost: None,
                tty: None,
                ruser: None,
            }
        }
        fn authtok(&self) -> Option<Zeroizing<String>> {
            None
        }
        fn set_authtok(&mut self, _value: &str) -> Result<(), String> {
            Ok(())
        }
        fn ask_secret(&mut self, _prompt: &str) -> Option<Zeroizing<String>> {
            None
        }
        fn tell(&mut self, _message: &str, _error: bool) {}
        fn log(&self, _priority: Priority, _message: &str) {}
    }

    fn account(enrolled: bool) -> Account {
        Account {
            enrolled,
            locked: false,
            prompt: String::new(),
            code_lengths: if enrolled { vec![6] } else { Vec::new() },
            disabled: false,
            hex_codes: false,
        }
    }

    /// Starts a fake agent on the far end of a socket pair. It replies to a
    /// lookup of `jo` with an enrolled account, and returns the names looked up.
    fn fake_agent() -> (Agent, std::thread::JoinHandle<Vec<String>>) {
        use freeauth_proto::frame::{encode, read_frame};
        use freeauth_proto::{Hello, HelloReply, Request, RequestFrame, ResponseFrame, PROTOCOL_VERSION};
        use std::io::Write;
        let (near, mut far) = std::os::unix::net::UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || {
            let _: Hello = read_frame(&mut far).unwrap();
            let welcome = HelloReply::Welcome {
                version: PROTOCOL_VERSION,
                agent: "test".into(),
            };
            far.write_all(&encode(&welcome).unwrap()).unwrap();
            let mut looked_up = Vec::new();
            while let Ok(frame) = read_frame::<_, RequestFrame>(&mut far) {
                let Request::Lookup { user } = frame.request else {
                    panic!("not a lookup");
                };
                let response = Response::Account {
                    enrolled: user == "jo",
                    locked: false,
                    prompt: String::new(),
                    code_lengths: vec![6],
                    disabled: false,
                    hex_codes: Some(false),
                };
                looked_up.push(user);
                far.write_all(&encode(&ResponseFrame { id: frame.id, response }).unwrap())
                    .unwrap();
            }
            looked_up
        });
        let client = freeauth_proto::Client::handshake(near, "test", std::time::Duration::from_secs(5)).unwrap();
        (Agent::from_client(client), thread)
    }

    #[test]
    fn database_spelling_finds_the_token() {
        let mut host = CaseFoldingHost;
        let (mut agent, thread) = fake_agent();
        let (name, found) = database_spelling(&mut host, &mut agent, "JO".into(), account(false)).unwrap();
        assert_eq!(name, "jo");
        assert!(found.enrolled);
        drop(agent);
        assert_eq!(thread.join().unwrap(), ["jo"]);
    }

    #[test]
    fn database_spelling_skips_needless_lookups() {
        let mut host = CaseFoldingHost;
        let (mut agent, thread) = fake_agent();
        let (name, _) = database_spelling(&mut host, &mut agent, "JO".into(), account(true)).unwrap();
        assert_eq!(name, "JO", "a typed name with a token is kept");
        let (name, _) = database_spelling(&mut host, &mut agent, "nobody-here".into(), account(false)).unwrap();
        assert_eq!(name, "nobody-here");
        let (name, _) = database_spelling(&mut host, &mut agent, "jo".into(), account(false)).unwrap();
        assert_eq!(name, "jo");
        let failed = database_spelling(&mut host, &mut agent, "broken".into(), account(false));
        assert_eq!(failed.err(), Some(Outcome::PamFailed), "a failed lookup fails closed");
        drop(agent);
        assert!(thread.join().unwrap().is_empty(), "the agent was not asked again");
    }

    #[test]
    fn code_shaped_tail_takes_longest_end() {
        let decimal = [(8, false), (6, false)];
        assert_eq!(code_shaped_tail("hunter12123456", &decimal), Some("12123456"));
        assert_eq!(code_shaped_tail("hunter.123456", &decimal), Some("123456"));
        assert_eq!(code_shaped_tail("123456", &decimal), Some("123456"));
        assert_eq!(code_shaped_tail("12345", &decimal), None);
        assert_eq!(code_shaped_tail("pw12 3456", &decimal), None);
        assert_eq!(code_shaped_tail("pw\u{e9}abc123", &[(6, true)]), Some("abc123"));
        assert_eq!(code_shaped_tail("pw\u{e9}abc123", &[(6, false)]), None);
        // Remote logins: hex digits count for 6 characters only.
        assert_eq!(code_shaped_tail("pwdeadbeef", &ANY_CODE_SHAPES), Some("adbeef"));
        assert_eq!(code_shaped_tail("pw1234abcdef", &ANY_CODE_SHAPES), Some("abcdef"));
        assert_eq!(code_shaped_tail("pw12345678", &ANY_CODE_SHAPES), Some("12345678"));
        // A cut inside a character is no end.
        assert_eq!(code_shaped_tail("\u{e9}12345", &[(6, false)]), None);
    }

    #[test]
    fn password_before_code_cuts_the_code() {
        assert_eq!(
            password_before_code("hunter2123456", "123456", Some(6)),
            Some("hunter2")
        );
        assert_eq!(password_before_code("123456", "123456", Some(6)), Some(""));
        assert_eq!(password_before_code("pw12345678", "12345678", Some(6)), Some("pw12"));
    }

    #[test]
    fn password_before_code_rejects_bad_lengths() {
        assert_eq!(password_before_code("hunter2123456", "123456", Some(0)), None);
        assert_eq!(password_before_code("hunter2123456", "123456", Some(7)), None);
        assert_eq!(password_before_code("hunter2123456", "123456", None), None);
        // A cut inside a character is no password.
        assert_eq!(password_before_code("\u{e9}12345", "\u{e9}12345", Some(6)), None);
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
