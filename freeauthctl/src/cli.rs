//! Command-line syntax of `freeauthctl`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Manage FreeAuth one-time-password tokens through the agent's admin socket.
///
/// Exit status: 0 success, 1 `verify` rejected the code, 2 error.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// Agent configuration file; the admin socket path is read from it.
    #[arg(long, short, global = true, default_value = "/etc/freeauth/agentd.toml")]
    pub config: PathBuf,
    /// Admin socket to use instead of the one in the configuration. With it,
    /// a configuration file that fails to load is only a warning, so a
    /// running agent can be managed while its file is being fixed.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print results as JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the state folder and the seed key if they are missing.
    Init {
        /// Run as root: create the state folder and the key for the agent's
        /// user USER instead of the calling user, without opening the
        /// database (the agent creates it at its first start).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Add a token to USER and print its otpauth:// URI and QR code once.
    Enroll(EnrollArgs),
    /// List users with tokens.
    List,
    /// Show one user's tokens, drift, failures and lock (never the seed).
    Show { user: String },
    /// Disable USER's tokens (all, or one with --token).
    Disable(TokenSelect),
    /// Enable USER's tokens (all, or one with --token).
    Enable(TokenSelect),
    /// Remove USER with all tokens and backup codes, or one token with --token.
    Remove(TokenSelect),
    /// Resynchronise a token from two consecutive codes.
    Resync {
        user: String,
        /// A code read off the token now.
        first: String,
        /// The code the token shows next, after FIRST.
        second: String,
        /// Token id (from `show`); default: any token of USER that matches.
        #[arg(long)]
        token: Option<u64>,
    },
    /// Replace all of USER's backup codes, used or not, with new ones,
    /// printed once.
    BackupCodes {
        user: String,
        /// How many codes to create (at most 100); 0 removes them all.
        #[arg(long, value_name = "N", default_value_t = 10)]
        count: u32,
    },
    /// Clear USER's failure count and lock, or with --source those of a
    /// source address.
    #[command(override_usage = "freeauthctl unlock USER\n       freeauthctl unlock --source ADDRESS")]
    Unlock {
        #[arg(required_unless_present = "source", conflicts_with = "source")]
        user: Option<String>,
        /// A source address (or key, as the agent logs it) instead of a user.
        #[arg(long, value_name = "ADDRESS")]
        source: Option<String>,
    },
    /// Check CODE for USER as a login would, consuming it when accepted.
    /// Give `-` to read the code from standard input.
    Verify { user: String, code: String },
    /// Import tokens from another OTP system; nothing is imported if any line is invalid.
    Import(ImportArgs),
    /// Show the agent's counters.
    Status,
    /// Replace the seed key: seal every seed and PIN under a new random key,
    /// then put it in place of the old one. Needs the running agent; run as
    /// root or as the agent's user.
    Rekey,
    /// Copy the database into the new file FILE (mode 0600), while the
    /// agent runs or not. Run as root or as the agent's user. The seed key
    /// is not in the copy.
    Backup { file: PathBuf },
    /// Check the configuration file and the key and state permissions.
    CheckConfig,
    /// Check the RADIUS bridge's configuration and list its clients (never
    /// their secrets). Clients are edited in that file.
    Clients {
        /// The bridge's configuration file.
        #[arg(long, value_name = "FILE", default_value = "/etc/freeauth/radius.toml")]
        radius_config: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct TokenSelect {
    pub user: String,
    /// Token id (from `show`); default: all tokens of USER.
    #[arg(long)]
    pub token: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenType {
    Totp,
    Hotp,
    Motp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HashName {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(clap::Args, Debug)]
pub struct EnrollArgs {
    pub user: String,
    /// Token type [default: totp].
    #[arg(long = "type", value_enum, conflicts_with = "uri")]
    pub kind: Option<TokenType>,
    /// HMAC hash of HOTP and TOTP tokens [default: sha1].
    #[arg(long, value_enum, conflicts_with = "uri")]
    pub algorithm: Option<HashName>,
    /// Code length of HOTP and TOTP tokens, 6 or 8 [default: 6].
    #[arg(long, conflicts_with = "uri")]
    pub digits: Option<u8>,
    /// TOTP time step in seconds [default: 30].
    #[arg(long, conflicts_with = "uri")]
    pub period: Option<u32>,
    /// First HOTP counter to accept [default: 0].
    #[arg(long, conflicts_with = "uri")]
    pub counter: Option<u64>,
    /// Mobile-OTP PIN (4 to 16 digits). Give `-` to read it from standard input.
    #[arg(long)]
    pub pin: Option<String>,
    /// Existing secret in base32 (as shown by authenticator apps); `-` reads
    /// it from standard input, keeping it out of the process list.
    #[arg(long, conflicts_with_all = ["secret_hex", "uri"])]
    pub secret: Option<String>,
    /// Existing secret in hexadecimal (hardware tokens, Mobile-OTP); `-`
    /// reads it from standard input.
    #[arg(long, conflicts_with_all = ["secret", "uri"])]
    pub secret_hex: Option<String>,
    /// Existing token as an otpauth:// URI, which sets type, hash, digits,
    /// period and counter; `-` reads it from standard input.
    #[arg(long, conflicts_with_all = ["secret", "secret_hex"])]
    pub uri: Option<String>,
    /// Free text shown by list and show (device name, issuer).
    #[arg(long)]
    pub label: Option<String>,
    /// Also create N one-use 8-digit backup codes (replacing earlier ones).
    #[arg(long, default_value_t = 0)]
    pub backup_codes: u32,
    /// Do not print the QR code.
    #[arg(long)]
    pub no_qr: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// A ~/.google_authenticator file of one user (google-authenticator-libpam).
    GoogleAuthenticator,
    /// An oath-toolkit users file (pam_oath's users.oath).
    Oath,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// For google-authenticator: the user the file belongs to, then the file.
    /// For oath: the file only.
    #[arg(required = true, num_args = 1..=2)]
    pub operands: Vec<String>,
}
