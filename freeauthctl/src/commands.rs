//! One function per command: build the request, send it, print the answer.

use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use freeauth_agentd::config::Config;
use freeauth_otp::{Algorithm, Kind, Secret};
use freeauth_proto::{
    Client, ErrorKind, HashAlgorithm, NewToken, Origin, Request, Response, SecretString, TokenKind, VerifyResult,
};
use freeauthctl::otpauth::{format_uri, parse_uri, render_qr, TokenDescription};
use zeroize::Zeroizing;

use crate::cli::{Args, Command, EnrollArgs, HashName, TokenSelect, TokenType};
use crate::output;

/// Time to wait for each answer; a verification may be delayed by the
/// agent's brute-force policy for several seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Users asked for in each `List` request. Each page is one job of the
/// agent's engine, so verifications go on between pages.
const LIST_PAGE: u32 = 1_000;

/// A failed command, printed as `freeauthctl: MESSAGE`; exit code 2.
pub type CommandError = String;

pub fn run(args: Args) -> Result<ExitCode, CommandError> {
    // The bridge's file is read on its own: the agent's may not even exist.
    if let Command::Clients { radius_config } = &args.command {
        return crate::clients_command::run(radius_config, args.json);
    }
    let strict = matches!(
        args.command,
        Command::Init { .. } | Command::CheckConfig | Command::Backup { .. } | Command::Rekey
    );
    let config = load_config(&args, strict)?;
    let json = args.json;
    match args.command {
        Command::Init { user: None } => init(&config, json),
        Command::Init { user: Some(user) } => init_for(&config, &user, json),
        Command::CheckConfig => check_config(&config, json),
        Command::Enroll(enroll_args) => enroll(&config, enroll_args, json),
        Command::List => list(&config, json),
        Command::Show { user } => simple(&config, Request::Show { user }, json),
        Command::Disable(select) => set_enabled(&config, select, false, json),
        Command::Enable(select) => set_enabled(&config, select, true, json),
        Command::Remove(TokenSelect { user, token }) => simple(&config, Request::Remove { user, token }, json),
        Command::Resync {
            user,
            first,
            second,
            token,
        } => {
            check_code_length(&first)?;
            check_code_length(&second)?;
            let request = Request::Resync {
                user,
                token,
                first: SecretString::new(first),
                second: SecretString::new(second),
            };
            simple(&config, request, json)
        }
        Command::BackupCodes { user, count } => backup_codes(&config, user, count, json),
        Command::Unlock { user: Some(user), .. } => simple(&config, Request::Unlock { user }, json),
        Command::Unlock { user: None, source } => unlock_source(&config, source, json),
        Command::Verify { user, code } => verify(&config, user, &code, json),
        Command::Import(import_args) => crate::import_command::run(&config, import_args, json),
        Command::Status => simple(&config, Request::Status {}, json),
        Command::Rekey => crate::rekey_command::run(&config, json),
        Command::Backup { file } => backup(&config, &file, json),
        Command::Clients { radius_config } => crate::clients_command::run(&radius_config, json),
    }
}

/// Loads the configuration; with `--socket` (and not `strict`), a file that
/// fails to load gives a warning and default settings instead.
fn load_config(args: &Args, strict: bool) -> Result<Config, CommandError> {
    let loaded = Config::load(&args.config);
    let mut config = match (loaded, &args.socket) {
        (Ok(config), _) => config,
        (Err(err), Some(socket)) if !strict => {
            eprintln!("freeauthctl: warning: {err}");
            eprintln!("freeauthctl: using --socket {} with default settings", socket.display());
            Config::parse(&args.config, "").map_err(|err| err.to_string())?
        }
        // `init`, `check-config` and `backup` need the file's own paths,
        // so --socket cannot work around the error for them.
        (Err(err), _) if strict => return Err(with_config_hint(&err)),
        (Err(err), _) => {
            return Err(format!(
                "{}\n  To manage a running agent meanwhile, add --socket PATH (its admin socket).",
                with_config_hint(&err)
            ));
        }
    };
    if let Some(socket) = &args.socket {
        config.paths.admin_socket = socket.clone();
    }
    Ok(config)
}

/// Formats a configuration error. A missing file gets a hint about
/// `--config`, the usual fix when the agent's file is elsewhere.
fn with_config_hint(err: &freeauth_agentd::config::LoadError) -> String {
    match err {
        freeauth_agentd::config::LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("{err}\n  Pass --config FILE to name the agent's configuration file.")
        }
        _ => err.to_string(),
    }
}

/// Connects to the admin socket named in `config`.
pub fn connect(config: &Config) -> Result<Client, CommandError> {
    let path = &config.paths.admin_socket;
    let unreachable = |err: &dyn std::fmt::Display| {
        let question = if nix::unistd::geteuid().is_root() {
            ""
        } else {
            ", and are you root or in its admin group"
        };
        format!(
            "{err}\n  Is freeauth-agentd running with {}{question}?",
            config.source.display()
        )
    };
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|err| unreachable(&format!("cannot connect to the agent at {}: {err}", path.display())))?;
    check_peer(config, &stream)?;
    Client::handshake(stream, "freeauthctl", ANSWER_TIMEOUT).map_err(|err| unreachable(&err))
}

/// Refuses to send secrets to a process that is not the agent: the peer
/// must run as the owner of the state folder. When the folder's owner
/// cannot be read (the folder is missing, or the configuration could not
/// be loaded and `--socket` names the socket), only a peer that runs as
/// root or as this user is trusted.
fn check_peer(config: &Config, stream: &std::os::unix::net::UnixStream) -> Result<(), CommandError> {
    use std::os::unix::fs::MetadataExt;
    let peer = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|err| format!("cannot read the credentials of the admin socket's peer: {err}"))?;
    let meta = match std::fs::metadata(&config.paths.state_dir) {
        Ok(meta) => meta,
        Err(_) if peer.uid() == 0 || peer.uid() == nix::unistd::geteuid().as_raw() => return Ok(()),
        Err(err) => {
            return Err(format!(
                "the process behind {} runs as uid {}, and the owner of the agent's state folder {} cannot be \
                 read ({err}) to check it; refusing to talk to it. Pass --config with the agent's configuration",
                config.paths.admin_socket.display(),
                peer.uid(),
                config.paths.state_dir.display()
            ))
        }
    };
    let expected = meta.uid();
    if peer.uid() != expected {
        return Err(format!(
            "the process behind {} runs as uid {}, but the agent's state folder {} belongs to uid {expected}; refusing to talk to it",
            config.paths.admin_socket.display(),
            peer.uid(),
            config.paths.state_dir.display()
        ));
    }
    Ok(())
}

/// Sends `request` and returns the response, or the agent's error message.
pub fn call(config: &Config, request: Request) -> Result<Response, CommandError> {
    call_on(&mut connect(config)?, request)
}

/// Sends `request` on an open connection and returns an error response
/// as an error.
fn call_on(client: &mut Client, request: Request) -> Result<Response, CommandError> {
    let response = client.call(request).map_err(|err| err.to_string())?;
    match response {
        Response::Error { kind, message } => Err(rejection_message(kind, &message)),
        other => Ok(other),
    }
}

/// Formats the agent's error response to a request. This program sends
/// only requests that the agent of its own version reads. So a
/// malformed-request error most likely comes from an older agent that
/// still runs after an upgrade and does not know a newer request, such as
/// `rekey`.
fn rejection_message(kind: ErrorKind, message: &str) -> CommandError {
    let hint = match kind {
        ErrorKind::Malformed => {
            "\nan agent older than this freeauthctl does not know every request; if FreeAuth was upgraded, restart the agent (systemctl restart freeauth-agentd) and try again"
        }
        _ => "",
    };
    format!(
        "the agent refused the request ({}): {message}{hint}",
        output::error_kind(kind)
    )
}

fn simple(config: &Config, request: Request, json: bool) -> Result<ExitCode, CommandError> {
    let response = call(config, request)?;
    output::print_response(&response, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Lifts the lock of the sources that `source` names, and prints a note when
/// it names none.
fn unlock_source(config: &Config, source: Option<String>, json: bool) -> Result<ExitCode, CommandError> {
    let source = source.unwrap_or_default();
    if source.trim().is_empty() {
        return Err("usage: freeauthctl unlock USER, or freeauthctl unlock --source ADDRESS".into());
    }
    let response = call(config, Request::UnlockSource { source: source.clone() })?;
    match response {
        Response::Done { changed: 0 } if !json => {
            say!(
                "no counted source matches {source:?}; the agent forgets sources whose count has decayed, \
                 and the log names a locked one in its \"source locked\" lines"
            );
        }
        other => output::print_response(&other, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists every user, one page of [`LIST_PAGE`] at a time. Text output
/// prints each page as it comes; JSON output is one document at the end.
fn list(config: &Config, json: bool) -> Result<ExitCode, CommandError> {
    let mut client = connect(config)?;
    let mut after = None;
    let mut collected = Vec::new();
    let mut table = output::UserTable::default();
    loop {
        let request = Request::List {
            after: after.take(),
            limit: Some(LIST_PAGE),
        };
        let (users, next) = match call_on(&mut client, request)? {
            Response::Users { users, next } => (users, next),
            other => return Err(format!("unexpected answer to a list request: {other:?}")),
        };
        if json {
            collected.extend(users);
        } else {
            table.print(&users);
        }
        match next {
            Some(name) => after = Some(name),
            None => break,
        }
    }
    if json {
        let users = Response::Users {
            users: collected,
            next: None,
        };
        output::print_response(&users, true)?;
    } else {
        table.finish();
    }
    Ok(ExitCode::SUCCESS)
}

fn set_enabled(config: &Config, select: TokenSelect, enabled: bool, json: bool) -> Result<ExitCode, CommandError> {
    let request = Request::SetEnabled {
        user: select.user,
        token: select.token,
        enabled,
    };
    simple(config, request, json)
}

fn init(config: &Config, json: bool) -> Result<ExitCode, CommandError> {
    let key_existed = config.paths.seed_key.exists();
    let database = config.paths.database();
    let database_existed = database.exists();
    let report = |agent_running: bool| -> Result<ExitCode, CommandError> {
        if json {
            output::print_json(&serde_json::json!({
                "type": "initialized",
                "state_dir": config.paths.state_dir,
                "seed_key": config.paths.seed_key,
                "seed_key_created": !key_existed,
                "database": database,
                "database_created": !database_existed,
                "agent_running": agent_running,
            }))?;
        }
        Ok(ExitCode::SUCCESS)
    };
    if let Err(err) = freeauth_agentd::daemon::open_state(config) {
        // A running agent locks the folder, so its key and database are in
        // place. Init succeeds, so that provisioning tools can repeat it.
        if key_existed && database_existed && freeauth_agentd::store::in_use_by_agent(&config.paths.state_dir) {
            if !json {
                say!(
                    "the agent is running on state folder {}; kept its seed key {} and database {}",
                    config.paths.state_dir.display(),
                    config.paths.seed_key.display(),
                    database.display()
                );
            }
            return report(true);
        }
        return Err(err.to_string());
    }
    if json {
        return report(false);
    }
    if key_existed {
        say!("seed key {} already exists; kept it", config.paths.seed_key.display());
    } else {
        say!("created seed key {} (mode 0600)", config.paths.seed_key.display());
    }
    if database_existed {
        say!("database {} already exists; kept it", database.display());
    } else {
        say!("created database {}", database.display());
    }
    say!("state folder {} is ready", config.paths.state_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Prepares the state folder and seed key for the agent's user `user`, as
/// root does at package installation. The database is left to the agent,
/// so that every file in the state folder is created by its owner.
fn init_for(config: &Config, user: &str, json: bool) -> Result<ExitCode, CommandError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        return Err("init --user changes file owners and needs root".to_owned());
    }
    let account = nix::unistd::User::from_name(user)
        .map_err(|err| format!("cannot look up user {user}: {err}"))?
        .ok_or_else(|| format!("user {user} does not exist"))?;
    let state_dir = &config.paths.state_dir;
    let owned_by_user = |path: &std::path::Path| -> Result<(), CommandError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).map_err(|err| format!("cannot check {}: {err}", path.display()))?;
        if meta.uid() != account.uid.as_raw() {
            return Err(format!(
                "{} exists but belongs to uid {}, not to {user}; run `chown {user}: {}` if it is the agent's, then run init again",
                path.display(),
                meta.uid(),
                path.display()
            ));
        }
        Ok(())
    };
    let state_dir_existed = state_dir.exists();
    if state_dir_existed {
        owned_by_user(state_dir)?;
        if !json {
            say!("state folder {} already exists; kept it", state_dir.display());
        }
    } else {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(state_dir)
            .map_err(|err| format!("cannot create state folder {}: {err}", state_dir.display()))?;
        // The mode given to mkdir is reduced by the umask; set it exactly.
        // Mode and owner are set on the open folder, not through its path,
        // which a user who can write the parent folder could swap for a
        // link to something else.
        use std::os::unix::fs::OpenOptionsExt;
        let folder = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECTORY.bits() | nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(state_dir)
            .map_err(|err| format!("cannot open the new state folder {}: {err}", state_dir.display()))?;
        folder
            .set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(|err| format!("cannot set the mode of {}: {err}", state_dir.display()))?;
        std::os::unix::fs::fchown(&folder, Some(account.uid.as_raw()), Some(account.gid.as_raw()))
            .map_err(|err| format!("cannot give {} to {user}: {err}", state_dir.display()))?;
        if !json {
            say!("created state folder {} (mode 0700, owner {user})", state_dir.display());
        }
    }

    let key = &config.paths.seed_key;
    let key_existed = key.exists();
    if key_existed {
        owned_by_user(key)?;
        if !json {
            say!("seed key {} already exists; kept it", key.display());
        }
    } else if state_dir.join(freeauth_agentd::store::DB_FILE).exists() {
        return Err(format!(
            "seed key {} is missing but {} holds a database; restore the key from a backup",
            key.display(),
            state_dir.display()
        ));
    } else {
        let key_owner = Some((account.uid.as_raw(), account.gid.as_raw()));
        freeauth_agentd::keys::SeedCipher::create_owned(key, key_owner).map_err(|err| err.to_string())?;
        if !json {
            say!("created seed key {} (mode 0600, owner {user})", key.display());
        }
    }

    let problems = freeauth_agentd::check::installation_problems(config);
    if !problems.is_empty() {
        return Err(format!(
            "{} cannot be used yet:\n  {}",
            config.source.display(),
            problems.join("\n  ")
        ));
    }
    if json {
        output::print_json(&serde_json::json!({
            "type": "initialized",
            "state_dir": state_dir,
            "state_dir_created": !state_dir_existed,
            "seed_key": key,
            "seed_key_created": !key_existed,
            "owner": user,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(config: &Config, json: bool) -> Result<ExitCode, CommandError> {
    let problems = freeauth_agentd::check::installation_problems(config);
    if problems.is_empty() {
        let note = freeauth_agentd::check::owner_note(config);
        if json {
            output::print_json(&serde_json::json!({
                "type": "valid_config",
                "file": config.source,
                "note": note,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        say!("{}: valid", config.source.display());
        if let Some(note) = note {
            say!("{note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    Err(format!(
        "{} cannot be used:\n  {}",
        config.source.display(),
        problems.join("\n  ")
    ))
}

/// Copies the database into `file` through the store, which reads it
/// without the agent and without changing anything in the state folder.
fn backup(config: &Config, file: &Path, json: bool) -> Result<ExitCode, CommandError> {
    // Held until the key that opens the copy is named.
    let _key_lock = freeauth_agentd::rekey::lock_key_for_backup(config)?;
    let summary = freeauth_agentd::store::backup(&config.paths.state_dir, file).map_err(|err| err.to_string())?;
    if json {
        let copy_key = key_of_copy(config, file);
        if let CopyKey::Neither = copy_key {
            eprintln!(
                "freeauthctl: warning: neither {} nor its .new file opens the copy (a rekey may have run meanwhile); make a new copy",
                config.paths.seed_key.display()
            );
        }
        let key = match copy_key {
            CopyKey::Fits(key) => Some(key),
            CopyKey::Neither | CopyKey::Unknown => None,
        };
        let value = serde_json::json!({
            "file": file,
            "users": summary.users,
            "tokens": summary.tokens,
            "bytes": summary.bytes,
            "key": key,
        });
        output::print_json(&value)?;
    } else {
        say!(
            "copied {} users and {} tokens ({} bytes) to {} (mode 0600)",
            summary.users,
            summary.tokens,
            summary.bytes,
            file.display()
        );
        match key_of_copy(config, file) {
            CopyKey::Fits(key) => say!(
                "The copy opens with the seed key {}, which is not in it; keep a copy of that key apart from this file.",
                key.display()
            ),
            CopyKey::Neither => say!(
                "warning: neither {} nor its .new file opens the copy (a rekey may have run meanwhile); \
                 make a new copy, and keep a copy of the key apart from it",
                config.paths.seed_key.display()
            ),
            CopyKey::Unknown => say!(
                "The seed key {} is not in the copy; keep a copy of it apart from this file.",
                config.paths.seed_key.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Seed key file that opens a database copy, as far as this user can tell.
enum CopyKey {
    Fits(std::path::PathBuf),
    /// Both key files were read, and neither opens the copy.
    Neither,
    /// The copy or the keys could not be read, for example by a user who
    /// may not read the key.
    Unknown,
}

/// Finds the key file that opens `copy`: the seed key, or during a rekey
/// the `.new` file next to it.
fn key_of_copy(config: &Config, copy: &Path) -> CopyKey {
    use std::os::unix::fs::MetadataExt;
    let Ok(Some(check)) = freeauth_agentd::store::read_copy_key_check(copy) else {
        return CopyKey::Unknown;
    };
    let Ok(owner) = std::fs::metadata(&config.paths.state_dir).map(|meta| meta.uid()) else {
        return CopyKey::Unknown;
    };
    let key = &config.paths.seed_key;
    let mut unreadable = false;
    for path in [key.clone(), freeauth_agentd::keys::new_key_path(key)] {
        match freeauth_agentd::keys::SeedCipher::load_owned_by(&path, owner) {
            Ok(cipher) if cipher.fits(&check) => return CopyKey::Fits(path),
            Ok(_) => {}
            Err(_) if !path.exists() => {}
            Err(_) => unreadable = true,
        }
    }
    if unreadable {
        CopyKey::Unknown
    } else {
        CopyKey::Neither
    }
}

fn verify(config: &Config, user: String, code: &str, json: bool) -> Result<ExitCode, CommandError> {
    let code_arg_is_stdin = code == "-";
    let code = if code_arg_is_stdin {
        read_stdin_line("code")?
    } else {
        Zeroizing::new(code.to_owned())
    };
    // An empty code, as from an unset variable or an empty pipe, is no
    // login attempt, and sending it would count a failure against the user.
    if code.trim().is_empty() {
        return Err(if code_arg_is_stdin {
            "no code on standard input; nothing was sent to the agent".to_owned()
        } else {
            "the code is empty; nothing was sent to the agent".to_owned()
        });
    }
    check_code_length(&code)?;
    let request = Request::Verify {
        user,
        code: SecretString::new(code.as_str()),
        origin: Origin::Admin {},
    };
    let response = call(config, request)?;
    let status = match response {
        Response::Verdict {
            result: VerifyResult::Accepted,
            ..
        } => 0u8,
        _ => 1,
    };
    crate::VERDICT_STATUS.store(i32::from(status), std::sync::atomic::Ordering::Relaxed);
    output::print_response(&response, json)?;
    Ok(ExitCode::from(status))
}

/// Reads one line from standard input, for values that must not appear in
/// the process list.
fn read_stdin_line(what: &str) -> Result<Zeroizing<String>, CommandError> {
    let failed = |err: std::io::Error| format!("cannot read the {what} from standard input: {err}");
    if std::io::stdin().is_terminal() {
        let typed = rpassword::prompt_password(format!("{what}: ")).map_err(failed)?;
        return Ok(Zeroizing::new(typed.trim().to_owned()));
    }
    // Reading two bytes more than the limit (room for a CR LF ending) tells a
    // line at the limit from a longer one. A longer line is an error, because
    // a URI cut short could lose the end of its counter, digits or period and
    // enrol a different token. The length is checked on bytes, before the
    // text is decoded, since a cut inside a character reads as invalid UTF-8.
    let mut line = Zeroizing::new(Vec::new());
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_LINE_LEN + 2)
        .read_until(b'\n', &mut line)
        .map_err(failed)?;
    let content = line.strip_suffix(b"\n").unwrap_or(line.as_slice());
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    if content.len() as u64 > MAX_STDIN_LINE_LEN {
        return Err(format!(
            "the {what} on standard input is longer than {MAX_STDIN_LINE_LEN} bytes"
        ));
    }
    let text = std::str::from_utf8(content).map_err(|_| format!("the {what} on standard input is not valid UTF-8"))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Maximum length in bytes of a line that [`read_stdin_line`] accepts,
/// without its line break.
const MAX_STDIN_LINE_LEN: u64 = 1024;

fn enroll(config: &Config, args: EnrollArgs, json: bool) -> Result<ExitCode, CommandError> {
    let (description, generated) = describe_token(config, &args)?;
    let pin = match args.pin.as_deref() {
        Some("-") => Some(SecretString::new(read_stdin_line("PIN")?.as_str())),
        Some(pin) => Some(SecretString::new(pin)),
        None => None,
    };
    // The agent checks the PIN too; a long one would not even reach it.
    if pin.as_ref().is_some_and(|pin| pin.expose().len() > 16) {
        return Err("Mobile-OTP PIN must be 4 to 16 digits".into());
    }
    if description.kind == Kind::Motp && pin.is_none() {
        return Err("Mobile-OTP tokens need --pin".into());
    }
    let token = NewToken {
        kind: token_kind(description.kind),
        algorithm: hash_algorithm(description.algorithm),
        digits: description.digits,
        period: description.period,
        counter: description.counter,
        last_step: None,
        secret_hex: SecretString::new(description.secret.to_hex().as_str()),
        pin,
        label: args.label.clone(),
    };
    let request = Request::Enroll {
        user: args.user.clone(),
        token,
        backup_codes: args.backup_codes,
    };
    let Response::Enrolled {
        user,
        token,
        backup_codes,
    } = call(config, request)?
    else {
        return Err("the agent sent an unexpected answer to enroll".into());
    };
    // A secret the administrator supplied is known already: print it only
    // when this command generated it.
    let uri = (generated && description.kind != Kind::Motp).then(|| format_uri(&description));
    output::print_enrolled(&output::Enrolled {
        user: &user,
        token,
        description: &description,
        uri: uri.as_deref().map(String::as_str),
        qr: if args.no_qr || json {
            None
        } else {
            uri.as_deref()
                .map(|u| render_qr(u))
                .transpose()
                .map_err(|e| e.to_string())?
        },
        backup_codes: &backup_codes,
        show_secret: generated,
        json,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn backup_codes(config: &Config, user: String, count: u32, json: bool) -> Result<ExitCode, CommandError> {
    let mut client = connect(config)?;
    let Response::BackupCodes { user, backup_codes } = call_on(&mut client, Request::NewBackupCodes { user, count })?
    else {
        return Err("the agent sent an unexpected answer to backup-codes".into());
    };
    output::print_backup_codes(&user, &backup_codes, json)?;
    // The agent accepts backup codes only from users with an enabled token.
    // Handing out backup codes after disabling a lost phone's token is an
    // easy mistake, so a note warns about it.
    if !backup_codes.is_empty() {
        if let Ok(Response::User { user: detail }) = call_on(&mut client, Request::Show { user: user.clone() }) {
            if !detail.tokens.iter().any(|token| token.enabled) {
                eprintln!("freeauthctl: note: {}", output::no_enabled_token_note(&user));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the token from `--uri`, `--secret`, `--secret-hex` or a fresh
/// random secret. Returns whether the secret was generated here.
fn describe_token(config: &Config, args: &EnrollArgs) -> Result<(TokenDescription, bool), CommandError> {
    let issuer = Some(config.enroll.issuer.clone());
    if let Some(uri) = &args.uri {
        let uri = read_value(uri, "URI")?;
        let mut description = parse_uri(&uri).map_err(|err| format!("invalid --uri: {err}"))?;
        check_secret_length(&description.secret)?;
        description.account = Some(args.user.clone());
        description.issuer = description.issuer.or(issuer);
        return Ok((description, false));
    }
    let kind = match args.kind.unwrap_or(TokenType::Totp) {
        TokenType::Totp => Kind::Totp,
        TokenType::Hotp => Kind::Hotp,
        TokenType::Motp => Kind::Motp,
    };
    check_options_fit(kind, args)?;
    let algorithm = match args.algorithm.unwrap_or(HashName::Sha1) {
        HashName::Sha1 => Algorithm::Sha1,
        HashName::Sha256 => Algorithm::Sha256,
        HashName::Sha512 => Algorithm::Sha512,
    };
    let (secret, generated) = match (&args.secret, &args.secret_hex) {
        (Some(text), _) => {
            let text = read_value(text, "secret")?;
            (
                Secret::from_base32(&text).map_err(|err| format!("invalid --secret: {err}"))?,
                false,
            )
        }
        (None, Some(text)) => {
            let text = read_value(text, "secret")?;
            (
                Secret::from_hex(&text).map_err(|err| format!("invalid --secret-hex: {err}"))?,
                false,
            )
        }
        (None, None) => (generate_secret(kind, algorithm)?, true),
    };
    check_secret_length(&secret)?;
    let description = TokenDescription {
        kind,
        algorithm,
        digits: if kind == Kind::Motp {
            6
        } else {
            args.digits.unwrap_or(6)
        },
        period: if kind == Kind::Motp {
            10
        } else {
            args.period.unwrap_or(30)
        },
        counter: args.counter.unwrap_or(0),
        secret,
        issuer,
        account: Some(args.user.clone()),
    };
    Ok((description, generated))
}

/// Rejects options that the token type would silently ignore.
fn check_options_fit(kind: Kind, args: &EnrollArgs) -> Result<(), CommandError> {
    let misplaced = match kind {
        Kind::Motp => [
            ("--algorithm", args.algorithm.is_some()),
            ("--digits", args.digits.is_some()),
            ("--period", args.period.is_some()),
            ("--counter", args.counter.is_some()),
        ]
        .iter()
        .find(|(_, given)| *given)
        .map(|(name, _)| (*name, "Mobile-OTP tokens always use 6 hex digits and 10 s steps")),
        Kind::Hotp if args.period.is_some() => Some(("--period", "HOTP tokens count events, not time")),
        Kind::Totp if args.counter.is_some() => Some(("--counter", "TOTP tokens count time, not events")),
        _ => None,
    };
    if let Some((name, reason)) = misplaced {
        return Err(format!("{name} does not apply to this token type: {reason}"));
    }
    if kind != Kind::Motp && args.pin.is_some() {
        return Err("--pin applies only to Mobile-OTP tokens (--type motp)".into());
    }
    Ok(())
}

/// Maximum length of a code, far above any real one (8 digits, or
/// a code typed with spaces), and below what one protocol message carries.
const MAX_CODE_LEN: usize = 64;

/// Rejects a code that cannot be one, with a message, before it is sent.
fn check_code_length(code: &str) -> Result<(), CommandError> {
    if code.len() > MAX_CODE_LEN {
        return Err(format!(
            "a code is at most {MAX_CODE_LEN} bytes long, and this one has {}",
            code.len()
        ));
    }
    Ok(())
}

/// Rejects a secret that the agent would reject, before it is sent, because
/// a long one would not even reach the agent.
fn check_secret_length(secret: &Secret) -> Result<(), CommandError> {
    if secret.len() > 128 {
        return Err(format!(
            "a secret has at most 128 bytes, and this one has {}",
            secret.len()
        ));
    }
    Ok(())
}

/// Returns `value`, or one line of standard input when it is `-`.
fn read_value(value: &str, what: &str) -> Result<Zeroizing<String>, CommandError> {
    if value == "-" {
        read_stdin_line(what)
    } else {
        Ok(Zeroizing::new(value.to_owned()))
    }
}

/// A fresh secret as long as the hash output (RFC 4226 recommends at least
/// 160 bits); Mobile-OTP secrets are 16 hex digits as the MIDlet expects.
fn generate_secret(kind: Kind, algorithm: Algorithm) -> Result<Secret, CommandError> {
    let len = match (kind, algorithm) {
        (Kind::Motp, _) => 8,
        (_, Algorithm::Sha1) => 20,
        (_, Algorithm::Sha256) => 32,
        (_, Algorithm::Sha512) => 64,
    };
    Secret::generate(len).map_err(|err| format!("cannot generate a secret: {err}"))
}

pub fn token_kind(kind: Kind) -> TokenKind {
    match kind {
        Kind::Hotp => TokenKind::Hotp,
        Kind::Totp => TokenKind::Totp,
        Kind::Motp => TokenKind::Motp,
    }
}

pub fn hash_algorithm(algorithm: Algorithm) -> HashAlgorithm {
    match algorithm {
        Algorithm::Sha1 => HashAlgorithm::Sha1,
        Algorithm::Sha256 => HashAlgorithm::Sha256,
        Algorithm::Sha512 => HashAlgorithm::Sha512,
    }
}

/// Maximum size in bytes of a file that import reads. One import request
/// carries at most 1 MiB, so a larger file must be split anyway; the extra
/// room is for comments and blank lines.
const MAX_IMPORT_FILE_LEN: usize = 64 * 1024 * 1024;

/// Reads a file given on the command line, with a message naming it.
///
/// Regular files and pipes are read (`<(ssh host cat users.oath)` gives a
/// pipe), at most [`MAX_IMPORT_FILE_LEN`] bytes. The file is opened with
/// `O_NONBLOCK`, so that a named pipe without a writer does not block
/// `open` forever: it reads as empty. A device such as /dev/zero is
/// refused, as it would never end.
pub fn read_file(path: &Path) -> Result<Zeroizing<String>, CommandError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let failed = |err: std::io::Error| format!("cannot read {}: {err}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_fifo() {
        return Err(format!("cannot read {}: not a regular file or a pipe", path.display()));
    }
    if meta.len() > MAX_IMPORT_FILE_LEN as u64 {
        return Err(too_large(path));
    }
    // Reads wait for a pipe's writer from here on.
    nix::fcntl::fcntl(
        file.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|errno| failed(errno.into()))?;
    // The buffer grows by copies into new zeroized buffers, so that no
    // copy of the file's secrets stays behind in freed memory. Reads go
    // through a zeroized chunk, so each byte is written once.
    let initial = usize::try_from(meta.len()).unwrap_or(0).max(64 * 1024);
    let mut bytes = Zeroizing::new(Vec::with_capacity(initial));
    let mut chunk = Zeroizing::new(vec![0u8; 64 * 1024]);
    loop {
        let read = loop {
            match file.read(&mut chunk) {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let read = read.map_err(failed)?;
        if read == 0 {
            break;
        }
        if bytes.len() + read > MAX_IMPORT_FILE_LEN {
            return Err(too_large(path));
        }
        if bytes.len() + read > bytes.capacity() {
            let mut larger = Zeroizing::new(Vec::with_capacity((bytes.capacity() * 2).max(bytes.len() + read)));
            larger.extend_from_slice(&bytes);
            bytes = larger;
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(err) => {
            let line = bytes[..err.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(format!(
                "{}: line {line}: not valid UTF-8\nNothing was imported.",
                path.display()
            ))
        }
    }
}

fn too_large(path: &Path) -> CommandError {
    format!(
        "cannot read {}: it is larger than the maximum of {MAX_IMPORT_FILE_LEN} bytes; split it into parts",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_of_malformed_request_suggests_restart() {
        let text = rejection_message(ErrorKind::Malformed, "malformed request, closing the connection");
        assert!(
            text.starts_with("the agent refused the request (malformed request)"),
            "{text}"
        );
        assert!(text.contains("restart the agent"), "{text}");
    }

    #[test]
    fn rejection_of_other_errors_has_no_hint() {
        let text = rejection_message(ErrorKind::NotFound, "no user bob");
        assert_eq!(text, "the agent refused the request (not found): no user bob");
    }
}
