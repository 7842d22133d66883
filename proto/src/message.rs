//! Messages of protocol version 1.
//!
//! Every enum is internally tagged by a `type` field and every variant has
//! named fields, so a message reads the same in a log, a test and a packet
//! capture. Secrets travel as [`SecretString`], which never prints itself.

use serde::{Deserialize, Serialize};

use crate::SecretString;

/// Maximum length of a user name the agent accepts, in bytes (the RADIUS
/// User-Name limit). A request with a longer name is rejected as invalid.
pub const MAX_USER_LEN: usize = 253;

/// Maximum number of users in one page of [`Request::List`]. A summary
/// takes about 110 bytes of JSON besides the name, and a 253-byte name at
/// most 506 once escaped, so a page stays under 930 KB, inside the 1 MiB
/// frame limit.
pub const MAX_LIST_PAGE: u32 = 1_500;

/// First frame of every connection, sent by the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u32,
    /// Program name of the client, for logs (`pam_freeauth`, `freeauthctl`).
    pub client: String,
}

/// The agent's reply to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HelloReply {
    /// The agent speaks `version`; requests may follow.
    Welcome { version: u32, agent: String },
    /// The agent does not speak the client's version and closes the connection.
    Unsupported { supported: u32 },
}

/// A request with the id the response will carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

/// A response to the request with the same id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: Response,
}

/// Everything a client may ask. The first three are served on the agent
/// socket, all others on the admin socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Whether `user` has an active token, is locked, and what to prompt.
    /// Only local callers entitled to know (root, the user itself) may ask.
    Lookup { user: String },
    /// Checks a code and consumes it when it is accepted.
    Verify {
        user: String,
        code: SecretString,
        origin: Origin,
    },
    /// Checks the end of `text` as a code, for a password and a code typed
    /// in one field: for each enabled token, the last characters of its
    /// code length, and for backup codes the last 8. One attempt counts one
    /// failure at most, whatever the lengths. The response is a
    /// [`Response::TailVerdict`].
    VerifyTail {
        user: String,
        text: SecretString,
        origin: Origin,
    },
    /// Adds a token to `user`, and `backup_codes` fresh backup codes.
    Enroll {
        user: String,
        token: NewToken,
        backup_codes: u32,
    },
    /// Adds all entries in one transaction, or none of them.
    Import { entries: Vec<ImportEntry> },
    /// Lists users with tokens, in name order (bytewise).
    List {
        /// Only users whose names sort after this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many users, and at most [`MAX_LIST_PAGE`]. Without
        /// it, every user, in one reply that may exceed the frame limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Shows one user's tokens, failures and lock.
    Show { user: String },
    /// Enables or disables one token of `user`, or all of them.
    SetEnabled {
        user: String,
        token: Option<u64>,
        enabled: bool,
    },
    /// Removes one token of `user`, or the whole account with its backup codes.
    Remove { user: String, token: Option<u64> },
    /// Resynchronises a token from two consecutive codes.
    Resync {
        user: String,
        token: Option<u64>,
        first: SecretString,
        second: SecretString,
    },
    /// Replaces all backup codes of `user`, used or not, with `count` new
    /// ones. The response is [`Response::BackupCodes`] with the new codes;
    /// `count` 0 removes them.
    NewBackupCodes { user: String, count: u32 },
    /// Clears the failure counter and lock of `user`.
    Unlock { user: String },
    /// Clears the failure count and lock of a source: a key as the agent
    /// logs it (`pam:ADDRESS`, `radius:CLIENT:ADDRESS`), or an address,
    /// which matches it under every front end.
    UnlockSource { source: String },
    /// Reports counters and settings of the running agent.
    Status {},
    /// Seals every seed and PIN again under the key in the seed key's
    /// `.new` file, which `freeauthctl rekey` has written. The response is
    /// [`Response::Rekeyed`] once the change is on disk; the caller then
    /// moves the new key in place of the old.
    Rekey {},
}

/// The front end and context of a verification, logged with its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Origin {
    /// A PAM stack on this host.
    Pam {
        service: String,
        rhost: Option<String>,
        tty: Option<String>,
        ruser: Option<String>,
    },
    /// The RADIUS bridge, on behalf of a remote client.
    Radius {
        client: String,
        nas_identifier: Option<String>,
        nas_ip: Option<String>,
        calling_station: Option<String>,
        /// The caller delays a rejection itself: the agent then replies
        /// at once with [`Response::DelayedVerdict`]. The RADIUS bridge
        /// sets it, so that rejections waiting out their failure delay do
        /// not take its places among the agent's requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller_delays: Option<bool>,
    },
    /// `freeauthctl verify`.
    Admin {},
}

/// OTP algorithm family of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Hotp,
    Totp,
    Motp,
}

/// HMAC hash of an HOTP or TOTP token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// A token to store. The seed travels in hex; the agent encrypts it at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub kind: TokenKind,
    pub algorithm: HashAlgorithm,
    pub digits: u8,
    /// Time step in seconds (TOTP; Mobile-OTP always uses 10).
    pub period: u32,
    /// Next HOTP counter to accept.
    pub counter: u64,
    /// Last time step already used (TOTP and Mobile-OTP), kept by imports.
    pub last_step: Option<u64>,
    pub secret_hex: SecretString,
    /// Mobile-OTP PIN.
    pub pin: Option<SecretString>,
    /// Free text shown by `list` and `show`, such as the issuer or device.
    pub label: Option<String>,
}

/// One user's token in an import, with backup codes taken over from the old system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportEntry {
    pub user: String,
    pub token: NewToken,
    pub backup_codes: Vec<SecretString>,
}

/// Outcome of [`Request::Verify`]. `Locked` and `NoToken` are sent only to
/// local callers entitled to know; everyone else gets `Rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyResult {
    Accepted,
    Rejected,
    Locked,
    NoToken,
}

/// Every answer the agent gives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Account {
        enrolled: bool,
        locked: bool,
        prompt: String,
        /// Lengths of the codes the account's enabled tokens and backup
        /// codes take, so that a caller can tell what may be a code: the
        /// tokens' lengths longest first, then the backup code length if
        /// no token has it.
        code_lengths: Vec<u8>,
        /// The account exists but an administrator disabled all its
        /// tokens; `nullok` must not let such a user in.
        #[serde(default)]
        disabled: bool,
        /// Whether a code may hold the letters a to f (an enabled
        /// Mobile-OTP token), or only digits. Absent from agents before
        /// this field, which callers read as "letters allowed".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hex_codes: Option<bool>,
    },
    /// A verdict for a caller that asked to hold rejections back itself:
    /// it must not pass the result on before `delay_ms` milliseconds from
    /// when the agent read the request.
    DelayedVerdict {
        result: VerifyResult,
        delay_ms: u64,
    },
    Verdict {
        result: VerifyResult,
        /// The agent's reason, for callers on the admin socket
        /// (`freeauthctl verify`). Other callers get `None`, which is left
        /// out of the JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The verdict on a [`Request::VerifyTail`]. `code_length` is the
    /// length of the accepted end, so the caller can tell the password
    /// from the code. It is absent unless the result is accepted.
    TailVerdict {
        result: VerifyResult,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code_length: Option<u8>,
    },
    Enrolled {
        user: String,
        token: u64,
        backup_codes: Vec<SecretString>,
    },
    Imported {
        users: u32,
        tokens: u32,
    },
    /// Confirmation that the database is sealed under the new key, with
    /// the number of tokens sealed again.
    Rekeyed {
        tokens: u64,
    },
    /// The new backup codes of `user`, shown to the administrator once.
    BackupCodes {
        user: String,
        backup_codes: Vec<SecretString>,
    },
    Users {
        users: Vec<UserSummary>,
        /// The name to pass as `after` for the next page, when more users
        /// follow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    User {
        user: UserDetail,
    },
    /// An admin change went through; `changed` counts the rows it touched.
    Done {
        changed: u64,
    },
    Resynced {
        token: u64,
        drift_steps: i64,
        /// For an HOTP token, the counter value expected next.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_counter: Option<u64>,
    },
    Status {
        status: AgentStatus,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Why a request failed, split by who is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame was not a valid message.
    Malformed,
    /// The caller may not make this request.
    Forbidden,
    /// The user or token does not exist.
    NotFound,
    /// A value in the request is invalid.
    Invalid,
    /// The request conflicts with existing state.
    Conflict,
    /// The caller sent too many requests; retry later.
    RateLimited,
    /// The agent failed internally (database, disk); details are in its log.
    Internal,
}

/// One line of `freeauthctl list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSummary {
    pub user: String,
    pub tokens: u32,
    pub enabled_tokens: u32,
    pub failures: u32,
    pub locked: bool,
    pub backup_codes_left: u32,
}

/// Everything `freeauthctl show` prints. Never a seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDetail {
    pub user: String,
    pub tokens: Vec<TokenInfo>,
    pub failures: u32,
    /// Unix time at which the lock expires, if the user is locked now.
    pub locked_until: Option<u64>,
    pub backup_codes_left: u32,
}

/// A token's settings and state, without its seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    pub id: u64,
    pub kind: TokenKind,
    pub algorithm: HashAlgorithm,
    pub digits: u8,
    pub period: u32,
    pub enabled: bool,
    /// Next HOTP counter.
    pub counter: u64,
    /// Last accepted time step (TOTP, Mobile-OTP).
    pub last_step: Option<u64>,
    /// Learned clock offset of the token, in steps and in seconds.
    pub drift_steps: i64,
    pub drift_seconds: i64,
    pub label: Option<String>,
    /// Unix times of enrolment and of the last accepted code.
    pub created: u64,
    pub last_used: Option<u64>,
}

/// Counters of the running agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub version: String,
    pub uptime_seconds: u64,
    pub users: u64,
    pub tokens: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub open_connections: u64,
    pub database: String,
    /// Sources locked after too many failures, over all accounts.
    #[serde(default)]
    pub locked_sources: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode_request(text: &str) -> RequestFrame {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn decodes_literal_verify_request() {
        let frame = decode_request(
            r#"{"id":7,"request":{"type":"verify","user":"alice","code":"123456",
                "origin":{"type":"pam","service":"sshd","rhost":"10.0.0.1","tty":null,"ruser":null}}}"#,
        );
        assert_eq!(frame.id, 7);
        let Request::Verify { user, code, origin } = frame.request else {
            unreachable!("wrong variant")
        };
        assert_eq!(user, "alice");
        assert_eq!(code.expose(), "123456");
        assert!(matches!(origin, Origin::Pam { service, .. } if service == "sshd"));
    }

    #[test]
    fn decodes_literal_hello_and_lookup() {
        let hello: Hello = serde_json::from_str(r#"{"version":1,"client":"pam_freeauth"}"#).unwrap();
        assert_eq!(hello.version, 1);
        let frame = decode_request(r#"{"id":1,"request":{"type":"lookup","user":"bob"}}"#);
        assert_eq!(frame.request, Request::Lookup { user: "bob".into() });
    }

    #[test]
    fn rejects_unknown_fields_and_types() {
        let extra = r#"{"id":1,"request":{"type":"lookup","user":"bob","admin":true}}"#;
        assert!(serde_json::from_str::<RequestFrame>(extra).is_err());
        let unknown = r#"{"id":1,"request":{"type":"drop_tables"}}"#;
        assert!(serde_json::from_str::<RequestFrame>(unknown).is_err());
    }

    #[test]
    fn decodes_literal_responses() {
        let text = r#"{"id":3,"response":{"type":"verdict","result":"accepted"}}"#;
        let frame: ResponseFrame = serde_json::from_str(text).unwrap();
        assert_eq!(
            frame.response,
            Response::Verdict {
                result: VerifyResult::Accepted,
                reason: None
            }
        );
        let text = r#"{"id":4,"response":{"type":"error","kind":"forbidden","message":"no"}}"#;
        let frame: ResponseFrame = serde_json::from_str(text).unwrap();
        assert!(matches!(
            frame.response,
            Response::Error {
                kind: ErrorKind::Forbidden,
                ..
            }
        ));
    }

    fn secret_token() -> NewToken {
        NewToken {
            kind: TokenKind::Motp,
            algorithm: HashAlgorithm::Sha1,
            digits: 6,
            period: 10,
            counter: 0,
            last_step: None,
            secret_hex: "5ec4e7de5ec4e7de".into(),
            pin: Some("9731".into()),
            label: None,
        }
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let requests = vec![
            Request::Verify {
                user: "u".into(),
                code: "918273".into(),
                origin: Origin::Admin {},
            },
            Request::Enroll {
                user: "u".into(),
                token: secret_token(),
                backup_codes: 0,
            },
            Request::Import {
                entries: vec![ImportEntry {
                    user: "u".into(),
                    token: secret_token(),
                    backup_codes: vec!["55501234".into()],
                }],
            },
            Request::Resync {
                user: "u".into(),
                token: None,
                first: "918273".into(),
                second: "645546".into(),
            },
            Request::VerifyTail {
                user: "u".into(),
                text: "hunter2%918273".into(),
                origin: Origin::Admin {},
            },
        ];
        let responses = vec![Response::Enrolled {
            user: "u".into(),
            token: 1,
            backup_codes: vec!["55501234".into()],
        }];
        let printed = format!("{requests:?} {responses:?}");
        for secret in ["918273", "645546", "5ec4e7de", "9731", "55501234", "hunter2"] {
            assert!(!printed.contains(secret), "{secret} appears in {printed}");
        }
    }
}
