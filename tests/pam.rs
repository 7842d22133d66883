//! End-to-end tests of `pam_freeauth.so` through the real libpam: pamtester
//! runs under pam_wrapper with PAM service files in a temporary folder, the
//! built module queries a real agent, and codes come from oathtool. Each test
//! checks the PAM return code (through the text pamtester prints), the
//! prompts the user saw and, where it matters, the module's log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;

use freeauth_e2e::pam::*;
use freeauth_e2e::*;
use freeauth_proto::Origin;

const SEED: &str = "3132333435363738393031323334353637383930";
/// The password the forward_pass tests put in front of the code.
const PASSWORD: &str = "correct horse 7";

fn enroll_hotp(agent: &Agent, user: &str) {
    agent.ctl_ok(&["enroll", user, "--type", "hotp", "--secret-hex", SEED, "--no-qr"]);
}

/// Starts an agent that locks after 3 failures, with `carol` enrolled and
/// locked by 3 wrong codes.
fn agent_with_locked_carol() -> Agent {
    let agent = Agent::start_with(Options {
        threshold: 3,
        ..Options::default()
    });
    enroll_hotp(&agent, "carol");
    for _ in 0..3 {
        agent.verify_pam("carol", "000000");
    }
    agent
}

fn hotp(counter: u64) -> String {
    oath_hotp(SEED, counter, 6)
}

/// Runs one remote login on the `sshd` service (PAM_RHOST set, as sshd
/// sets it) that types `answer` at the prompt.
fn remote_sshd(services: &Services, user: &str, answer: &str) -> PamRun {
    services
        .pamtester("sshd", user)
        .item("rhost=192.0.2.9")
        .response(answer)
        .run()
}

/// Asserts that no line the module logged contains `code`.
fn assert_code_not_logged(run: &PamRun, code: &str) {
    for line in run.log_lines() {
        assert!(!line.contains(code), "the code {code} appears in the log line {line:?}");
    }
}

#[test]
fn accepts_totp_code_once() {
    let agent = Agent::start();
    agent.ctl_ok(&["enroll", "alice", "--secret-hex", SEED, "--no-qr"]);
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);
    wait_for_fresh_step(30, 4);
    let code = oath_totp(SEED, "sha1", 6, 30, now());

    let first = services
        .pamtester("login", "alice")
        .item("rhost=192.0.2.7")
        .item("tty=pts/3")
        .response(&code)
        .run();
    first.assert_success("fresh code");
    assert!(first.prompted(CODE_PROMPT), "{first}");
    assert!(first.logged("code accepted for alice"), "{first}");
    assert_code_not_logged(&first, &code);
    let agent_log = agent.log();
    assert!(agent_log.contains("service=\"login\""), "{agent_log}");
    assert!(agent_log.contains("rhost=\"192.0.2.7\""), "{agent_log}");
    assert!(agent_log.contains("tty=\"pts/3\""), "{agent_log}");

    let again = services.pamtester("login", "alice").response(&code).run();
    again.assert_failure(AUTH_ERR, "same code again");
    assert!(again.logged("code rejected for alice"), "{again}");
    assert_code_not_logged(&again, &code);
}

#[test]
fn rejects_wrong_code() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);

    let run = services.pamtester("login", "alice").response("000000").run();
    run.assert_failure(AUTH_ERR, "wrong code");
    assert!(run.prompted(CODE_PROMPT), "{run}");
    assert_code_not_logged(&run, "000000");
    assert_eq!(agent.ctl_verify("alice", &hotp(0)), 0, "the right code still works");
}

#[test]
fn password_at_code_prompt_is_not_sent() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);

    // sshd's password method answers every prompt with the password.
    let run = services.pamtester("login", "alice").response("alice-password").run();
    run.assert_failure(AUTH_ERR, "a password at the code prompt");
    assert!(run.logged("not shaped like a code"), "{run}");
    assert!(!agent.log().contains("verification user=\"alice\""), "{}", agent.log());
    let account = agent.ctl_ok(&["show", "alice"]);
    let failures = account
        .lines()
        .find_map(|line| line.strip_prefix("failures:"))
        .map(str::trim);
    assert_eq!(failures, Some("0"), "{account}");
}

#[test]
fn shows_prompt_from_option() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    let args = format!("{} [prompt=Token code for FreeAuth: ]", agent_args(&agent));
    services.write("login", &[freeauth_line("required", &args)]);

    let run = services.pamtester("login", "alice").response(&hotp(0)).run();
    run.assert_success("code after the custom prompt");
    assert!(run.prompted("Token code for FreeAuth: "), "{run}");
    assert!(!run.prompted(CODE_PROMPT), "{run}");
}

#[test]
fn user_without_token_is_unknown_without_nullok() {
    let agent = Agent::start();
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);

    let run = services.pamtester("login", "bob").response("123456").run();
    run.assert_failure(USER_UNKNOWN, "no token, no nullok");
    assert!(!run.prompted(CODE_PROMPT), "asked for a code that cannot work\n{run}");
    assert!(run.logged("user bob has no active token; refused"), "{run}");
}

#[test]
fn nullok_ignores_user_without_token() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} nullok", agent_args(&agent));
    let services = Services::new();
    services.write("probe", &ignore_probe_stack(&args));
    services.write(
        "login",
        &[
            freeauth_line("required", &args),
            "auth optional pam_permit.so".to_owned(),
        ],
    );
    services.write("alone", &[freeauth_line("required", &args)]);

    let probe = services.pamtester("probe", "bob").run();
    probe.assert_success("PAM_IGNORE jumps over pam_deny");
    assert!(!probe.prompted(CODE_PROMPT), "{probe}");
    assert!(
        probe.logged("user bob has no active token; skipped (nullok)"),
        "{probe}"
    );

    let login = services.pamtester("login", "bob").run();
    login.assert_success("the next module decides");

    let alone = services.pamtester("alone", "bob").run();
    alone.assert_failure(PERM_DENIED, "a stack of only ignored modules");

    let enrolled = services.pamtester("login", "alice").response("000000").run();
    enrolled.assert_failure(AUTH_ERR, "nullok does not excuse a user with a token");
}

#[test]
fn nullok_yields_to_disallow_null_authtok() {
    let agent = Agent::start();
    let args = format!("{} nullok", agent_args(&agent));
    let services = Services::new();
    services.write(
        "login",
        &[
            freeauth_line("required", &args),
            "auth optional pam_permit.so".to_owned(),
        ],
    );

    let strict = services
        .pamtester("login", "bob")
        .flags("PAM_DISALLOW_NULL_AUTHTOK")
        .run();
    strict.assert_failure(USER_UNKNOWN, "the application disallows users without a token");
    assert!(!strict.prompted(CODE_PROMPT), "{strict}");

    let silent = services.pamtester("login", "bob").flags("PAM_SILENT").run();
    silent.assert_success("another flag leaves nullok in force");
}

#[test]
fn agent_down_fails_closed() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);
    agent.stop();

    let run = services.pamtester("login", "alice").response(&hotp(0)).run();
    run.assert_failure(AUTHINFO_UNAVAIL, "agent stopped");
    assert!(!run.prompted(CODE_PROMPT), "{run}");
    assert!(run.logged("agent unavailable while authenticating alice"), "{run}");
    assert!(run.logged("failing closed"), "{run}");

    let missing = format!("socket=/nonexistent/freeauth.sock agent_user={}", current_user_name());
    services.write("missing", &[freeauth_line("required", &missing)]);
    let run = services.pamtester("missing", "alice").response(&hotp(0)).run();
    run.assert_failure(AUTHINFO_UNAVAIL, "no socket file");
}

#[test]
fn agent_down_with_ignore_unavailable_is_ignored() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} ignore_unavailable", agent_args(&agent));
    let services = Services::new();
    services.write("probe", &ignore_probe_stack(&args));
    services.write(
        "login",
        &[
            "auth required pam_permit.so".to_owned(),
            freeauth_line("required", &args),
        ],
    );
    agent.stop();

    let probe = services.pamtester("probe", "alice").response(&hotp(0)).run();
    probe.assert_success("PAM_IGNORE jumps over pam_deny");
    assert!(probe.logged("ignoring the module (ignore_unavailable)"), "{probe}");

    let login = services.pamtester("login", "alice").response(&hotp(0)).run();
    login.assert_success("the second factor is bypassed while the agent is down");
}

/// Waits until the agent has `count` open connections, the one of
/// `freeauthctl status` included.
fn wait_for_open_connections(agent: &Agent, count: usize) {
    let expected = format!("open connections: {count}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = agent.ctl_ok(&["status"]);
        let open = status
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>().join(" ") == expected);
        if open {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never had {count} open connections:\n{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The agent closes the connection while the user types the code: here it
/// restarts, and for a caller other than root its idle limit does the
/// same. The module connects again, with the trust checks, and sends the
/// code.
#[test]
fn agent_restart_while_user_types() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);

    let mut login = services.pamtester("login", "alice").spawn();
    // The module's connection, which waits for the code, and the status call.
    wait_for_open_connections(&agent, 2);
    agent.restart();
    login.respond(&hotp(0));
    let run = login.finish();
    run.assert_success("code typed while the agent restarted");
    assert!(run.prompted(CODE_PROMPT), "{run}");
    assert!(
        run.logged("the agent closed the connection while waiting for the code of alice; connected again"),
        "{run}"
    );
    assert_eq!(agent.ctl_verify("alice", &hotp(0)), 1, "the code was used up");
}

/// When the agent is gone for good by the time the user has typed the
/// code, the module fails closed, also with `ignore_unavailable`.
#[test]
fn agent_stopped_while_user_types_fails_closed() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} ignore_unavailable", agent_args(&agent));
    let services = Services::new();
    services.write("probe", &ignore_probe_stack(&args));

    let mut login = services.pamtester("probe", "alice").spawn();
    wait_for_open_connections(&agent, 2);
    agent.stop();
    login.respond(&hotp(0));
    let run = login.finish();
    run.assert_failure(AUTHINFO_UNAVAIL, "agent stopped while the user typed");
    assert!(run.logged("failing closed"), "{run}");
}

#[test]
fn ignore_unavailable_does_not_cover_slow_rejection() {
    // The agent holds back a rejection for 3 s, longer than the module's
    // 1 s timeout, so the module gives up after it has sent the code.
    let agent = Agent::start_with(Options {
        failure_delay_ms: 3000,
        max_failure_delay_ms: 3000,
        ..Options::default()
    });
    enroll_hotp(&agent, "alice");
    let args = format!(
        "socket={} agent_user={} timeout=1 ignore_unavailable",
        agent.agent_socket().display(),
        current_user_name()
    );
    let services = Services::new();
    services.write(
        "login",
        &[
            "auth required pam_permit.so".to_owned(),
            freeauth_line("required", &args),
        ],
    );

    let run = services.pamtester("login", "alice").response("000000").run();
    run.assert_failure(AUTHINFO_UNAVAIL, "wrong code answered after the timeout");
    assert!(run.logged("failing closed"), "{run}");
}

#[test]
fn locked_user_gets_maxtries_without_prompt() {
    let agent = agent_with_locked_carol();
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);
    let quiet = format!("{} quiet", agent_args(&agent));
    services.write("quiet", &[freeauth_line("required", &quiet)]);

    let run = services.pamtester("login", "carol").response(&hotp(0)).run();
    run.assert_failure(MAXTRIES, "locked account");
    assert!(!run.prompted(CODE_PROMPT), "{run}");
    assert!(run.output().contains("Too many failed codes"), "{run}");
    assert!(run.logged("user carol is locked after too many failures"), "{run}");

    let quiet = services.pamtester("quiet", "carol").response(&hotp(0)).run();
    quiet.assert_failure(MAXTRIES, "locked account, quiet");
    assert!(!quiet.output().contains("Too many failed codes"), "{quiet}");

    agent.ctl_ok(&["unlock", "carol"]);
    assert_eq!(agent.ctl_verify("carol", &hotp(0)), 0, "the code was never sent");
}

#[test]
fn use_first_pass_reads_authtok() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} use_first_pass", agent_args(&agent));
    let services = Services::new();
    let set_items = format!("auth required {}", pam_wrapper_file("pam_set_items.so").display());
    services.write("chained", &[set_items, freeauth_line("required", &args)]);
    services.write("alone", &[freeauth_line("required", &args)]);

    let run = services
        .pamtester("chained", "alice")
        .env("PAM_AUTHTOK", &hotp(0))
        .run();
    run.assert_success("code from PAM_AUTHTOK");
    assert!(!run.prompted(CODE_PROMPT), "{run}");

    let wrong = services
        .pamtester("chained", "alice")
        .env("PAM_AUTHTOK", "000000")
        .run();
    wrong.assert_failure(AUTH_ERR, "wrong code in PAM_AUTHTOK");

    let unset = services.pamtester("alone", "alice").response(&hotp(1)).run();
    unset.assert_failure(CONV_ERR, "PAM_AUTHTOK unset");
    assert!(!unset.prompted(CODE_PROMPT), "use_first_pass must not prompt\n{unset}");
}

#[test]
fn try_first_pass_prompts_only_without_authtok() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} try_first_pass", agent_args(&agent));
    let services = Services::new();
    let set_items = format!("auth required {}", pam_wrapper_file("pam_set_items.so").display());
    services.write("chained", &[set_items, freeauth_line("required", &args)]);
    services.write("alone", &[freeauth_line("required", &args)]);

    let chained = services
        .pamtester("chained", "alice")
        .env("PAM_AUTHTOK", &hotp(0))
        .run();
    chained.assert_success("code from PAM_AUTHTOK");
    assert!(!chained.prompted(CODE_PROMPT), "{chained}");

    let alone = services.pamtester("alone", "alice").response(&hotp(1)).run();
    alone.assert_success("code from the prompt");
    assert!(alone.prompted(CODE_PROMPT), "{alone}");
}

/// A script for `pam_exec.so expose_authtok` that succeeds only when
/// PAM_AUTHTOK equals its first argument. pam_exec writes the item and a NUL
/// byte on standard input, and prompts for a password when the item is
/// unset (which fails here, as pamtester has no response left).
const CHECK_AUTHTOK: &str = "#!/bin/sh\nreceived=$(/usr/bin/tr -d '\\000')\n[ \"$received\" = \"$1\" ]\n";

/// Writes a `forward_pass` stack whose next module checks that PAM_AUTHTOK
/// contains `PASSWORD`; with `set_items`, pam_set_items first copies the
/// PAM_AUTHTOK environment variable into the item.
fn forward_pass_stack(services: &Services, agent: &Agent, set_items: bool) -> Vec<String> {
    let script = services.write_script("check-authtok", CHECK_AUTHTOK);
    let args = format!("{} forward_pass", agent_args(agent));
    let mut lines = Vec::new();
    if set_items {
        lines.push(format!(
            "auth required {}",
            pam_wrapper_file("pam_set_items.so").display()
        ));
    }
    lines.push(freeauth_line("required", &args));
    lines.push(format!(
        "auth required pam_exec.so expose_authtok quiet {} [{PASSWORD}]",
        script.display()
    ));
    lines
}

#[test]
fn forward_pass_splits_prompt_answer() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("login", &forward_pass_stack(&services, &agent, false));

    let run = services
        .pamtester("login", "alice")
        .response(&format!("{PASSWORD}{}", hotp(0)))
        .run();
    run.assert_success("password and code in one answer");
    assert!(run.prompted(FORWARD_PROMPT), "{run}");
    assert!(!run.prompted("Password: "), "pam_exec had to prompt\n{run}");
    assert_code_not_logged(&run, &hotp(0));

    let wrong_password = services
        .pamtester("login", "alice")
        .response(&format!("wrong{}", hotp(1)))
        .run();
    assert_eq!(
        wrong_password.status,
        Some(1),
        "the next module sees the wrong password\n{wrong_password}"
    );
    assert!(wrong_password.logged("code accepted for alice"), "{wrong_password}");

    let wrong_code = services
        .pamtester("login", "alice")
        .response(&format!("{PASSWORD}000000"))
        .run();
    wrong_code.assert_failure(AUTH_ERR, "right password, wrong code");

    let code_only = services.pamtester("login", "alice").response(&hotp(2)).run();
    assert_eq!(code_only.status, Some(1), "an empty password is passed on\n{code_only}");
    assert!(code_only.logged("code accepted for alice"), "{code_only}");
}

#[test]
fn forward_pass_splits_authtok() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("login", &forward_pass_stack(&services, &agent, true));

    let combined = format!("{PASSWORD}{}", hotp(0));
    let run = services.pamtester("login", "alice").env("PAM_AUTHTOK", &combined).run();
    run.assert_success("password and code in PAM_AUTHTOK");
    assert!(!run.prompted(FORWARD_PROMPT), "{run}");
    assert!(!run.prompted("Password: "), "{run}");

    let reused = services.pamtester("login", "alice").env("PAM_AUTHTOK", &combined).run();
    reused.assert_failure(AUTH_ERR, "same password and code again");
}

#[test]
fn non_root_caller_verifies_only_itself() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run pamtester as uid 65534 (CI runs as root)");
        return;
    }
    let agent = Agent::start();
    enroll_hotp(&agent, "nobody");
    enroll_hotp(&agent, "alice");
    let services = Services::new();
    services.write("xlock", &[freeauth_line("required", &agent_args(&agent))]);

    let itself = services
        .pamtester("xlock", "nobody")
        .response(&hotp(0))
        .as_nobody()
        .run();
    itself.assert_success("nobody verifies its own code");

    let other = services
        .pamtester("xlock", "alice")
        .response(&hotp(0))
        .as_nobody()
        .run();
    other.assert_failure(AUTH_ERR, "nobody asks about alice");
    assert!(!other.prompted(CODE_PROMPT), "{other}");
    assert!(other.logged("agent refused lookup of alice"), "{other}");
    assert_eq!(agent.ctl_verify("alice", &hotp(0)), 0, "alice's code was not consumed");
}

#[test]
fn non_root_refusals_are_not_ignored() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run pamtester as uid 65534 (CI runs as root)");
        return;
    }
    let agent = Agent::start_with(Options {
        extra: "[access]\nlocal_requests_per_minute = 4\n".into(),
        ..Options::default()
    });
    enroll_hotp(&agent, "nobody");
    enroll_hotp(&agent, "alice");
    let args = format!("{} ignore_unavailable", agent_args(&agent));
    let services = Services::new();
    // A screen locker's stack: the password module, then the code.
    services.write(
        "xlock",
        &[
            "auth required pam_permit.so".to_owned(),
            freeauth_line("required", &args),
        ],
    );

    let other = services
        .pamtester("xlock", "alice")
        .response(&hotp(0))
        .as_nobody()
        .run();
    other.assert_failure(AUTH_ERR, "nobody asks about alice");

    // Each attempt takes a lookup and a verification from nobody's bucket of
    // 4 requests a minute; the refused lookup of alice took none.
    for attempt in 1..=2 {
        let run = services
            .pamtester("xlock", "nobody")
            .response("000000")
            .as_nobody()
            .run();
        run.assert_failure(AUTH_ERR, &format!("wrong code, attempt {attempt}"));
    }
    let limited = services
        .pamtester("xlock", "nobody")
        .response("000000")
        .as_nobody()
        .run();
    limited.assert_failure(MAXTRIES, "rate limited");
    assert!(limited.logged("agent refused lookup of nobody"), "{limited}");
    let again = services
        .pamtester("xlock", "nobody")
        .response(&hotp(0))
        .as_nobody()
        .run();
    again.assert_failure(MAXTRIES, "still rate limited, even with the right code");
}

#[test]
fn socket_of_other_user_fails_closed() {
    let agent = Agent::start();
    let owner = std::fs::metadata(agent.agent_socket()).unwrap().uid();
    let other_user = if owner == 0 { "nobody" } else { "root" };
    enroll_hotp(&agent, "alice");
    let args = format!("socket={} agent_user={other_user}", agent.agent_socket().display());
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &args)]);
    services.write("ignoring", &ignore_probe_stack(&format!("{args} ignore_unavailable")));

    let run = services.pamtester("login", "alice").response(&hotp(0)).run();
    run.assert_failure(AUTHINFO_UNAVAIL, "socket not owned by agent_user");
    assert!(!run.prompted(CODE_PROMPT), "{run}");
    assert!(run.logged("agent socket not trusted"), "{run}");
    let reason = format!("is owned by uid {owner}, not by {other_user}");
    assert!(run.logged(&reason), "{run}");

    let ignoring = services.pamtester("ignoring", "alice").response(&hotp(0)).run();
    assert!(
        !ignoring.output().contains("successfully authenticated"),
        "ignore_unavailable does not cover an untrusted socket: {ignoring}"
    );
    assert!(
        ignoring.logged("failing closed, also with ignore_unavailable"),
        "{ignoring}"
    );

    assert_eq!(
        agent.ctl_verify("alice", &hotp(0)),
        0,
        "the code never reached the agent"
    );
}

#[test]
fn peer_of_other_user_fails_closed() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to give the socket file to nobody");
        return;
    }
    // A listener of root whose socket file belongs to nobody: the file check
    // passes and only SO_PEERCRED can tell.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    let services = Services::new();
    let args = format!("socket={} agent_user=nobody timeout=2", socket.display());
    services.write("login", &[freeauth_line("required", &args)]);

    let run = services.pamtester("login", "alice").response("123456").run();
    run.assert_failure(AUTHINFO_UNAVAIL, "peer runs as root, not nobody");
    assert!(!run.prompted(CODE_PROMPT), "{run}");
    assert!(run.logged("runs as uid 0, not as nobody"), "{run}");
}

#[test]
fn unknown_option_is_logged_and_ignored() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} frobnicate timeout=0 nullok=yes prompt=", agent_args(&agent));
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &args)]);

    let run = services.pamtester("login", "alice").response(&hotp(0)).run();
    run.assert_success("valid code despite unknown options");
    assert!(run.prompted(CODE_PROMPT), "an empty prompt= replaced the prompt\n{run}");
    for option in ["frobnicate", "timeout=0", "nullok=yes", "prompt="] {
        let line = format!("unknown or invalid option ignored: {option}");
        assert!(run.logged(&line), "missing log line {line:?}\n{run}");
    }

    let without_token = services.pamtester("login", "bob").run();
    without_token.assert_failure(USER_UNKNOWN, "nullok=yes is not nullok");
}

#[test]
fn try_first_pass_prompts_after_rejected_or_password_authtok() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let args = format!("{} try_first_pass", agent_args(&agent));
    let services = Services::new();
    let set_items = format!("auth required {}", pam_wrapper_file("pam_set_items.so").display());
    services.write("chained", &[set_items, freeauth_line("required", &args)]);

    let stale = services
        .pamtester("chained", "alice")
        .env("PAM_AUTHTOK", "000000")
        .response(&hotp(0))
        .run();
    stale.assert_success("a rejected PAM_AUTHTOK is followed by one prompt");
    assert!(stale.prompted(CODE_PROMPT), "{stale}");

    let password = services
        .pamtester("chained", "alice")
        .env("PAM_AUTHTOK", "my unix password")
        .response(&hotp(1))
        .run();
    password.assert_success("a password-shaped PAM_AUTHTOK is not sent; the user is asked");
    // Six hex letters would be a Mobile-OTP code, but alice has none.
    let letters = services
        .pamtester("chained", "alice")
        .env("PAM_AUTHTOK", "facade")
        .response(&hotp(2))
        .run();
    letters.assert_success("a password of six letters a to f is not sent either");
    assert!(
        !agent.log().contains("malformed code"),
        "the passwords never reached the agent"
    );
}

#[test]
fn nullok_does_not_skip_disabled_tokens() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    agent.ctl_ok(&["disable", "alice"]);
    let args = format!("{} nullok", agent_args(&agent));
    let services = Services::new();
    services.write("probe", &ignore_probe_stack(&args));
    let run = services.pamtester("probe", "alice").response(&hotp(0)).run();
    assert!(!run.output().contains("successfully authenticated"), "{run}");
    assert!(run.logged("user alice has only disabled tokens; refused"), "{run}");
}

#[test]
fn remote_login_prompts_whatever_the_account_state() {
    let agent = agent_with_locked_carol();
    let services = Services::new();
    services.write("sshd", &[freeauth_line("required", &agent_args(&agent))]);
    let locked = remote_sshd(&services, "carol", "123456");
    // Not PAM_MAXTRIES: sshd would close the connection on it, which
    // shows the client that the account is locked.
    locked.assert_failure(AUTH_ERR, "locked account, remote");
    assert!(
        locked.prompted(CODE_PROMPT),
        "a remote party sees the usual prompt: {locked}"
    );
    assert!(!locked.output().contains("Too many failed codes"), "{locked}");
    let unknown = remote_sshd(&services, "nobody-here", "123456");
    assert!(unknown.prompted(CODE_PROMPT), "{unknown}");
    assert!(!unknown.output().contains("successfully authenticated"), "{unknown}");
    // Both codes reached the agent, which delays every rejection by the
    // same failure delay.
    let log = agent.log();
    assert!(
        log.contains("user=\"carol\" result=\"rejected\" reason=\"account locked\""),
        "{log}"
    );
    assert!(
        log.contains("user=\"nobody-here\" result=\"rejected\" reason=\"unknown user\""),
        "{log}"
    );
}

/// A remote response goes to the agent, and waits for its failure delay,
/// when it has the shape of any account's code, whatever codes this account
/// takes. Responses shaped like the account's codes only would reach the
/// agent for some accounts and be rejected at once for others, which shows
/// a remote party which names have a token.
#[test]
fn remote_answer_shape_ignores_the_account() {
    let agent = Agent::start_with(Options {
        threshold: 10,
        ..Options::default()
    });
    // Six-digit HOTP codes, no backup codes, no Mobile-OTP token.
    enroll_hotp(&agent, "carol");
    let services = Services::new();
    services.write("sshd", &[freeauth_line("required", &agent_args(&agent))]);
    let remote = |user: &str, answer: &str| remote_sshd(&services, user, answer);
    let code_shapes = ["12345678", "abc123", "123456"];
    for answer in code_shapes {
        remote("carol", answer).assert_failure(AUTH_ERR, answer);
        let unknown = remote("nobody-here", answer);
        assert!(!unknown.output().contains("successfully authenticated"), "{unknown}");
    }
    let log = agent.log();
    let carol = log.matches("verification user=\"carol\"").count();
    let unknown = log.matches("verification user=\"nobody-here\"").count();
    assert_eq!(
        carol,
        code_shapes.len(),
        "every answer for carol reached the agent:\n{log}"
    );
    assert_eq!(
        unknown,
        code_shapes.len(),
        "every answer for nobody-here reached the agent:\n{log}"
    );

    // A password still stays in the module for every account.
    for user in ["carol", "nobody-here"] {
        let run = remote(user, "alice-password");
        assert!(run.logged("not shaped like a code"), "{run}");
    }
    assert!(!agent.log().contains("alice-password"));
    assert_eq!(agent.log().matches("verification user=").count(), 2 * code_shapes.len());
}

/// The same with `forward_pass`: each remote response that ends in the shape
/// of any account's code reaches the agent once, for an account with a
/// token and for a name without one.
#[test]
fn remote_forward_pass_shape_ignores_the_account() {
    let agent = Agent::start();
    enroll_hotp(&agent, "carol");
    let services = Services::new();
    let args = format!("{} forward_pass", agent_args(&agent));
    services.write("sshd", &[freeauth_line("required", &args)]);
    let answers = ["pw12345678", "pw-abc123", "pw.123456"];
    for answer in answers {
        for user in ["carol", "nobody-here"] {
            let run = remote_sshd(&services, user, answer);
            assert!(!run.output().contains("successfully authenticated"), "{run}");
        }
    }
    let log = agent.log();
    for user in ["carol", "nobody-here"] {
        let sent = log.matches(&format!("verification user=\"{user}\"")).count();
        assert_eq!(sent, answers.len(), "answers of {user} that reached the agent:\n{log}");
    }
}

#[test]
fn remote_source_lock_gives_auth_err() {
    let agent = Agent::start_with(Options {
        source_threshold: 3,
        ..Options::default()
    });
    enroll_hotp(&agent, "carol");
    let services = Services::new();
    services.write("sshd", &[freeauth_line("required", &agent_args(&agent))]);
    let remote = |answer: &str| remote_sshd(&services, "carol", answer);
    for _ in 0..3 {
        remote("000000").assert_failure(AUTH_ERR, "wrong code, remote");
    }
    // The source is locked now. sshd would close the connection on
    // PAM_MAXTRIES and so tell the client.
    remote(&hotp(0)).assert_failure(AUTH_ERR, "locked source, remote");
    assert!(agent.log().contains("reason=\"source locked\""), "{}", agent.log());
}

/// Remote responses for names without an account reach the agent and count
/// for their host, so they lock it like wrong codes for an enrolled account.
#[test]
fn remote_unknown_names_lock_the_host() {
    let agent = Agent::start_with(Options {
        source_threshold: 3,
        ..Options::default()
    });
    enroll_hotp(&agent, "carol");
    let services = Services::new();
    services.write("sshd", &[freeauth_line("required", &agent_args(&agent))]);
    let remote = |user: &str, answer: &str| remote_sshd(&services, user, answer);
    for user in ["nobody1", "nobody2", "nobody3"] {
        let run = remote(user, "000000");
        assert!(!run.output().contains("successfully authenticated"), "{run}");
    }
    remote("carol", &hotp(0)).assert_failure(AUTH_ERR, "right code from the locked host");
    assert!(agent.log().contains("reason=\"source locked\""), "{}", agent.log());
}

#[test]
fn remote_forward_pass_of_unknown_user_reaches_agent() {
    let agent = Agent::start();
    let services = Services::new();
    let args = format!("{} forward_pass", agent_args(&agent));
    services.write("sshd", &[freeauth_line("required", &args)]);
    // A password that ends in two digits: the last eight characters go to
    // the agent, once, as for any account in a remote login.
    let run = remote_sshd(&services, "nobody-here", "hunter12654321");
    assert!(!run.output().contains("successfully authenticated"), "{run}");
    // The code at the end of the response went to the agent, which delays
    // the rejection as it does for an enrolled account.
    let log = agent.log();
    let requests = log
        .matches("user=\"nobody-here\" result=\"rejected\" reason=\"unknown user\"")
        .count();
    assert_eq!(requests, 1, "{log}");
    assert!(!log.contains("hunter"), "the password stayed in the module");
}

#[test]
fn remote_locked_try_first_pass_prompts() {
    let agent = agent_with_locked_carol();
    let args = format!("{} try_first_pass", agent_args(&agent));
    let services = Services::new();
    let set_items = format!("auth required {}", pam_wrapper_file("pam_set_items.so").display());
    services.write("sshd", &[set_items, freeauth_line("required", &args)]);
    // A six-digit password that pam_unix left in PAM_AUTHTOK: an unlocked
    // account gets the code prompt after its rejection, so a locked one
    // must get it too.
    let locked = services
        .pamtester("sshd", "carol")
        .item("rhost=192.0.2.9")
        .env("PAM_AUTHTOK", "000000")
        .response(&hotp(0))
        .run();
    locked.assert_failure(AUTH_ERR, "locked account, remote");
    assert!(locked.prompted(CODE_PROMPT), "{locked}");
}

/// While the remote host is locked, an enrolled account gets the code
/// prompt after its PAM_AUTHTOK is rejected, as a name without a token
/// does. The lookup does not know the host, so only the verification meets
/// the host's lock.
#[test]
fn remote_locked_host_try_first_pass_prompts() {
    let agent = Agent::start_with(Options {
        threshold: 10,
        source_threshold: 3,
        ..Options::default()
    });
    enroll_hotp(&agent, "carol");
    let from_host = Origin::Pam {
        service: "sshd".into(),
        rhost: Some("192.0.2.9".into()),
        tty: None,
        ruser: None,
    };
    for _ in 0..3 {
        agent.verify_from("eve", "000000", from_host.clone());
    }
    let args = format!("{} try_first_pass", agent_args(&agent));
    let services = Services::new();
    let set_items = format!("auth required {}", pam_wrapper_file("pam_set_items.so").display());
    services.write("sshd", &[set_items, freeauth_line("required", &args)]);
    for user in ["carol", "nobody-here"] {
        let run = services
            .pamtester("sshd", user)
            .item("rhost=192.0.2.9")
            .env("PAM_AUTHTOK", "000000")
            .response(&hotp(0))
            .run();
        assert!(!run.output().contains("successfully authenticated"), "{user}: {run}");
        assert!(run.prompted(CODE_PROMPT), "{user}: {run}");
    }
    let log = agent.log();
    assert!(log.contains("reason=\"source locked\""), "{log}");
}

/// A user name is typed by someone not logged in yet. Its control
/// characters are escaped in the module's log, so a newline cannot start a
/// forged line.
#[test]
fn user_name_escaped_in_log() {
    let agent = Agent::start();
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);

    let run = services
        .pamtester("login", "carol\nFAKE: code accepted for root")
        .response("123456")
        .run();
    assert_ne!(run.status, Some(0), "a name with a newline was accepted\n{run}");
    assert!(
        !run.stderr.lines().any(|line| line.starts_with("FAKE")),
        "a forged line reached the log\n{run}"
    );
    assert!(run.logged("carol\\u{a}FAKE: code accepted for root"), "{run}");
}

/// A user name longer than the agent's 16 KiB request frame is rejected
/// like any name over 253 bytes, not read as an outage that
/// `ignore_unavailable` skips.
#[test]
fn long_user_name_is_rejected() {
    let agent = Agent::start();
    let args = format!("{} ignore_unavailable", agent_args(&agent));
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &agent_args(&agent))]);
    services.write("probe", &ignore_probe_stack(&args));

    for length in [254, 20_000] {
        let name = "a".repeat(length);
        let run = services.pamtester("login", &name).response("123456").run();
        run.assert_failure(AUTH_ERR, &format!("name of {length} bytes"));
        assert!(!run.prompted(CODE_PROMPT), "{run}");

        let probe = services.pamtester("probe", &name).response("123456").run();
        probe.assert_failure(AUTH_ERR, &format!("name of {length} bytes, ignore_unavailable"));
    }
}

/// With backup codes the account has two code lengths, 6 and 8. A password
/// that ends in digits must not make a login with either kind of code count
/// a failed try against the account and its source.
#[test]
fn forward_pass_tries_token_length_first() {
    let agent = Agent::start();
    let output = agent.ctl_ok(&[
        "--json",
        "enroll",
        "dave",
        "--type",
        "hotp",
        "--secret-hex",
        SEED,
        "--backup-codes",
        "2",
    ]);
    let printed: serde_json::Value = serde_json::from_str(&output).unwrap();
    let backup = printed["backup_codes"][0].as_str().unwrap().to_owned();
    let args = format!("{} forward_pass", agent_args(&agent));
    let services = Services::new();
    services.write("login", &[freeauth_line("required", &args)]);

    for counter in 0..3 {
        let run = services
            .pamtester("login", "dave")
            .response(&format!("hunter12{}", hotp(counter)))
            .run();
        run.assert_success("password ending in digits, then a token code");
    }
    assert!(
        !agent.log().contains("wrong code"),
        "a login with a token code counted a failure:\n{}",
        agent.log()
    );

    let run = services
        .pamtester("login", "dave")
        .response(&format!("hunter12{backup}"))
        .run();
    run.assert_success("password ending in digits, then a backup code");
    assert!(
        !agent.log().contains("wrong code"),
        "a login with a backup code counted a failure:\n{}",
        agent.log()
    );
}

/// A second seed, for an 8-digit HOTP token.
const SEED8: &str = "0102030405060708090a0b0c0d0e0f1011121314";

/// An account with tokens of 6 and of 8 digits: after a password that ends
/// in two digits, the end of the typed text fits both lengths. Each login
/// is one attempt. It passes the password on when either code is right, and
/// counts one failure when neither is.
#[test]
fn forward_pass_mixed_code_lengths() {
    let agent = Agent::start();
    enroll_hotp(&agent, "erin");
    agent.ctl_ok(&[
        "enroll",
        "erin",
        "--type",
        "hotp",
        "--digits",
        "8",
        "--secret-hex",
        SEED8,
        "--no-qr",
    ]);
    let services = Services::new();
    let script = services.write_script("check-authtok", CHECK_AUTHTOK);
    let args = format!("{} forward_pass", agent_args(&agent));
    services.write(
        "login",
        &[
            freeauth_line("required", &args),
            format!(
                "auth required pam_exec.so expose_authtok quiet {} hunter12",
                script.display()
            ),
        ],
    );

    for counter in 0..2 {
        let six = services
            .pamtester("login", "erin")
            .response(&format!("hunter12{}", hotp(counter)))
            .run();
        six.assert_success("password ending in digits, then a 6-digit code");
        let eight = services
            .pamtester("login", "erin")
            .response(&format!("hunter12{}", oath_hotp(SEED8, counter, 8)))
            .run();
        eight.assert_success("password ending in digits, then an 8-digit code");
    }
    assert!(
        !agent.log().contains("wrong code"),
        "a login with a right code counted a failure:\n{}",
        agent.log()
    );

    let wrong = services.pamtester("login", "erin").response("hunter12000000").run();
    wrong.assert_failure(AUTH_ERR, "a wrong code");
    let failures = agent.log().matches("wrong code").count();
    assert_eq!(failures, 1, "one wrong answer, {failures} failures:\n{}", agent.log());
}
