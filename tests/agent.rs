//! End-to-end tests of `freeauth-agentd` and `freeauthctl`: the real
//! binaries in a temporary folder, with codes from `oathtool`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use freeauth_e2e::*;
use freeauth_proto::{
    Client, ErrorKind, HashAlgorithm, ImportEntry, NewToken, Origin, Request, Response, SecretString, TokenKind,
    VerifyResult,
};

const RFC_SEED_HEX: &str = "3132333435363738393031323334353637383930";

/// Enrols `user` with an HOTP token of the RFC 4226 seed, counter 0.
fn enroll_hotp(agent: &Agent, user: &str) {
    agent.ctl_ok(&[
        "enroll",
        user,
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
}

fn enroll_totp(agent: &Agent, user: &str, seed_hex: &str, extra: &[&str]) {
    let mut args = vec!["enroll", user, "--secret-hex", seed_hex, "--no-qr"];
    args.extend_from_slice(extra);
    agent.ctl_ok(&args);
}

#[test]
fn accepts_oathtool_totp_code_only_once() {
    let agent = Agent::start();
    enroll_totp(&agent, "alice", RFC_SEED_HEX, &[]);
    wait_for_fresh_step(30, 3);
    let code = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now());
    assert_eq!(agent.ctl_verify("alice", &code), 0, "fresh code");
    assert_eq!(agent.ctl_verify("alice", &code), 1, "same code again");
    assert_eq!(
        agent.verify_pam("alice", &code),
        VerifyResult::Rejected,
        "same code through the agent socket"
    );
}

#[test]
fn accepts_sha256_and_sha512_eight_digit_codes() {
    let agent = Agent::start();
    let seed32 = "3132333435363738393031323334353637383930313233343536373839303132";
    let seed64 = format!("{seed32}{seed32}");
    enroll_totp(&agent, "s256", seed32, &["--algorithm", "sha256", "--digits", "8"]);
    enroll_totp(
        &agent,
        "s512",
        &seed64,
        &["--algorithm", "sha512", "--digits", "8", "--period", "60"],
    );
    wait_for_fresh_step(30, 3);
    let time = now();
    assert_eq!(agent.ctl_verify("s256", &oath_totp(seed32, "sha256", 8, 30, time)), 0);
    assert_eq!(agent.ctl_verify("s512", &oath_totp(&seed64, "sha512", 8, 60, time)), 0);
    let six_digits = oath_totp(seed32, "sha256", 6, 30, time);
    assert_eq!(agent.ctl_verify("s256", &six_digits), 1, "a code of the wrong length");
}

#[test]
fn accepts_codes_typed_with_spaces() {
    let agent = Agent::start();
    enroll_totp(&agent, "spaced", RFC_SEED_HEX, &[]);
    wait_for_fresh_step(30, 3);
    let code = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now());
    let typed = format!(" {} {} ", &code[..3], &code[3..]);
    assert_eq!(agent.verify_pam("spaced", &typed), VerifyResult::Accepted);
}

#[test]
fn accepts_previous_step_within_window_and_learns_drift() {
    let agent = Agent::start();
    enroll_totp(&agent, "late", RFC_SEED_HEX, &[]);
    wait_for_fresh_step(30, 3);
    let code = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now() - 30);
    assert_eq!(agent.ctl_verify("late", &code), 0);
    let shown = agent.ctl_ok(&["show", "late"]);
    assert!(shown.contains("drift -1 steps (-30 s)"), "{shown}");
    let two_back = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now() - 90);
    assert_eq!(
        agent.ctl_verify("late", &two_back),
        1,
        "older than the last accepted step"
    );
}

#[test]
fn hotp_accepts_within_lookahead_and_rejects_replays() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "hal",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    assert_eq!(
        agent.ctl_verify("hal", &oath_hotp(RFC_SEED_HEX, 3, 6)),
        0,
        "counter 3 within lookahead"
    );
    assert_eq!(
        agent.ctl_verify("hal", &oath_hotp(RFC_SEED_HEX, 1, 6)),
        1,
        "counter below the last used"
    );
    assert_eq!(
        agent.ctl_verify("hal", &oath_hotp(RFC_SEED_HEX, 3, 6)),
        1,
        "counter 3 again"
    );
    assert_eq!(agent.ctl_verify("hal", &oath_hotp(RFC_SEED_HEX, 4, 6)), 0);
    assert_eq!(
        agent.ctl_verify("hal", &oath_hotp(RFC_SEED_HEX, 16, 6)),
        1,
        "beyond the lookahead of 10"
    );
    let shown = agent.ctl_ok(&["show", "hal"]);
    assert!(shown.contains("next counter 5"), "{shown}");
}

#[test]
fn resync_moves_hotp_counter_forward() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "far",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let code = |counter| oath_hotp(RFC_SEED_HEX, counter, 6);
    assert_eq!(agent.ctl_verify("far", &code(200)), 1, "too far ahead for a login");
    let failed = agent.ctl(&["resync", "far", &code(200), &code(202)]);
    assert_eq!(failed.status.code(), Some(2), "codes that are not consecutive");
    let output = agent.ctl_ok(&["resync", "far", &code(200), &code(201)]);
    assert!(output.contains("resynchronised, next counter 202"), "{output}");
    let repeated = agent.ctl(&["resync", "far", &code(200), &code(201)]);
    let stderr = String::from_utf8_lossy(&repeated.stderr);
    assert_eq!(repeated.status.code(), Some(2), "codes used by the resync: {stderr}");
    assert!(
        stderr.contains("codes no newer than the last accepted one do not count"),
        "the message says why used codes match nothing: {stderr}"
    );
    assert_eq!(agent.ctl_verify("far", &code(201)), 1, "second resync code is used");
    assert_eq!(agent.ctl_verify("far", &code(202)), 0);
}

/// A token id that the user does not have is named as such, as `disable`
/// names it, and not reported as codes that match nothing.
#[test]
fn resync_names_unknown_token_id() {
    let agent = Agent::start();
    enroll_hotp(&agent, "far");
    enroll_hotp(&agent, "other");
    let code = |counter| oath_hotp(RFC_SEED_HEX, counter, 6);
    let other_token = "2";
    assert!(agent.ctl_ok(&["show", "other"]).contains("token 2:"));

    for token in [other_token, "999"] {
        let failed = agent.ctl(&["resync", "far", &code(200), &code(201), "--token", token]);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert_eq!(failed.status.code(), Some(2), "token {token}: {stderr}");
        assert!(
            stderr.contains(&format!("user far has no token {token}")),
            "token {token}: {stderr}"
        );
    }
    let output = agent.ctl_ok(&["resync", "far", &code(200), &code(201), "--token", "1"]);
    assert!(output.contains("next counter 202"), "{output}");
}

#[test]
fn resync_learns_totp_clock_drift() {
    let agent = Agent::start();
    enroll_totp(&agent, "skewed", RFC_SEED_HEX, &[]);
    wait_for_fresh_step(30, 3);
    let base = now() + 600;
    let first = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, base);
    let second = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, base + 30);
    assert_eq!(
        agent.ctl_verify("skewed", &first),
        1,
        "ten minutes ahead is outside the window"
    );
    agent.ctl_ok(&["resync", "skewed", &first, &second]);
    let shown = agent.ctl_ok(&["show", "skewed"]);
    assert!(shown.contains("drift +21 steps"), "{shown}");
    let next = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, base + 60);
    assert_eq!(agent.ctl_verify("skewed", &next), 0, "window now centred on the drift");
}

/// Computes the Mobile-OTP code of ten-second step `step` with md5sum, an
/// implementation independent of the agent's.
fn motp_code(secret: &str, pin: &str, step: u64) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = format!("{step}{secret}{pin}");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..6].to_owned()
}

#[test]
fn mobile_otp_accepts_md5sum_code() {
    let agent = Agent::start();
    let secret = "5ec4e7de5ec4e7de";
    agent.ctl_ok(&[
        "enroll",
        "mo",
        "--type",
        "motp",
        "--secret-hex",
        secret,
        "--pin",
        "9731",
        "--no-qr",
    ]);
    wait_for_fresh_step(10, 2);
    let code = motp_code(secret, "9731", now() / 10);
    assert_eq!(
        agent.ctl_verify("mo", &code.to_uppercase()),
        0,
        "hex codes compare in any case"
    );
    assert_eq!(agent.ctl_verify("mo", &code), 1, "same step again");
}

#[test]
fn replay_is_rejected_after_restart() {
    let mut agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "bob",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let code = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(agent.ctl_verify("bob", &code), 0);
    agent.restart();
    assert_eq!(agent.ctl_verify("bob", &code), 1);
    assert_eq!(agent.ctl_verify("bob", &oath_hotp(RFC_SEED_HEX, 1, 6)), 0);
}

#[test]
fn locks_after_threshold_and_unlock_clears() {
    let mut agent = Agent::start_with(Options {
        threshold: 3,
        ..Options::default()
    });
    agent.ctl_ok(&[
        "enroll",
        "carol",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    for _ in 0..3 {
        assert_eq!(agent.verify_pam("carol", "000000"), VerifyResult::Rejected);
    }
    let good = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(
        agent.verify_pam("carol", &good),
        VerifyResult::Locked,
        "right code while locked"
    );
    agent.restart();
    assert_eq!(
        agent.verify_pam("carol", &good),
        VerifyResult::Locked,
        "lock survives a restart"
    );
    let listed = agent.ctl_ok(&["list"]);
    assert!(listed.contains("yes"), "{listed}");
    agent.ctl_ok(&["unlock", "carol"]);
    assert_eq!(agent.verify_pam("carol", &good), VerifyResult::Accepted);
}

/// `unlock` counts an account as changed only when it had failures or a
/// lock, as `disable` and `enable` count only tokens that changed, so a
/// script can tell whether there was anything to lift.
#[test]
fn unlock_counts_real_changes() {
    let agent = Agent::start_with(Options {
        threshold: 2,
        ..Options::default()
    });
    enroll_hotp(&agent, "carol");
    assert_eq!(
        agent.ctl_ok(&["unlock", "carol"]).trim(),
        "done (0 changed)",
        "no failures"
    );

    assert_eq!(agent.ctl_verify("carol", "000000"), 1);
    assert_eq!(
        agent.ctl_ok(&["unlock", "carol"]).trim(),
        "done (1 changed)",
        "one failure"
    );
    assert_eq!(
        agent.ctl_ok(&["unlock", "carol"]).trim(),
        "done (0 changed)",
        "cleared already"
    );

    assert_eq!(agent.ctl_verify("carol", "000000"), 1);
    assert_eq!(agent.ctl_verify("carol", "000000"), 1);
    assert!(agent.ctl_ok(&["show", "carol"]).contains("locked until"));
    let json: serde_json::Value = serde_json::from_str(&agent.ctl_ok(&["--json", "unlock", "carol"])).unwrap();
    assert_eq!(json["changed"], 1, "locked: {json}");
    assert!(agent.ctl_ok(&["show", "carol"]).contains("locked:            no"));
}

#[test]
fn failures_from_one_host_lock_that_host() {
    let agent = Agent::start_with(Options {
        threshold: 10,
        source_threshold: 3,
        ..Options::default()
    });
    enroll_hotp(&agent, "dave");
    let ssh_from = |host: &str| Origin::Pam {
        service: "sshd".into(),
        rhost: Some(host.into()),
        tty: Some("ssh".into()),
        ruser: None,
    };
    let spray = [
        ("dave", VerifyResult::Rejected),
        ("eve", VerifyResult::NoToken),
        ("frank", VerifyResult::NoToken),
    ];
    for (user, expected) in spray {
        assert_eq!(
            agent.verify_from(user, "000000", ssh_from("192.0.2.99")),
            expected,
            "{user}"
        );
    }

    let first = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(
        agent.verify_from("dave", &first, ssh_from("192.0.2.99")),
        VerifyResult::Locked,
        "right code from the locked host"
    );
    assert_eq!(
        agent.verify_from("dave", &first, ssh_from("192.0.2.100")),
        VerifyResult::Accepted,
        "another host, with the code the locked host could not use"
    );

    // A RADIUS client's Calling-Station-Ids are counted apart from sshd's
    // hosts, and an IPv6 host is counted by its /64.
    let vpn_from = |station: &str| Origin::Radius {
        client: "vpn-gateway".into(),
        nas_identifier: None,
        nas_ip: None,
        calling_station: Some(station.into()),
        caller_delays: None,
    };
    let second = oath_hotp(RFC_SEED_HEX, 1, 6);
    assert_eq!(
        agent.verify_from("dave", &second, vpn_from("192.0.2.99")),
        VerifyResult::Accepted
    );
    for host in ["2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:ffff::3"] {
        agent.verify_from("eve", "000000", vpn_from(host));
    }
    let third = oath_hotp(RFC_SEED_HEX, 2, 6);
    assert_eq!(
        agent.verify_from("dave", &third, vpn_from("2001:db8:5:6::99")),
        VerifyResult::Rejected,
        "another address of the locked /64"
    );

    let status = agent.ctl_ok(&["status"]);
    assert!(status.contains("locked sources:   2"), "{status}");
    agent.ctl_ok(&["unlock", "--source", "192.0.2.99"]);
    let status = agent.ctl_ok(&["status"]);
    assert!(status.contains("locked sources:   1"), "{status}");
    let typo = agent.ctl_ok(&["unlock", "--source", "192.0.2.999"]);
    assert!(typo.contains("no counted source matches"), "{typo}");
    assert_eq!(agent.ctl(&["unlock", "--source", " "]).status.code(), Some(2));
    assert_eq!(
        agent.verify_from("dave", &third, ssh_from("192.0.2.99")),
        VerifyResult::Accepted,
        "unlocked by the administrator"
    );

    let log = agent.log();
    assert!(log.contains("source locked after too many failures"), "{log}");
    assert!(
        log.contains("reason=\"source locked\"") && log.contains("source=\"pam:192.0.2.99\""),
        "the rejected attempt names its source: {log}"
    );
    assert!(log.contains("pam:192.0.2.99"), "{log}");
    assert!(log.contains("radius:vpn-gateway:2001:db8:5:6::/64"), "{log}");
}

/// A NAS that writes the client's port into Calling-Station-Id gives each
/// connection another value. The port is dropped, so that reconnecting
/// does not give an attacker a fresh source count.
#[test]
fn source_port_gives_no_fresh_count() {
    let agent = Agent::start_with(Options {
        threshold: 10,
        source_threshold: 3,
        ..Options::default()
    });
    enroll_hotp(&agent, "dave");
    let vpn_from = |station: &str| Origin::Radius {
        client: "vpn-gateway".into(),
        nas_identifier: None,
        nas_ip: None,
        calling_station: Some(station.into()),
        caller_delays: None,
    };
    for station in ["192.0.2.50[4500]", "192.0.2.50[4501]", "192.0.2.50:4502"] {
        assert_eq!(
            agent.verify_from("eve", "000000", vpn_from(station)),
            VerifyResult::Rejected,
            "{station}"
        );
    }

    let first = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(
        agent.verify_from("dave", &first, vpn_from("192.0.2.50[4503]")),
        VerifyResult::Rejected,
        "a new port of the locked address"
    );
    assert_eq!(
        agent.verify_from("dave", &first, vpn_from("[2001:db8:7:8::1]:4500")),
        VerifyResult::Accepted,
        "another address"
    );
    let log = agent.log();
    assert!(log.contains("source=\"radius:vpn-gateway:192.0.2.50\""), "{log}");
    assert!(log.contains("radius:vpn-gateway:2001:db8:7:8::/64"), "{log}");
}

/// Imports `count` users named `user00001`, `user00002`, … with one HOTP
/// token each, through the admin socket in requests of 2,000.
fn import_many(agent: &Agent, count: usize) {
    let names: Vec<String> = (1..=count).map(|n| format!("user{n:05}")).collect();
    import_names(agent, &names, 2_000);
}

/// Imports one HOTP token for each of `names`, `per_request` at a time.
fn import_names(agent: &Agent, names: &[String], per_request: usize) {
    let mut client = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(60)).unwrap();
    for chunk in names.chunks(per_request) {
        let entries = chunk
            .iter()
            .map(|user| ImportEntry {
                user: user.clone(),
                token: NewToken {
                    kind: TokenKind::Hotp,
                    algorithm: HashAlgorithm::Sha1,
                    digits: 6,
                    period: 30,
                    counter: 0,
                    last_step: None,
                    secret_hex: SecretString::new(RFC_SEED_HEX),
                    pin: None,
                    label: None,
                },
                backup_codes: Vec::new(),
            })
            .collect();
        let response = client.call(Request::Import { entries }).unwrap();
        assert!(matches!(response, Response::Imported { .. }), "{response:?}");
    }
}

#[test]
fn list_pages_follow_name_order() {
    let agent = Agent::start();
    import_many(&agent, 5);
    let mut client = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(30)).unwrap();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let request = Request::List {
            after: after.take(),
            limit: Some(2),
        };
        let Response::Users { users, next } = client.call(request).unwrap() else {
            panic!("expected users");
        };
        pages.push(users.iter().map(|user| user.user.clone()).collect::<Vec<_>>());
        match next {
            Some(name) => after = Some(name),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [
            vec!["user00001", "user00002"],
            vec!["user00003", "user00004"],
            vec!["user00005"]
        ]
    );

    let Response::Users { users, next } = client
        .call(Request::List {
            after: None,
            limit: None,
        })
        .unwrap()
    else {
        panic!("expected users");
    };
    assert_eq!(users.len(), 5, "no limit lists everyone");
    assert_eq!(next, None);
}

#[test]
fn largest_list_page_fits_in_a_frame() {
    // 253-byte names of quotes, which JSON writes as two bytes each.
    let agent = Agent::start();
    let count = freeauth_proto::MAX_LIST_PAGE as usize;
    let names: Vec<String> = (0..count)
        .map(|n| {
            let suffix = format!("{n:05}");
            format!("{}{suffix}", "\"".repeat(253 - suffix.len()))
        })
        .collect();
    import_names(&agent, &names, 500);
    let mut client = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(60)).unwrap();
    let request = Request::List {
        after: None,
        limit: Some(u32::MAX),
    };
    let Response::Users { users, next } = client.call(request).unwrap() else {
        panic!("expected users");
    };
    assert_eq!(users.len(), count, "the limit is cut to the largest page");
    assert_eq!(next, None);
}

#[test]
fn list_prints_more_users_than_one_frame_holds() {
    // About 100 bytes of JSON per user: 12,000 of them exceed the 1 MiB
    // frame, which one unpaged reply could not carry.
    let agent = Agent::start();
    import_many(&agent, 12_000);
    let mut client = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(60)).unwrap();
    let unpaged = client
        .call(Request::List {
            after: None,
            limit: None,
        })
        .unwrap();
    assert!(matches!(unpaged, Response::Error { .. }), "{unpaged:?}");

    let listed = agent.ctl_ok(&["list"]);
    let rows: Vec<&str> = listed.lines().filter(|line| line.starts_with("user")).collect();
    assert_eq!(rows.len(), 12_000);
    assert!(rows.first().unwrap().starts_with("user00001 "), "{:?}", rows.first());
    assert!(rows.last().unwrap().starts_with("user12000 "), "{:?}", rows.last());
    assert_eq!(
        listed.lines().filter(|line| line.starts_with("USER")).count(),
        1,
        "one header"
    );

    let json = agent.ctl_ok(&["--json", "list"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["users"].as_array().unwrap().len(), 12_000);
}

#[test]
fn lock_expires_by_itself() {
    let agent = Agent::start_with(Options {
        threshold: 2,
        lock_seconds: 2,
        ..Options::default()
    });
    enroll_hotp(&agent, "dave");
    agent.verify_pam("dave", "000000");
    agent.verify_pam("dave", "000000");
    let good = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(agent.verify_pam("dave", &good), VerifyResult::Locked);
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(agent.verify_pam("dave", &good), VerifyResult::Accepted);
}

#[test]
fn failure_delay_grows() {
    let agent = Agent::start_with(Options {
        threshold: 10,
        failure_delay_ms: 100,
        max_failure_delay_ms: 400,
        ..Options::default()
    });
    agent.ctl_ok(&[
        "enroll",
        "erin",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let mut delays = Vec::new();
    for _ in 0..4 {
        let start = std::time::Instant::now();
        agent.verify_pam("erin", "000000");
        delays.push(start.elapsed().as_millis());
    }
    assert!(delays[0] >= 100, "{delays:?}");
    assert!(delays[1] >= 200, "{delays:?}");
    assert!(delays[2] >= 400, "{delays:?}");
    assert!(delays[3] >= 400, "capped delay still applies: {delays:?}");
    assert!(delays[3] < 1500, "delay is capped: {delays:?}");
}

#[test]
fn remote_party_learns_only_rejected() {
    let agent = Agent::start_with(Options {
        threshold: 2,
        ..Options::default()
    });
    agent.ctl_ok(&[
        "enroll",
        "locked",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    agent.ctl_ok(&[
        "enroll",
        "disabled",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    agent.ctl_ok(&[
        "enroll",
        "plain",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    agent.ctl_ok(&["disable", "disabled"]);
    agent.verify_radius("locked", "000000");
    agent.verify_radius("locked", "000000");
    let good = oath_hotp(RFC_SEED_HEX, 0, 6);
    for user in ["nobody-here", "disabled", "locked"] {
        assert_eq!(
            agent.verify_radius(user, &good),
            VerifyResult::Rejected,
            "{user} over RADIUS"
        );
    }
    assert_eq!(agent.verify_radius("plain", "000000"), VerifyResult::Rejected);
    assert_eq!(
        agent.verify_pam("nobody-here", &good),
        VerifyResult::NoToken,
        "local caller may know"
    );
    assert_eq!(agent.verify_pam("disabled", &good), VerifyResult::NoToken);
    assert_eq!(agent.verify_pam("locked", &good), VerifyResult::Locked);
    let log = agent.log();
    assert!(
        log.contains("unknown user") && log.contains("no enabled token") && log.contains("account locked"),
        "{log}"
    );
}

#[test]
fn lookup_reports_enrolment_and_lock_to_local_callers() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "frank",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let mut client = agent.agent_client();
    let enrolled = client.call(Request::Lookup { user: "frank".into() }).unwrap();
    assert!(
        matches!(
            enrolled,
            Response::Account {
                enrolled: true,
                locked: false,
                ..
            }
        ),
        "{enrolled:?}"
    );
    let unknown = client.call(Request::Lookup { user: "ghost".into() }).unwrap();
    assert!(
        matches!(unknown, Response::Account { enrolled: false, .. }),
        "{unknown:?}"
    );
}

/// Starts an agent with a lock threshold of 3, and locks the name `ghost`,
/// which has no account, with three wrong codes.
fn agent_with_locked_ghost() -> Agent {
    let agent = Agent::start_with(Options {
        threshold: 3,
        ..Options::default()
    });
    for _ in 0..3 {
        assert_eq!(agent.verify_pam("ghost", "000000"), VerifyResult::NoToken);
    }
    agent
}

/// Returns whether the agent's lookup reports `ghost` as locked.
fn ghost_locked(agent: &Agent) -> bool {
    let lookup = agent
        .agent_client()
        .call(Request::Lookup { user: "ghost".into() })
        .unwrap();
    matches!(lookup, Response::Account { locked: true, .. })
}

/// A name without an account keeps its failure count and lock across a
/// restart, as an account does, so the reply delay after a restart does
/// not tell the two apart. `unlock` clears it.
#[test]
fn unknown_name_lock_survives_restart() {
    let mut agent = agent_with_locked_ghost();
    agent.restart();
    assert!(ghost_locked(&agent), "the lock of the unknown name was lost");

    let database = agent.dir.path().join("state/freeauth.db");
    let stored = Command::new("sqlite3")
        .arg(&database)
        .arg("SELECT count(*) FROM unknown_failures")
        .output();
    if let Ok(stored) = stored {
        assert_eq!(String::from_utf8_lossy(&stored.stdout).trim(), "1");
    }
    for file in ["state/freeauth.db", "state/freeauth.db-wal"] {
        let raw = fs::read(agent.dir.path().join(file)).unwrap_or_default();
        assert!(
            !raw.windows(5).any(|window| window == b"ghost"),
            "the name itself is not stored in {file}"
        );
    }

    agent.ctl_ok(&["unlock", "ghost"]);
    assert!(!ghost_locked(&agent), "unlock clears it");
    agent.restart();
    assert!(!ghost_locked(&agent), "unlock cleared it on disk too");
}

/// Enrolling a name clears the count it collected without an account,
/// so removing the account later does not bring an old lock back.
#[test]
fn enrolment_clears_unknown_name_count() {
    let mut agent = agent_with_locked_ghost();
    enroll_hotp(&agent, "ghost");
    agent.ctl_ok(&["remove", "ghost"]);
    agent.restart();
    assert!(!ghost_locked(&agent), "the old lock came back");
}

#[test]
fn backup_codes_work_once() {
    let agent = Agent::start();
    let output = agent.ctl_ok(&[
        "--json",
        "enroll",
        "gina",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--backup-codes",
        "3",
    ]);
    let printed: serde_json::Value = serde_json::from_str(&output).unwrap();
    let codes: Vec<String> = printed["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 3);
    assert!(codes
        .iter()
        .all(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit())));
    assert_eq!(agent.verify_pam("gina", &codes[1]), VerifyResult::Accepted);
    assert_eq!(
        agent.verify_pam("gina", &codes[1]),
        VerifyResult::Rejected,
        "used backup code"
    );
    let shown = agent.ctl_ok(&["show", "gina"]);
    assert!(shown.contains("backup codes left: 2"), "{shown}");
    let database = fs::read(agent.dir.path().join("state/freeauth.db")).unwrap();
    let wal = fs::read(agent.dir.path().join("state/freeauth.db-wal")).unwrap_or_default();
    for code in &codes {
        let found = |bytes: &[u8]| bytes.windows(8).any(|w| w == code.as_bytes());
        assert!(!found(&database), "backup code stored in clear in the database");
        assert!(!found(&wal), "backup code stored in clear in the WAL");
    }
}

/// Returns the backup codes in the `--json` output of enroll or backup-codes.
fn printed_backup_codes(output: &str) -> Vec<String> {
    let printed: serde_json::Value = serde_json::from_str(output).unwrap();
    printed["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn backup_codes_replaced_and_removed() {
    let agent = Agent::start();
    let enrolled = agent.ctl_ok(&[
        "--json",
        "enroll",
        "ivy",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--backup-codes",
        "2",
    ]);
    let old = printed_backup_codes(&enrolled);

    let replaced = printed_backup_codes(&agent.ctl_ok(&["--json", "backup-codes", "ivy", "--count", "3"]));
    assert_eq!(replaced.len(), 3);
    assert_eq!(agent.verify_pam("ivy", &old[0]), VerifyResult::Rejected, "an old code");
    assert_eq!(agent.verify_pam("ivy", &replaced[2]), VerifyResult::Accepted);
    assert_eq!(
        agent.verify_pam("ivy", &replaced[2]),
        VerifyResult::Rejected,
        "a used code"
    );
    let details = agent.ctl_ok(&["show", "ivy"]);
    assert!(details.contains("backup codes left: 2"), "{details}");

    let text = agent.ctl_ok(&["backup-codes", "ivy", "--count", "1"]);
    assert!(text.contains("shown once"), "{text}");
    let removed = agent.ctl_ok(&["backup-codes", "ivy", "--count", "0"]);
    assert!(removed.contains("backup codes of ivy removed"), "{removed}");
    let details = agent.ctl_ok(&["show", "ivy"]);
    assert!(details.contains("backup codes left: 0"), "{details}");

    let unknown = agent.ctl(&["backup-codes", "nobody-here"]);
    assert_eq!(unknown.status.code(), Some(2));
    let too_many = agent.ctl(&["backup-codes", "ivy", "--count", "101"]);
    assert_eq!(too_many.status.code(), Some(2));
    let message = String::from_utf8_lossy(&too_many.stderr);
    assert!(message.contains("at most 100 backup codes"), "{message}");
}

#[test]
fn show_and_list_never_print_the_seed() {
    let agent = Agent::start();
    enroll_totp(&agent, "hank", RFC_SEED_HEX, &["--label", "phone"]);
    let seed_base32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    for args in [
        vec!["show", "hank"],
        vec!["list"],
        vec!["--json", "show", "hank"],
        vec!["status"],
    ] {
        let output = agent.ctl_ok(&args);
        assert!(
            !output.contains(RFC_SEED_HEX) && !output.contains(seed_base32),
            "{args:?}: {output}"
        );
    }
    let database = fs::read(agent.dir.path().join("state/freeauth.db")).unwrap();
    let wal = fs::read(agent.dir.path().join("state/freeauth.db-wal")).unwrap_or_default();
    let seed = b"12345678901234567890";
    assert!(
        !database.windows(20).any(|w| w == seed) && !wal.windows(20).any(|w| w == seed),
        "seed stored in clear"
    );
    assert!(!agent.log().contains(RFC_SEED_HEX));
}

#[test]
fn enroll_prints_uri_that_round_trips() {
    let agent = Agent::start();
    let output = agent.ctl_ok(&["--json", "enroll", "ivy", "--algorithm", "sha256", "--digits", "8"]);
    let printed: serde_json::Value = serde_json::from_str(&output).unwrap();
    let uri = printed["uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/FreeAuth%20test:ivy?"), "{uri}");
    let secret_hex = printed["secret_hex"].as_str().unwrap();
    assert_eq!(secret_hex.len(), 64, "a SHA-256 token gets a 32-byte secret");
    agent.ctl_ok(&["enroll", "ivy2", "--uri", uri, "--no-qr"]);
    wait_for_fresh_step(30, 3);
    let code = oath_totp(secret_hex, "sha256", 8, 30, now());
    assert_eq!(agent.ctl_verify("ivy2", &code), 0, "token enrolled from the URI");
    let text = agent.ctl_ok(&["enroll", "ivy3"]);
    assert!(
        text.contains("█") && text.contains("otpauth://"),
        "QR code and URI in text mode"
    );
}

#[test]
fn rejects_invalid_enrolments_with_clear_errors() {
    let agent = Agent::start();
    let cases: [(&[&str], &str); 5] = [
        (&["enroll", "x", "--secret", "ABC!DEF", "--no-qr"], "invalid --secret"),
        (&["enroll", "x", "--secret-hex", "3132", "--no-qr"], "at least 10 bytes"),
        (&["enroll", "x", "--digits", "7", "--no-qr"], "6 or 8 digits"),
        (&["enroll", "x", "--type", "motp", "--no-qr"], "need --pin"),
        (
            &["enroll", "x", "--uri", "otpauth://totp/x?digits=6", "--no-qr"],
            "invalid --uri",
        ),
    ];
    for (args, expected) in cases {
        let output = agent.ctl(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let listed = agent.ctl_ok(&["list"]);
    assert!(listed.contains("no users"), "{listed}");
}

#[test]
fn disable_enable_and_remove_tokens() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "jo",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    agent.ctl_ok(&["disable", "jo"]);
    assert_eq!(agent.ctl_verify("jo", &oath_hotp(RFC_SEED_HEX, 0, 6)), 1);
    agent.ctl_ok(&["enable", "jo", "--token", "1"]);
    assert_eq!(agent.ctl_verify("jo", &oath_hotp(RFC_SEED_HEX, 1, 6)), 0);
    agent.ctl_ok(&["remove", "jo"]);
    assert_eq!(agent.ctl(&["show", "jo"]).status.code(), Some(2));
}

/// `remove` counts the tokens it removed, as `disable` and `enable` count
/// the tokens they changed, also when it removes a whole account.
#[test]
fn remove_counts_removed_tokens() {
    let agent = Agent::start();
    enroll_hotp(&agent, "kim");
    enroll_totp(&agent, "kim", "3132333435363738393031323334353637383931", &[]);
    enroll_totp(&agent, "kim", "3132333435363738393031323334353637383932", &[]);

    assert_eq!(
        agent.ctl_ok(&["remove", "kim", "--token", "1"]).trim(),
        "done (1 changed)"
    );
    assert_eq!(agent.ctl_ok(&["remove", "kim"]).trim(), "done (2 changed)");
    assert_eq!(agent.ctl(&["show", "kim"]).status.code(), Some(2), "account removed");

    enroll_hotp(&agent, "lee");
    enroll_totp(&agent, "lee", "3132333435363738393031323334353637383931", &[]);
    let json: serde_json::Value = serde_json::from_str(&agent.ctl_ok(&["--json", "remove", "lee"])).unwrap();
    assert_eq!(json["type"], "done");
    assert_eq!(json["changed"], 2);
}

#[test]
fn imports_google_authenticator_file() {
    let agent = Agent::start();
    let file = agent.dir.path().join("google_authenticator");
    fs::write(&file, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n\" RATE_LIMIT 3 30\n\" WINDOW_SIZE 17\n\" DISALLOW_REUSE\n\" TOTP_AUTH\n11223344\n55667788\n").unwrap();
    let output = agent.ctl(&[
        "import",
        "--format",
        "google-authenticator",
        "kim",
        file.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wait_for_fresh_step(30, 3);
    assert_eq!(
        agent.ctl_verify("kim", &oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now())),
        0
    );
    assert_eq!(
        agent.ctl_verify("kim", "55667788"),
        0,
        "scratch code became a backup code"
    );
    assert_eq!(agent.ctl_verify("kim", "55667788"), 1);
}

#[test]
fn import_rejects_future_reuse_record() {
    let agent = Agent::start();
    let file = agent.dir.path().join("google_authenticator");
    fs::write(
        &file,
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n\" TOTP_AUTH\n\" DISALLOW_REUSE 9000000000000000000\n",
    )
    .unwrap();
    let output = agent.ctl(&[
        "import",
        "--format",
        "google-authenticator",
        "kim",
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(": line 3: DISALLOW_REUSE records time step 9000000000000000000"),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was imported."), "{stderr}");
    assert_eq!(agent.ctl(&["show", "kim"]).status.code(), Some(2), "no account");
}

/// A named pipe with no writer would block `open` forever, and a device
/// such as /dev/zero never ends. The pipe reads as empty, which imports
/// nothing, and the device is refused. A pipe with a writer, as
/// `<(ssh host cat users.oath)` gives, is read like a file.
#[test]
fn import_reads_pipes_and_refuses_devices() {
    let agent = Agent::start();
    let fifo = agent.dir.path().join("users.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo failed");

    let import = |path: &Path, input: Option<String>| {
        let path = path.to_str().unwrap();
        let output = match input {
            // A pipe on standard input, as a shell gives.
            Some(text) => agent.ctl_input(&["import", "--format", "oath", path], &text),
            None => output_within(
                Command::new(binary("freeauthctl"))
                    .arg("--config")
                    .arg(agent.config())
                    .args(["import", "--format", "oath", path]),
                Duration::from_secs(10),
            ),
        };
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (status, stderr) = import(&fifo, None);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("no token lines"), "{stderr}");
    let (status, stderr) = import(Path::new("/dev/zero"), None);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file or a pipe"), "{stderr}");
    let piped = format!("HOTP piped - {RFC_SEED_HEX}\n");
    let (status, stderr) = import(Path::new("/dev/stdin"), Some(piped));
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(agent.ctl_verify("piped", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);

    let latin1 = agent.dir.path().join("latin1.oath");
    fs::write(&latin1, b"# users\nHOTP j\xf6rg - 00\n").unwrap();
    let (status, stderr) = import(&latin1, None);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("latin1.oath: line 2: not valid UTF-8"), "{stderr}");
}

#[test]
fn imports_oath_users_file_with_counters() {
    let agent = Agent::start();
    let file = agent.dir.path().join("users.oath");
    let seed2 = "00112233445566778899aabbccddeeff00112233";
    fs::write(
        &file,
        format!("# users\nHOTP lee - {RFC_SEED_HEX} 5\nHOTP/T30/6 max - {seed2}\n"),
    )
    .unwrap();
    wait_for_fresh_step(30, 4);
    agent.ctl_ok(&["import", "--format", "oath", file.to_str().unwrap()]);
    assert_eq!(
        agent.ctl_verify("lee", &oath_hotp(RFC_SEED_HEX, 4, 6)),
        1,
        "counter before the kept one"
    );
    assert_eq!(agent.ctl_verify("lee", &oath_hotp(RFC_SEED_HEX, 5, 6)), 0);
    // The current step counts as used (pam_oath may just have taken it).
    assert_eq!(agent.ctl_verify("max", &oath_totp(seed2, "sha1", 6, 30, now())), 1);
    assert_eq!(agent.ctl_verify("max", &oath_totp(seed2, "sha1", 6, 30, now() + 30)), 0);
}

#[test]
fn import_too_large_says_part_size() {
    let agent = Agent::start();
    let file = agent.dir.path().join("users.oath");
    let lines: String = (0..8_000)
        .map(|n| format!("HOTP big{n:05} - {RFC_SEED_HEX} 0\n"))
        .collect();
    fs::write(&file, lines).unwrap();
    let output = agent.ctl(&["import", "--format", "oath", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the file has 8000 tokens"), "{stderr}");
    assert!(stderr.contains("Split the file into parts of at most"), "{stderr}");
    assert!(
        agent.ctl_ok(&["list"]).contains("no users have tokens"),
        "nothing was sent"
    );

    // The advised part size does fit.
    let fitting: usize = stderr
        .split("parts of at most ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no part size in {stderr}"));
    let part = agent.dir.path().join("part.oath");
    let first_lines: String = (0..fitting)
        .map(|n| format!("HOTP big{n:05} - {RFC_SEED_HEX} 0\n"))
        .collect();
    fs::write(&part, first_lines).unwrap();
    let imported = agent.ctl_ok(&["import", "--format", "oath", part.to_str().unwrap()]);
    assert!(imported.contains(&format!("imported {fitting} tokens")), "{imported}");
}

#[test]
fn import_with_bad_line_imports_nothing() {
    let agent = Agent::start();
    let file = agent.dir.path().join("users.oath");
    fs::write(
        &file,
        format!("HOTP pw 1234 {RFC_SEED_HEX}\nHOTP ok - {RFC_SEED_HEX}\nHOTP broken - not-hex\n"),
    )
    .unwrap();
    let output = agent.ctl(&["import", "--format", "oath", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // One run lists every problem: the static password and the bad secret.
    assert!(stderr.contains("line 1: user pw has a static password"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(agent.ctl_ok(&["list"]).contains("no users"));
}

#[test]
fn reload_keeps_old_config_when_new_is_invalid() {
    let agent = Agent::start();
    let config = agent.config();
    let original = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{original}\n[broken\n")).unwrap();
    agent.signal(1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.log().contains("configuration reload failed"), "{}", agent.log());
    fs::write(
        &config,
        original.replace("[enroll]\n", "[enroll]\nprompt = \"Token please: \"\n"),
    )
    .unwrap();
    agent.signal(1);
    std::thread::sleep(Duration::from_millis(500));
    let mut client = agent.agent_client();
    let lookup = client.call(Request::Lookup { user: "x".into() }).unwrap();
    assert!(
        matches!(lookup, Response::Account { ref prompt, .. } if prompt == "Token please: "),
        "{lookup:?}"
    );
}

#[test]
fn refuses_to_start_with_readable_key() {
    let mut agent = Agent::start();
    agent.stop();
    let key = agent.dir.path().join("state/seed.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(binary("freeauth-agentd"))
        .arg("--config")
        .arg(agent.config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unusable installation is a configuration error"
    );
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn refuses_to_start_with_open_state_folder() {
    let mut agent = Agent::start();
    agent.stop();
    fs::set_permissions(agent.dir.path().join("state"), fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(binary("freeauth-agentd"))
        .arg("--config")
        .arg(agent.config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unusable installation is a configuration error"
    );
    assert!(stderr.contains("chmod 700"), "{stderr}");
}

#[test]
fn refuses_to_start_with_wrong_key() {
    let mut agent = Agent::start();
    agent.ctl_ok(&["enroll", "k", "--no-qr"]);
    agent.stop();
    let key = agent.dir.path().join("state/seed.key");
    fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let output = Command::new(binary("freeauth-agentd"))
        .arg("--config")
        .arg(agent.config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("does not fit the database"), "{stderr}");
    fs::remove_file(&key).unwrap();
    let output = Command::new(binary("freeauth-agentd"))
        .arg("--config")
        .arg(agent.config())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("restore the key"),
        "missing key with tokens"
    );
}

/// Runs the agent binary on `agent`'s configuration, expecting it to exit
/// within 10 s, and returns its exit code and standard error.
fn start_outcome(agent: &Agent) -> (Option<i32>, String) {
    let output = output_within(
        Command::new(binary("freeauth-agentd"))
            .arg("--config")
            .arg(agent.config()),
        Duration::from_secs(10),
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Enrols an HOTP token for `alice` and a Mobile-OTP token for `mo`, and
/// locks `ghost`, a name without an account, for the rekey tests.
fn agent_for_rekey() -> Agent {
    let agent = agent_with_locked_ghost();
    enroll_hotp(&agent, "alice");
    agent.ctl_ok(&[
        "enroll",
        "mo",
        "--type",
        "motp",
        "--secret-hex",
        MOTP_SECRET,
        "--pin",
        "9731",
        "--no-qr",
    ]);
    agent
}

const MOTP_SECRET: &str = "5ec4e7de5ec4e7de";

#[test]
fn rekey_replaces_key_and_keeps_tokens() {
    let mut agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let old_key = fs::read(&key).unwrap();

    let output = agent.ctl_ok(&["rekey"]);
    assert!(output.contains("sealed 2 tokens under a new seed key"), "{output}");
    assert_ne!(fs::read(&key).unwrap(), old_key, "the key file changed");
    assert!(!agent.dir.path().join("state/seed.key.new").exists());
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!agent
        .log()
        .contains(&String::from_utf8_lossy(&old_key).trim().to_string()));

    // Seeds and PINs open under the new key, in memory and after a restart.
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
    agent.restart();
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 1, 6)), 0);
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 1, 6)), 1, "reuse");
    wait_for_fresh_step(10, 2);
    assert_eq!(agent.ctl_verify("mo", &motp_code(MOTP_SECRET, "9731", now() / 10)), 0);
    // Failure counts of names without an account are keyed by a digest
    // of the old key, so they start again.
    assert!(!ghost_locked(&agent), "the old count of the unknown name is gone");

    agent.stop();
    fs::write(&key, &old_key).unwrap();
    let (status, log) = start_outcome(&agent);
    assert_eq!(status, Some(1), "the old key no longer fits:\n{log}");
    assert!(log.contains("does not fit the database"), "{log}");
}

/// The agent committed the new seals, but the new key file was not moved
/// in place: the agent starts with the `.new` file, and the next rekey
/// moves it.
#[test]
fn rekey_interrupted_after_commit_is_finished() {
    let mut agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let new_key = agent.dir.path().join("state/seed.key.new");
    let old_key = fs::read(&key).unwrap();
    agent.ctl_ok(&["rekey"]);
    agent.stop();
    fs::rename(&key, &new_key).unwrap();
    fs::write(&key, &old_key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    agent.spawn();
    assert!(
        agent.log().contains("which is still in its temporary file"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);

    let new_bytes = fs::read(&new_key).unwrap();
    let output = agent.ctl_ok(&["rekey"]);
    assert!(output.contains("finished an earlier rekey"), "{output}");
    assert_eq!(fs::read(&key).unwrap(), new_bytes, "the committed key is in place");
    assert!(!new_key.exists());
    agent.restart();
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 1, 6)), 0);
}

/// A new key file that the database was never sealed under is removed by
/// the next rekey, which then runs in full.
#[test]
fn rekey_removes_unused_new_key() {
    let mut agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let new_key = agent.dir.path().join("state/seed.key.new");
    agent.stop();
    fs::write(&new_key, format!("{}\n", "cd".repeat(32))).unwrap();
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();
    agent.spawn();
    assert!(
        agent.log().contains("still sealed under the old key"),
        "{}",
        agent.log()
    );

    let old_key = fs::read(&key).unwrap();
    let output = agent.ctl_ok(&["rekey"]);
    assert!(output.contains("left unused by an earlier rekey"), "{output}");
    assert!(output.contains("sealed 2 tokens"), "{output}");
    let replaced = fs::read_to_string(&key).unwrap();
    assert_ne!(replaced.as_bytes(), old_key.as_slice());
    assert_ne!(replaced.trim(), "cd".repeat(32), "a fresh key, not the unused one");
    assert!(!new_key.exists());
}

/// With --json, standard output is one JSON object also when the rekey
/// first removes an unused `.new` file, which it notes on standard error.
#[test]
fn rekey_json_after_unused_new_key() {
    let agent = agent_for_rekey();
    let new_key = agent.dir.path().join("state/seed.key.new");
    fs::write(&new_key, "").unwrap();
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();

    let output = agent.ctl(&["--json", "rekey"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    assert_eq!(printed["tokens"], 2, "{printed}");
    assert_eq!(printed["new_key"], true, "{printed}");
    assert!(stderr.contains("left unused by an earlier rekey"), "{stderr}");
    assert!(!new_key.exists());
}

/// A `.new` file that cannot be a key, such as one that a run stopped
/// while writing, is removed by the next rekey as long as the current key
/// fits the database.
#[test]
fn rekey_removes_damaged_new_key() {
    let mut agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let new_key = agent.dir.path().join("state/seed.key.new");
    let valid_key = format!("{}\n", "cd".repeat(32));
    let damaged = [
        ("empty", String::new(), 0o600),
        ("not hexadecimal", "not a key\n".to_string(), 0o600),
        ("too short", "cdcd\n".to_string(), 0o600),
        ("readable by others", valid_key, 0o644),
    ];
    let mut counter = 0;
    for (case, content, mode) in damaged {
        fs::write(&new_key, &content).unwrap();
        fs::set_permissions(&new_key, fs::Permissions::from_mode(mode)).unwrap();
        let old_key = fs::read(&key).unwrap();

        let output = agent.ctl(&["rekey"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{case}: {stderr}");
        assert!(stdout.contains("left unused by an earlier rekey"), "{case}: {stdout}");
        assert!(stdout.contains("sealed 2 tokens"), "{case}: {stdout}");
        assert_ne!(fs::read(&key).unwrap(), old_key, "{case}: the key was replaced");
        assert!(!new_key.exists(), "{case}: the .new file is gone");
        assert_eq!(
            agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, counter, 6)),
            0,
            "{case}: alice after the rekey"
        );
        counter += 1;
    }

    agent.restart();
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, counter, 6)), 0);
}

/// While one rekey runs, a second one stops at once and leaves the first
/// run's `.new` file alone. Removing it as a leftover while the agent
/// seals the database under it would lose every seed.
#[test]
fn rekey_waits_for_running_rekey() {
    let agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let new_key = agent.dir.path().join("state/seed.key.new");
    let old_key = fs::read(&key).unwrap();
    let running_key = format!("{}\n", "cd".repeat(32));
    fs::write(&new_key, &running_key).unwrap();
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();

    // The lock that the running `freeauthctl rekey` holds on the key file.
    let mut holder = hold_rekey_lock(&key);

    let output = agent.ctl(&["rekey"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another `freeauthctl rekey` is running"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&new_key).unwrap(),
        running_key,
        "the .new file stays"
    );
    assert_eq!(fs::read(&key).unwrap(), old_key, "the key stays");

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success(), "flock released the key file");
    let output = agent.ctl_ok(&["rekey"]);
    assert!(output.contains("left unused by an earlier rekey"), "{output}");
    assert!(output.contains("sealed 2 tokens"), "{output}");
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
}

/// Takes the exclusive lock of a running rekey on `key` with flock(1) from
/// util-linux, which holds it until its standard input closes.
fn hold_rekey_lock(key: &Path) -> std::process::Child {
    let mut holder = Command::new("flock")
        .args(["--exclusive", "--close"])
        .arg(key)
        .args(["--command", "echo locked; cat >/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock (apt-get install util-linux)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "locked\n", "flock holds the key file");
    holder
}

/// A backup that starts while a rekey runs stops with an error. The rekey
/// would otherwise replace the key file that the backup names as the one
/// that opens the copy, and no key on disk would open it.
#[test]
fn backup_waits_for_running_rekey() {
    let agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let copy = agent.dir.path().join("copy.db");

    // The lock that a running `freeauthctl rekey` holds on the key file.
    let mut holder = hold_rekey_lock(&key);

    let output = agent.ctl(&["backup", copy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a `freeauthctl rekey` is running"), "{stderr}");
    assert!(!copy.exists(), "no copy is made");

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success(), "flock released the key file");
    let copied = agent.ctl_ok(&["backup", copy.to_str().unwrap()]);
    assert!(copied.contains("The copy opens with the seed key"), "{copied}");
    let json_copy = agent.dir.path().join("copy-json.db");
    let printed = agent.ctl_ok(&["--json", "backup", json_copy.to_str().unwrap()]);
    let value: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(value["key"].as_str(), Some(key.to_str().unwrap()), "{printed}");
    assert_eq!(value["tokens"], 2);
}

/// A configuration that names the agent's socket and key but another state
/// folder, here one with a backup of the agent's database, is rejected
/// before anything changes. Checking the copy after the agent sealed its
/// own database made the command remove the only file with the new key.
#[test]
fn rekey_rejects_other_state_folder() {
    let mut agent = agent_for_rekey();
    let dir = agent.dir.path();
    let key = dir.join("state/seed.key");
    let old_key = fs::read(&key).unwrap();
    fs::create_dir(dir.join("copy")).unwrap();
    fs::create_dir(dir.join("copy/state")).unwrap();
    fs::set_permissions(dir.join("copy/state"), fs::Permissions::from_mode(0o700)).unwrap();
    let copy = dir.join("copy/state/freeauth.db");
    agent.ctl_ok(&["backup", copy.to_str().unwrap()]);
    let stderr = failed_rekey_with_config(&agent, "state_dir = \"state\"", "state_dir = \"copy/state\"");
    assert!(stderr.contains("does not use the state folder"), "{stderr}");
    assert_eq!(fs::read(&key).unwrap(), old_key, "the key stays");
    assert!(!dir.join("state/seed.key.new").exists());

    agent.restart();
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
}

/// Runs `freeauthctl rekey` with a copy of the agent's configuration in
/// which `setting` is replaced by `other`, expecting it to fail, and
/// returns its standard error.
fn failed_rekey_with_config(agent: &Agent, setting: &str, other: &str) -> String {
    let config = fs::read_to_string(agent.config()).unwrap();
    assert!(config.contains(setting), "{config}");
    let other_config = agent.dir.path().join("other.toml");
    fs::write(&other_config, config.replace(setting, other)).unwrap();

    let output = Command::new(binary("freeauthctl"))
        .arg("--config")
        .arg(&other_config)
        .arg("rekey")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

/// A configuration that names another seed key than the agent's leaves the
/// agent without the new key file, and the error names the configuration
/// to use.
#[test]
fn rekey_rejects_other_key_path() {
    let agent = agent_for_rekey();
    let dir = agent.dir.path();
    let key = dir.join("state/seed.key");
    let old_key = fs::read(&key).unwrap();
    fs::create_dir(dir.join("keys")).unwrap();
    fs::set_permissions(dir.join("keys"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::copy(&key, dir.join("keys/seed.key")).unwrap();
    let stderr = failed_rekey_with_config(&agent, "seed_key = \"state/seed.key\"", "seed_key = \"keys/seed.key\"");
    let missing = format!("the new key {} is missing", dir.join("state/seed.key.new").display());
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(
        stderr.contains("the configuration file that this agent was started with"),
        "{stderr}"
    );
    assert!(stderr.contains("The seed key is unchanged"), "{stderr}");
    assert_eq!(fs::read(&key).unwrap(), old_key, "the agent's key stays");
    assert!(!dir.join("keys/seed.key.new").exists(), "the unused new key is removed");
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
}

/// Verifications that keep arriving while a rekey runs are decided before
/// or after it, and every token opens under the new key after a restart.
/// The engine test `rekey_runs_alone_between_batches` covers the queue
/// order exactly; here the timing varies from run to run.
#[test]
fn rekey_between_verifications_keeps_tokens() {
    const ROUNDS: u64 = 8;
    let mut agent = Agent::start();
    let users: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    for user in &users {
        enroll_hotp(&agent, user);
    }

    // Round N verifies the code of counter N of every user, on one
    // connection, until all rounds are done.
    let verifier = {
        let users = users.clone();
        let socket = agent.agent_socket();
        std::thread::spawn(move || {
            let mut client = Client::connect(&socket, "test", Duration::from_secs(30)).unwrap();
            let mut results = Vec::new();
            for round in 0..ROUNDS {
                let code = oath_hotp(RFC_SEED_HEX, round, 6);
                for user in &users {
                    results.push(verdict(client.call(verify_request(user, &code, pam_origin())).unwrap()));
                }
            }
            results
        })
    };
    let output = agent.ctl_ok(&["rekey"]);
    assert!(output.contains("sealed 40 tokens"), "{output}");
    let results = verifier.join().unwrap();
    assert_eq!(results.len(), users.len() * ROUNDS as usize);
    assert!(
        results.iter().all(|result| *result == VerifyResult::Accepted),
        "{results:?}"
    );

    agent.restart();
    let next = oath_hotp(RFC_SEED_HEX, ROUNDS, 6);
    for user in &users {
        assert_eq!(agent.verify_pam(user, &next), VerifyResult::Accepted, "{user}");
    }
}

/// A seed that does not open under the current key stops the rekey before
/// anything changes, and the error names the token.
#[test]
fn rekey_stops_at_unreadable_seed() {
    let mut agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let old_key = fs::read(&key).unwrap();
    agent.stop();
    let damaged = Command::new("sqlite3")
        .arg(agent.dir.path().join("state/freeauth.db"))
        .arg("UPDATE tokens SET sealed_seed = x'0100' WHERE id = (SELECT min(id) FROM tokens)")
        .status()
        .expect("sqlite3 (apt-get install sqlite3)");
    assert!(damaged.success());
    agent.spawn();

    assert_rekey_fails(&agent, &old_key, "do not open with the current key");
    wait_for_fresh_step(10, 2);
    assert_eq!(
        agent.ctl_verify("mo", &motp_code(MOTP_SECRET, "9731", now() / 10)),
        0,
        "the other token works"
    );
}

/// With the key file gone, a `.new` file that does not fit is no key: the
/// agent names both files and requests the key from a backup.
#[test]
fn missing_key_and_unfit_new_key_refused() {
    let mut agent = agent_for_rekey();
    agent.stop();
    let new_key = agent.dir.path().join("state/seed.key.new");
    fs::remove_file(agent.dir.path().join("state/seed.key")).unwrap();
    fs::write(&new_key, format!("{}\n", "cd".repeat(32))).unwrap();
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();
    let (status, log) = start_outcome(&agent);
    assert_eq!(status, Some(1), "{log}");
    assert!(log.contains("is missing, and"), "{log}");
    assert!(log.contains("seed.key.new does not fit the database"), "{log}");
}

/// A pipe in place of the WAL file, which the agent's user could make,
/// stops `freeauthctl rekey` with an error instead of a wait without end.
#[test]
fn rekey_refuses_pipe_as_wal() {
    let mut agent = agent_for_rekey();
    agent.stop();
    let state = agent.dir.path().join("state");
    let new_key = state.join("seed.key.new");
    fs::write(&new_key, format!("{}\n", "cd".repeat(32))).unwrap();
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();
    let wal = state.join("freeauth.db-wal");
    let _ = fs::remove_file(&wal);
    let fifo_created = Command::new("mkfifo").arg(&wal).status().unwrap();
    assert!(fifo_created.success());

    let output = output_within(
        Command::new(binary("freeauthctl"))
            .arg("--config")
            .arg(agent.config())
            .arg("rekey"),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not a regular file"), "{stderr}");
}

/// Without a running agent nothing is re-sealed, and the key stays.
#[test]
fn rekey_without_agent_keeps_key() {
    let mut agent = agent_for_rekey();
    let key = agent.dir.path().join("state/seed.key");
    let old_key = fs::read(&key).unwrap();
    agent.stop();
    assert_rekey_fails(&agent, &old_key, "cannot connect to the agent");
}

/// A missing seed key with no token left makes the agent start with a new
/// key, also after a rekey that kept the old digest key for the record of
/// a removed secret. That digest key is sealed under the lost seed key.
#[test]
fn new_key_after_rekey_and_removal() {
    let mut agent = Agent::start();
    enroll_totp(&agent, "tina", RFC_SEED_HEX, &[]);
    let code = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now());
    assert_eq!(agent.ctl_verify("tina", &code), 0);
    agent.ctl_ok(&["remove", "tina"]);
    let output = agent.ctl_ok(&["rekey"]);
    assert!(output.contains("sealed 0 tokens"), "{output}");
    agent.stop();

    fs::remove_file(agent.dir.path().join("state/seed.key")).unwrap();
    agent.spawn();
    assert!(agent.log().contains("created a new seed key"), "{}", agent.log());
    enroll_hotp(&agent, "alice");
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
}

/// Runs `freeauthctl rekey`, expecting it to fail with `error` and to
/// leave the key file as `old_key`, with no `.new` file.
fn assert_rekey_fails(agent: &Agent, old_key: &[u8], error: &str) {
    let output = agent.ctl(&["rekey"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(error), "{stderr}");
    assert!(stderr.contains("The seed key is unchanged"), "{stderr}");
    assert_eq!(fs::read(agent.dir.path().join("state/seed.key")).unwrap(), old_key);
    assert!(!agent.dir.path().join("state/seed.key.new").exists());
}

/// A configuration that is a named pipe, a device, not UTF-8 or writable by
/// every user is an error at once. Reading a pipe would wait for a writer
/// forever, /dev/zero would never end, and anyone could change an open
/// file.
#[test]
fn check_config_refuses_unsafe_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("agentd.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let latin1 = dir.path().join("latin1.toml");
    fs::write(&latin1, b"[enroll]\nissuer = \"M\xfcller\"\n").unwrap();
    let open = dir.path().join("open.toml");
    fs::write(&open, "[enroll]\nissuer = \"Example\"\n").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
    for (config, expected) in [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (latin1.as_path(), "line 2 is not valid UTF-8"),
        (open.as_path(), "open.toml is writable by every user (mode 0666)"),
    ] {
        let output = output_within(
            Command::new(binary("freeauthctl"))
                .arg("--config")
                .arg(config)
                .arg("check-config"),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{}: {stderr}", config.display());
        assert!(stderr.contains(expected), "{}: {stderr}", config.display());
    }
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentd.toml");
    fs::write(
        &config,
        "[paths]\nstate = \"x\"\n[windows]\ntotp_steps = 50\n[lockout]\nthreshold = \"ten\"\n",
    )
    .unwrap();
    let run = |command: &str| {
        let output = Command::new(binary("freeauthctl"))
            .arg("--config")
            .arg(&config)
            .arg(command)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run("check-config");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("agentd.toml:2:1: unknown setting `paths.state`"),
        "{stderr}"
    );
    assert!(stderr.contains("agentd.toml:4:14:"), "{stderr}");
    assert!(
        stderr.contains("agentd.toml:6:13: `lockout.threshold` must be an integer"),
        "{stderr}"
    );
    // Only a command that needs just the agent suggests --socket, because
    // check-config must read the broken file anyway.
    assert!(!stderr.contains("--socket"), "{stderr}");
    let (code, stderr) = run("status");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("add --socket PATH"), "{stderr}");
}

#[test]
fn ctl_reports_unreachable_agent() {
    let mut agent = Agent::start();
    agent.stop();
    let output = agent.ctl(&["list"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("cannot connect to the agent"), "{stderr}");
}

/// Sends the hello and `requests` in one write on a new agent connection,
/// reads the welcome, and returns the connection for reading the replies.
fn send_pipelined(agent: &Agent, requests: Vec<(u64, Request)>) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(agent.agent_socket()).unwrap();
    let mut batch = hello_frame();
    for (id, request) in requests {
        batch.extend(freeauth_proto::frame::encode(&freeauth_proto::RequestFrame { id, request }).unwrap());
    }
    stream.write_all(&batch).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _: freeauth_proto::HelloReply = freeauth_proto::frame::read_frame(&mut stream).unwrap();
    stream
}

#[test]
fn pipelined_requests_on_one_connection() {
    let agent = Agent::start();
    for i in 0..20 {
        enroll_hotp(&agent, &format!("p{i}"));
    }
    let code = oath_hotp(RFC_SEED_HEX, 0, 6);
    let requests = (0..20u64)
        .map(|i| (100 + i, verify_request(&format!("p{i}"), &code, pam_origin())))
        .collect();
    let mut reader = send_pipelined(&agent, requests);

    let mut ids = Vec::new();
    for _ in 0..20 {
        let frame: freeauth_proto::ResponseFrame = freeauth_proto::frame::read_frame(&mut reader).unwrap();
        assert_eq!(
            frame.response,
            Response::Verdict {
                result: VerifyResult::Accepted,
                reason: None
            }
        );
        ids.push(frame.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (100..120).collect::<Vec<_>>());
    let _ = Client::connect(&agent.agent_socket(), "t", Duration::from_secs(1)).unwrap();
}

/// A fresh code sent at the same moment on several connections, or several
/// times in a row on one connection, is accepted once. The copies meet in
/// one batch of the engine or in batches one after the other; either way
/// only the first may pass. (A users file rewritten by each login, as
/// pam_oath does, loses this under concurrent logins; see
/// docs/benchmarks-pam.md.)
#[test]
fn same_code_sent_at_once() {
    const CLIENTS: usize = 6;
    const ROUNDS: u64 = 12;
    // Five copies fail in each round; without a lock they only add delay.
    let agent = Agent::start_with(Options {
        threshold: 0,
        source_threshold: 0,
        ..Options::default()
    });
    enroll_hotp(&agent, "race");
    let socket = agent.agent_socket();
    for counter in 0..ROUNDS {
        let code = oath_hotp(RFC_SEED_HEX, counter, 6);
        let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (socket, code, start) = (socket.clone(), code.clone(), std::sync::Arc::clone(&start));
                std::thread::spawn(move || {
                    let mut client = Client::connect(&socket, "race", Duration::from_secs(10)).unwrap();
                    start.wait();
                    verdict(client.call(verify_request("race", &code, pam_origin())).unwrap())
                })
            })
            .collect();
        let results: Vec<VerifyResult> = clients.into_iter().map(|client| client.join().unwrap()).collect();
        let accepted = results
            .iter()
            .filter(|result| **result == VerifyResult::Accepted)
            .count();
        assert_eq!(accepted, 1, "counter {counter} from {CLIENTS} connections: {results:?}");
    }

    let code = oath_hotp(RFC_SEED_HEX, ROUNDS, 6);
    let copies = 8u64;
    let requests = (1..=copies)
        .map(|id| (id, verify_request("race", &code, pam_origin())))
        .collect();
    let mut reader = send_pipelined(&agent, requests);
    let mut results = Vec::new();
    for _ in 0..copies {
        let frame: freeauth_proto::ResponseFrame = freeauth_proto::frame::read_frame(&mut reader).unwrap();
        results.push(verdict(frame.response));
    }
    let accepted = results
        .iter()
        .filter(|result| **result == VerifyResult::Accepted)
        .count();
    assert_eq!(accepted, 1, "counter {ROUNDS} pipelined {copies} times: {results:?}");
}

/// Rejections that wait out the failure delay leave the connection's
/// in-flight places, so a right code sent behind them on the same
/// connection gets its reply first, although `max_in_flight` is 2.
#[test]
fn delayed_rejections_free_in_flight() {
    let agent = Agent::start_with(Options {
        failure_delay_ms: 3000,
        max_failure_delay_ms: 3000,
        threshold: 50,
        extra: "[server]\nmax_in_flight = 2\n".into(),
        ..Options::default()
    });
    enroll_hotp(&agent, "guessed");
    enroll_hotp(&agent, "quick");
    let mut requests: Vec<(u64, Request)> = (1..=4u64)
        .map(|id| (id, verify_request("guessed", "000000", pam_origin())))
        .collect();
    requests.push((5, verify_request("quick", &oath_hotp(RFC_SEED_HEX, 0, 6), pam_origin())));
    let mut reader = send_pipelined(&agent, requests);

    let first: freeauth_proto::ResponseFrame = freeauth_proto::frame::read_frame(&mut reader).unwrap();
    assert_eq!(first.id, 5, "the right code is answered before the delayed rejections");
    assert_eq!(verdict(first.response), VerifyResult::Accepted);
    for _ in 0..4 {
        let frame: freeauth_proto::ResponseFrame = freeauth_proto::frame::read_frame(&mut reader).unwrap();
        assert_eq!(verdict(frame.response), VerifyResult::Rejected);
    }
}

/// Runs a protocol exchange as user `nobody` (uid 65534) through python3,
/// and returns the response types it printed, one per request.
fn exchange_as_nobody(socket: &std::path::Path, requests: &[String]) -> Vec<String> {
    let script = r#"
import json, socket, struct, sys
def send(s, obj):
    body = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
def recv(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    size = struct.unpack(">I", head)[0]
    body = b""
    while len(body) < size:
        body += s.recv(size - len(body))
    return json.loads(body)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("closed")
    sys.exit(0)
send(s, {"version": 1, "client": "nobody-test"})
hello = recv(s)
if hello is None:
    print("closed")
    sys.exit(0)
for i, line in enumerate(sys.argv[2:]):
    send(s, {"id": i, "request": json.loads(line)})
    reply = recv(s)
    response = reply["response"]
    print(response.get("kind") or response.get("result") or response["type"])
"#;
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(socket)
        .args(requests)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A full disk under the state folder. A change that cannot be stored
/// fails with an error and accepts nothing. The agent keeps running and
/// logs failing commits and WAL checkpoints once, not for every batch or
/// ten times a second. It works again as soon as there is room, without a
/// restart.
#[test]
fn full_disk_fails_closed_and_recovers() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs in a private mount namespace (CI runs as root)");
        return;
    }
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    agent.stop();
    // The state moves to a 512 KiB tmpfs, mounted only in the agent's
    // private mount namespace; unshare and sh exec into the agent.
    let state = agent.dir.path().join("state");
    let script = format!(
        "set -e; cp -a {state} {state}.disk; mount -t tmpfs -o size=512k,mode=0700 freeauth-test {state}; \
         cp -a {state}.disk/. {state}/; exec {agentd} --config {config}",
        state = state.display(),
        agentd = binary("freeauth-agentd").display(),
        config = agent.config().display()
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    agent.spawn_with(command);
    let pid = agent.child.as_ref().unwrap().id().to_string();
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);

    let oath = agent.dir.path().join("users.oath");
    let import_tokens = |part: u32, count: u32| {
        let lines: String = (0..count)
            .map(|n| format!("HOTP p{part:02}u{n:04} - {:040x}\n", part * 10_000 + n))
            .collect();
        fs::write(&oath, lines).unwrap();
        agent.ctl(&["import", "--format", "oath", oath.to_str().unwrap()])
    };
    let import_part = |part: u32| import_tokens(part, 500);
    let rejected = (0..40)
        .map(import_part)
        .find(|output| !output.status.success())
        .expect("512 KiB never filled up");
    assert_eq!(rejected.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&rejected.stderr).contains("could not store the change"),
        "{}",
        String::from_utf8_lossy(&rejected.stderr)
    );
    // Accepted if the WAL had room for it, else an error; never a crash.
    let during = agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 1, 6));
    assert!(during == 0 || during == 2, "verify exited with {during}");
    // What room is left goes to a file, and these imports need more WAL
    // than the file has had, so each of them fails.
    let fill = format!("cat /dev/zero > {}/filler 2>/dev/null; true", state.display());
    let filled = Command::new("nsenter")
        .args(["-t", &pid, "-m", "sh", "-c", &fill])
        .status()
        .unwrap();
    assert!(filled.success());
    for part in 50..53 {
        assert_eq!(
            import_tokens(part, 2000).status.code(),
            Some(2),
            "an import with no room"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    // Reads still work while no commit with changes fits on the disk, also
    // when the maintenance tick's fold of the use log fails beside them.
    for _ in 0..5 {
        let status = agent.ctl(&["status"]);
        assert!(status.status.success(), "{status:?}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let failed_lines = agent.log().matches("WAL checkpoint failed").count();
    assert!(failed_lines <= 1, "{failed_lines} lines about failed checkpoints");
    let commit_lines = agent.log().matches("database commit failed").count();
    assert_eq!(commit_lines, 1, "lines about failed commits:\n{}", agent.log());

    let room = Command::new("nsenter")
        .args(["-t", &pid, "-m", "mount", "-o", "remount,size=64m"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(room.success());
    // Code 1 was used, or kept as used because its commit failed.
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 1, 6)), 1);
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 2, 6)), 0);
    assert!(import_part(99).status.success(), "{}", agent.log());
    assert!(agent.log().contains("database commits work again"), "{}", agent.log());
    if failed_lines == 1 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.log().contains("WAL checkpoint works again") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(agent.log().contains("WAL checkpoint works again"), "{}", agent.log());
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

#[test]
fn non_root_caller_may_ask_only_about_itself() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run a client as uid 65534 (CI runs as root)");
        return;
    }
    let agent = Agent::start_with(Options {
        extra: "[access]\nlocal_requests_per_minute = 4\n".into(),
        ..Options::default()
    });
    agent.ctl_ok(&[
        "enroll",
        "nobody",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    agent.ctl_ok(&[
        "enroll",
        "alice",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let code = oath_hotp(RFC_SEED_HEX, 0, 6);
    let verify =
        |user: &str, origin: &str| format!(r#"{{"type":"verify","user":"{user}","code":"{code}","origin":{origin}}}"#);
    let pam = r#"{"type":"pam","service":"xlock","rhost":null,"tty":":0","ruser":null}"#;
    let radius = r#"{"type":"radius","client":"x","nas_identifier":null,"nas_ip":null,"calling_station":null}"#;
    let requests = vec![
        r#"{"type":"lookup","user":"alice"}"#.to_owned(),
        verify("alice", pam),
        verify("nobody", radius),
        r#"{"type":"lookup","user":"nobody"}"#.to_owned(),
        verify("nobody", pam),
        r#"{"type":"list"}"#.to_owned(),
        verify("nobody", pam),
        verify("nobody", pam),
        verify("nobody", pam),
    ];
    let answers = exchange_as_nobody(&agent.agent_socket(), &requests);
    assert_eq!(
        answers,
        [
            "forbidden",
            "forbidden",
            "forbidden",
            "account",
            "accepted",
            "forbidden",
            "rejected",
            "rejected",
            "rate_limited"
        ]
    );
    assert_eq!(
        agent.ctl_verify("alice", &code),
        0,
        "alice's code was not consumed by nobody"
    );
    let admin = exchange_as_nobody(&agent.admin_socket(), &[]);
    assert_eq!(admin, ["closed"], "admin socket refuses other users");
}

#[test]
fn importing_a_file_twice_is_refused() {
    let agent = Agent::start();
    let file = agent.dir.path().join("users.oath");
    fs::write(&file, format!("HOTP twice - {RFC_SEED_HEX}\n")).unwrap();
    agent.ctl_ok(&["import", "--format", "oath", file.to_str().unwrap()]);
    let again = agent.ctl(&["import", "--format", "oath", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already has tokens"), "{stderr}");
    let shown = agent.ctl_ok(&["show", "twice"]);
    assert_eq!(shown.matches("token ").count(), 1, "{shown}");
}

#[test]
fn disabling_tokens_stops_backup_codes() {
    let agent = Agent::start();
    let output = agent.ctl_ok(&[
        "--json",
        "enroll",
        "liz",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--backup-codes",
        "1",
    ]);
    let printed: serde_json::Value = serde_json::from_str(&output).unwrap();
    let backup = printed["backup_codes"][0].as_str().unwrap().to_owned();
    agent.ctl_ok(&["disable", "liz"]);
    assert_eq!(agent.verify_pam("liz", &backup), VerifyResult::NoToken);
    agent.ctl_ok(&["enable", "liz"]);
    assert_eq!(agent.verify_pam("liz", &backup), VerifyResult::Accepted);
}

#[test]
fn backup_codes_warn_without_enabled_token() {
    let agent = Agent::start();
    enroll_hotp(&agent, "lea");
    agent.ctl_ok(&["disable", "lea"]);

    let output = agent.ctl(&["backup-codes", "lea", "--count", "2"]);
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("note: lea has no enabled token"), "{stderr}");
    let details = agent.ctl_ok(&["show", "lea"]);
    assert!(
        details.contains("backup codes left: 2 (rejected while no token is enabled)"),
        "{details}"
    );

    agent.ctl_ok(&["enable", "lea"]);
    let output = agent.ctl(&["backup-codes", "lea", "--count", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("note:"), "{stderr}");
    let details = agent.ctl_ok(&["show", "lea"]);
    assert!(details.contains("backup codes left: 2\n"), "{details}");
}

#[test]
fn removing_last_token_removes_the_user() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "max",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    agent.ctl_ok(&["remove", "max", "--token", "1"]);
    assert!(agent.ctl_ok(&["list"]).contains("no users"));
}

#[test]
fn check_config_reports_open_state_folder() {
    let mut agent = Agent::start();
    agent.stop();
    fs::set_permissions(agent.dir.path().join("state"), fs::Permissions::from_mode(0o755)).unwrap();
    let output = agent.ctl(&["check-config"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chmod 700"), "{stderr}");
    assert!(stderr.contains("state folder"), "{stderr}");
    assert!(!stderr.contains("seed key"), "{stderr}");
}

#[test]
fn check_config_names_state_owner() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to give the state folder to uid 65534 (CI runs as root)");
        return;
    }
    let mut agent = Agent::start();
    agent.stop();
    let state = agent.dir.path().join("state");
    for entry in fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::lchown(&path, Some(65534), None).unwrap();
    }
    std::os::unix::fs::lchown(&state, Some(65534), None).unwrap();
    let output = agent.ctl(&["check-config"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("the agent must run as"), "{stdout}");
    assert!(stdout.contains("uid 65534"), "{stdout}");
    let checked = Command::new(binary("freeauth-agentd"))
        .arg("--check")
        .arg("--config")
        .arg(agent.config())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("uid 65534"), "{stdout}");
}

#[test]
fn stop_lets_delayed_reply_finish() {
    let mut agent = Agent::start_with(Options {
        failure_delay_ms: 1500,
        max_failure_delay_ms: 1500,
        ..Options::default()
    });
    agent.ctl_ok(&[
        "enroll",
        "ned",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let socket = agent.agent_socket();
    let waiter = std::thread::spawn(move || {
        let mut client = Client::connect(&socket, "t", Duration::from_secs(10)).unwrap();
        client.call(verify_request("ned", "000000", pam_origin()))
    });
    std::thread::sleep(Duration::from_millis(300));
    agent.stop();
    let reply = waiter.join().unwrap().expect("reply before the agent exits");
    assert_eq!(verdict(reply), VerifyResult::Rejected);
}

#[test]
fn created_files_are_private() {
    let agent = Agent::start();
    agent.ctl_ok(&["enroll", "oz", "--no-qr"]);
    for name in ["freeauth.db", "freeauth.db-wal", "freeauth.db-shm", "seed.key"] {
        let path = agent.dir.path().join("state").join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
    }
}

#[test]
fn enroll_rejects_options_the_type_ignores() {
    let agent = Agent::start();
    let cases: [(&[&str], &str); 4] = [
        (
            &["enroll", "x", "--type", "motp", "--pin", "1234", "--digits", "8"],
            "--digits does not apply",
        ),
        (
            &["enroll", "x", "--type", "hotp", "--period", "60"],
            "--period does not apply",
        ),
        (&["enroll", "x", "--counter", "5"], "--counter does not apply"),
        (&["enroll", "x", "--pin", "1234"], "--pin applies only"),
    ];
    for (args, expected) in cases {
        let output = agent.ctl(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let uri = "otpauth://totp/x?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    assert_eq!(
        agent.ctl(&["enroll", "x", "--uri", uri, "--digits", "8"]).status.code(),
        Some(2)
    );
}

#[test]
fn supplied_secret_is_read_from_stdin_and_not_printed() {
    let agent = Agent::start();
    let output = agent.ctl_input(
        &["enroll", "sam", "--type", "hotp", "--secret-hex", "-"],
        &format!("{RFC_SEED_HEX}\n"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        !stdout.contains("otpauth://") && !stdout.contains("GEZDGNBV"),
        "{stdout}"
    );
    assert_eq!(agent.ctl_verify("sam", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
}

/// A value read from standard input that is longer than the 1024 bytes
/// that freeauthctl reads is an error. Cut short, this URI would lose the
/// end of its counter and enrol the token at counter 1 instead of 1000,
/// so that codes used before the move would be accepted again.
#[test]
fn uri_from_stdin_longer_than_limit() {
    let agent = Agent::start();
    let prefix = "otpauth://hotp/Example:long?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&image=";
    let counter = "&counter=1000";
    let padding = "a".repeat(1024 - prefix.len() - counter.len() + 3);
    let uri = format!("{prefix}{padding}{counter}");
    assert_eq!(uri.len(), 1027, "the limit falls inside the counter");
    // Two-byte characters, cut in the middle by the limit.
    let accented = format!("{prefix}{}{counter}", "\u{e9}".repeat(500));

    for line in [uri, accented] {
        let output = agent.ctl_input(&["enroll", "long", "--uri", "-"], &format!("{line}\n"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("longer than 1024 bytes"), "{stderr}");
    }
    assert_eq!(agent.ctl(&["show", "long"]).status.code(), Some(2), "no account");
}

/// An empty code, from an unset shell variable or an empty pipe, is a
/// usage error: it is not sent, so it counts no failure against the user.
#[test]
fn verify_rejects_empty_code_locally() {
    let agent = Agent::start_with(Options {
        threshold: 2,
        ..Options::default()
    });
    enroll_hotp(&agent, "alice");
    let attempts = [
        ("empty argument", agent.ctl(&["verify", "alice", ""])),
        ("blank argument", agent.ctl(&["verify", "alice", "  "])),
        ("no line on stdin", agent.ctl_input(&["verify", "alice", "-"], "")),
        ("empty line on stdin", agent.ctl_input(&["verify", "alice", "-"], "\n")),
    ];
    for (case, output) in attempts {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains("nothing was sent to the agent"), "{case}: {stderr}");
    }
    let shown = agent.ctl_ok(&["show", "alice"]);
    assert!(shown.contains("failures:          0"), "{shown}");
    assert!(shown.contains("locked:            no"), "{shown}");
}

#[test]
fn socket_option_works_with_broken_config() {
    let agent = Agent::start();
    let config = agent.config();
    let original = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{original}\n[lockout]\ntreshold = 3\n")).unwrap();
    let strict = agent.ctl(&["list"]);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(2));
    assert!(stderr.contains("--socket"), "{stderr}");
    let socket = agent.admin_socket();
    let lenient = agent.ctl(&["--socket", socket.to_str().unwrap(), "list"]);
    assert!(lenient.status.success(), "{}", String::from_utf8_lossy(&lenient.stderr));
}

#[test]
fn output_to_a_closed_pipe_is_not_a_crash() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "pipe",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    // The reader closes its end at once, so the first write gets EPIPE.
    let script = format!(
        "{} --config {} list | (exec 0<&-; true); echo ${{PIPESTATUS[0]}}",
        binary("freeauthctl").display(),
        agent.config().display()
    );
    let output = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let status = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.trim() == "0",
        "exit status {status}; stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}

#[test]
fn same_secret_twice_for_one_user_is_refused() {
    let agent = Agent::start();
    agent.ctl_ok(&[
        "enroll",
        "dup",
        "--type",
        "hotp",
        "--secret-hex",
        RFC_SEED_HEX,
        "--no-qr",
    ]);
    let again = agent.ctl(&["enroll", "dup", "--secret-hex", RFC_SEED_HEX, "--no-qr"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already has token 1 with this secret"), "{stderr}");
}

/// One account has at most 16 tokens. freeauthctl refuses a file with more
/// lines of one user, and the agent an import or enrolment beyond them. A
/// file of 4,800 tokens of one user once held the engine for seconds,
/// while it compared each new secret with all the others.
#[test]
fn tokens_per_account_are_capped() {
    let agent = Agent::start();
    let secret = |n: u32| format!("{:040x}", 0x1000 + n);
    let oath = agent.dir.path().join("many.oath");
    let lines: String = (0..17).map(|n| format!("HOTP many - {}\n", secret(n))).collect();
    fs::write(&oath, lines).unwrap();
    let rejected = agent.ctl(&["import", "--format", "oath", oath.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert_eq!(rejected.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("many.oath: line 17: user many has more than 16 tokens"),
        "{stderr}"
    );

    let entry = |n: u32| ImportEntry {
        user: "many".into(),
        token: NewToken {
            kind: TokenKind::Hotp,
            algorithm: HashAlgorithm::Sha1,
            digits: 6,
            period: 30,
            counter: 0,
            last_step: None,
            secret_hex: SecretString::new(secret(n)),
            pin: None,
            label: None,
        },
        backup_codes: Vec::new(),
    };
    let mut client = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(60)).unwrap();
    let response = client
        .call(Request::Import {
            entries: (0..17).map(entry).collect(),
        })
        .unwrap();
    assert!(
        matches!(&response, Response::Error { message, .. } if message.contains("already has 16 tokens, the most one account may have")),
        "{response:?}"
    );
    assert_eq!(agent.ctl(&["show", "many"]).status.code(), Some(2), "half imported");

    let response = client
        .call(Request::Import {
            entries: (0..16).map(entry).collect(),
        })
        .unwrap();
    assert!(matches!(response, Response::Imported { .. }), "{response:?}");
    let more = agent.ctl(&["enroll", "many", "--no-qr"]);
    assert_eq!(more.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&more.stderr).contains("already has 16 tokens"));
}

/// `show` prints labels and names to an administrator's terminal, and a
/// member of the admin group may set them. Escape sequences and huge
/// labels are refused. Invisible format characters, which names in Persian
/// and Indic scripts need, are accepted and printed escaped, also in error
/// messages.
#[test]
fn names_and_labels_stay_printable() {
    let agent = Agent::start();
    for (user, label, expected) in [
        (
            "gm",
            "\u{1b}]0;owned\u{7}\u{1b}[2J",
            "label must not contain control characters",
        ),
        ("gm", "phone\u{9b}31m", "label must not contain control characters"),
        ("gm", &"x".repeat(129), "label must be 1 to 128 bytes long"),
        (
            "bad\u{1b}[2Jname",
            "phone",
            "user name must not contain control characters",
        ),
    ] {
        let output = agent.ctl(&["enroll", user, "--label", label, "--no-qr"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    agent.ctl_ok(&["enroll", "gm", "--label", "Jos\u{e9}'s phone \u{2014} spare", "--no-qr"]);
    let details = agent.ctl_ok(&["show", "gm"]);
    assert!(details.contains("label Jos\u{e9}'s phone \u{2014} spare"), "{details}");
    // A Persian name with a zero-width non-joiner, and a label with a
    // right-to-left override: stored as given, printed escaped.
    let persian = "\u{639}\u{644}\u{6cc}\u{200c}\u{632}\u{627}\u{62f}\u{647}";
    let hotp = ["--type", "hotp", "--secret-hex", RFC_SEED_HEX, "--no-qr"];
    agent.ctl_ok(&[&["enroll", persian, "--label", "gnp.exe\u{202e}"][..], &hotp[..]].concat());
    assert_eq!(agent.ctl_verify(persian, &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
    let details = agent.ctl_ok(&["show", persian]);
    assert!(details.contains("\u{639}\u{644}\u{6cc}\\u{200c}\u{632}"), "{details}");
    assert!(details.contains("label gnp.exe\\u{202e}"), "{details}");
    assert!(agent.ctl_ok(&["list"]).contains("\\u{200c}"));

    let oath = agent.dir.path().join("bidi.oath");
    fs::write(&oath, format!("HOTP us\u{202e}er 1234 {RFC_SEED_HEX}\n")).unwrap();
    let quoted = agent.ctl(&["import", "--format", "oath", oath.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&quoted.stderr);
    assert_eq!(quoted.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("user us\\u{202e}er has a static password"), "{stderr}");
    let empty = agent.ctl(&["show", ""]);
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("user name must be 1 to 253 bytes long"), "{stderr}");
}

/// Values longer than any real one get a message that names the problem,
/// from freeauthctl before it sends them, and from the agent for a client
/// that sends them anyway (not "request 0 while request 1 was pending").
#[test]
fn overlong_values_get_clear_errors() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let long = "1".repeat(600);
    for (args, expected) in [
        (
            vec!["verify", "alice", &long],
            "a code is at most 64 bytes long, and this one has 600",
        ),
        (
            vec!["resync", "alice", "123456", &long],
            "a code is at most 64 bytes long",
        ),
        (
            vec!["enroll", "zed", "--secret-hex", &"ab".repeat(300), "--no-qr"],
            "a secret has at most 128 bytes, and this one has 300",
        ),
        (
            vec![
                "enroll",
                "zed",
                "--type",
                "motp",
                "--secret-hex",
                "0123456789abcdef",
                "--pin",
                &long,
            ],
            "Mobile-OTP PIN must be 4 to 16 digits",
        ),
    ] {
        let output = agent.ctl(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let mut client = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(10)).unwrap();
    let response = client.call(verify_request("alice", &long, Origin::Admin {}));
    assert!(
        matches!(
            &response,
            Ok(Response::Error {
                kind: ErrorKind::Malformed,
                ..
            })
        ),
        "{response:?}"
    );
}

/// `backup` copies the database while the agent runs, and while it is
/// stopped. A restored copy has the tokens and the uses recorded before the
/// copy was made, and none made later: a later code works once more.
#[test]
fn backup_copies_and_restores() {
    use std::os::unix::fs::MetadataExt;
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let code = |counter| oath_hotp(RFC_SEED_HEX, counter, 6);
    assert_eq!(agent.ctl_verify("alice", &code(0)), 0);

    let copy = agent.dir.path().join("copy.db");
    let copied = agent.ctl_ok(&["backup", copy.to_str().unwrap()]);
    assert!(copied.contains("copied 1 users and 1 tokens"), "{copied}");
    assert!(copied.contains("The copy opens with the seed key"), "{copied}");
    let json_copy = agent.dir.path().join("copy-json.db");
    let printed = agent.ctl_ok(&["--json", "backup", json_copy.to_str().unwrap()]);
    let value: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let key = agent.dir.path().join("state/seed.key");
    assert_eq!(value["key"].as_str(), Some(key.to_str().unwrap()), "{printed}");
    assert_eq!(value["tokens"], 1);
    assert_eq!(fs::metadata(&copy).unwrap().mode() & 0o777, 0o600);
    let again = agent.ctl(&["backup", copy.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("File exists"));
    let no_folder = agent.dir.path().join("missing").join("copy.db");
    let missing = agent.ctl(&["backup", no_folder.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(message.contains("missing does not exist"), "{message}");
    assert!(!message.contains(".partial"), "{message}");
    assert_eq!(agent.ctl_verify("alice", &code(1)), 0);

    agent.stop();
    let stopped = agent.dir.path().join("stopped.db");
    let copied = agent.ctl_ok(&["backup", stopped.to_str().unwrap()]);
    assert!(copied.contains("copied 1 users and 1 tokens"), "{copied}");

    let state = agent.dir.path().join("state");
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(state.join(format!("freeauth.db{suffix}")));
    }
    fs::copy(&copy, state.join("freeauth.db")).unwrap();
    agent.spawn();
    assert_eq!(agent.ctl_verify("alice", &code(0)), 1, "used before the copy");
    assert_eq!(agent.ctl_verify("alice", &code(1)), 0, "used after the copy");
    assert_eq!(agent.ctl_verify("alice", &code(1)), 1);
}

/// After a clean stop, freeauth.db alone contains every change, also one
/// committed just before the stop: an administrator who copies only that
/// file while the agent is stopped loses nothing.
#[test]
fn clean_stop_leaves_complete_database_file() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    // The checkpoint thread opens the database on its first run, 100 ms
    // after the start. From then on its connection keeps SQLite from
    // deleting the WAL when the engine's connection closes.
    std::thread::sleep(Duration::from_millis(300));
    let code = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(agent.ctl_verify("alice", &code), 0);
    agent.stop();

    let state = agent.dir.path().join("state");
    let wal_len = fs::metadata(state.join("freeauth.db-wal")).map_or(0, |meta| meta.len());
    assert_eq!(wal_len, 0, "the WAL still holds changes after a clean stop");

    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(state.join(format!("freeauth.db{suffix}")));
    }
    agent.spawn();
    assert_eq!(
        agent.ctl_verify("alice", &code),
        1,
        "the code used before the stop is missing from freeauth.db"
    );
}

/// A backup killed while it copies (Ctrl-C, a timeout in a cron job) must
/// not leave a file under the requested name, which would pass for a copy.
#[test]
fn killed_backup_leaves_no_copy() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    agent.stop();
    // About 200 MB, so that the copy takes long enough to be killed.
    let state = agent.dir.path().join("state");
    let status = Command::new("sqlite3")
        .arg(state.join("freeauth.db"))
        .arg("CREATE TABLE ballast (b); INSERT INTO ballast SELECT randomblob(1000000) FROM generate_series(1, 200);")
        .status()
        .unwrap();
    assert!(status.success());
    let folder = agent.dir.path().join("copies");
    fs::create_dir(&folder).unwrap();
    let dest = folder.join("copy.db");

    let mut child = Command::new(binary("freeauthctl"))
        .arg("--config")
        .arg(agent.config())
        .arg("backup")
        .arg(&dest)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let writing = || {
        fs::read_dir(&folder)
            .unwrap()
            .any(|entry| entry.unwrap().metadata().map(|meta| meta.len() > 0).unwrap_or(false))
    };
    while !writing() {
        assert!(Instant::now() < deadline, "the backup wrote nothing");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(child.try_wait().unwrap().is_none(), "the copy ended before the kill");
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        !dest.exists(),
        "a killed backup left a partial copy at {}",
        dest.display()
    );
}

/// SQLite reads a name starting with `file:` as a URI, and `:memory:` as an
/// in-memory database. A backup given such a relative path must still land
/// in the file of that name.
#[test]
fn backup_to_sqlite_special_names() {
    let agent = Agent::start();
    enroll_hotp(&agent, "alice");
    let folder = agent.dir.path().join("copies");
    fs::create_dir(&folder).unwrap();

    for name in ["file:copy.db", ":memory:"] {
        let output = Command::new(binary("freeauthctl"))
            .arg("--config")
            .arg(agent.config())
            .args(["backup", name])
            .current_dir(&folder)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let copy = fs::read(folder.join(name)).unwrap();
        assert!(
            copy.starts_with(b"SQLite format 3\0"),
            "{name}: the named file holds the copy"
        );
    }
    let mut files: Vec<_> = fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, [":memory:", "file:copy.db"], "no other file was written");
}

/// A socket folder deleted while the agent runs would leave it unreachable
/// for new connections, and every login failing closed without a word.
/// The agent notices within seconds, logs why, and stops with status 1, so
/// that systemd starts it again with new sockets.
#[test]
fn removed_socket_stops_the_agent() {
    let mut agent = Agent::start();
    enroll_hotp(&agent, "alice");
    fs::remove_dir_all(agent.dir.path().join("run")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent runs on without its sockets");
        std::thread::sleep(Duration::from_millis(50));
    };
    agent.child = None;
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    assert!(
        agent.log().contains("a socket file was removed or replaced"),
        "{}",
        agent.log()
    );
    agent.spawn();
    assert_eq!(agent.ctl_verify("alice", &oath_hotp(RFC_SEED_HEX, 0, 6)), 0);
}

#[test]
fn overlong_user_names_are_refused() {
    let agent = Agent::start();
    let long = "x".repeat(300);
    let response = agent
        .agent_client()
        .call(verify_request(&long, "123456", pam_origin()))
        .unwrap();
    assert!(
        matches!(
            response,
            Response::Error {
                kind: freeauth_proto::ErrorKind::Invalid,
                ..
            }
        ),
        "{response:?}"
    );
    assert!(!agent.log().contains(&long), "the name was not logged");
}

#[test]
fn local_user_connections_are_capped() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run a client as uid 65534 (CI runs as root)");
        return;
    }
    let agent = Agent::start();
    let script = r#"
import json, socket, struct, sys
held = []
welcomed = 0
for i in range(12):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    body = json.dumps({"version": 1, "client": "holder"}).encode()
    try:
        s.sendall(struct.pack(">I", len(body)) + body)
        s.settimeout(2)
        if len(s.recv(4)) == 4:
            welcomed += 1
    except OSError:
        pass
    held.append(s)
print(welcomed)
"#;
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(agent.agent_socket())
        .output()
        .unwrap();
    let welcomed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(welcomed.trim(), "8", "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        agent.verify_pam("nobody-else", "123456"),
        VerifyResult::NoToken,
        "root still served"
    );
}

#[test]
fn ctl_refuses_a_fake_admin_socket() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run a fake listener as uid 65534 (CI runs as root)");
        return;
    }
    let agent = Agent::start();
    let fake_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(fake_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let fake = fake_dir.path().join("admin.sock");
    let script = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(4)\nheld = []\nwhile True:\n    held.append(s.accept())\n";
    let mut listener = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&fake)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if fake.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = agent.ctl(&["--socket", fake.to_str().unwrap(), "enroll", "eve", "--no-qr"]);
    // Without a configuration there is no state folder to compare with:
    // only root or the caller's own uid is trusted then.
    let missing = fake_dir.path().join("missing.toml");
    let without_config = Command::new(binary("freeauthctl"))
        .arg("--config")
        .arg(&missing)
        .args(["--socket", fake.to_str().unwrap(), "enroll", "eve", "--no-qr"])
        .output()
        .unwrap();
    let _ = listener.kill();
    let _ = listener.wait();
    for output in [output, without_config] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("refusing to talk to it"), "{stderr}");
    }
}

#[test]
fn init_for_user_creates_owned_files() {
    if !freeauth_e2e::pam::running_as_root() {
        eprintln!("skipped: init --user needs root");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    // The key's folder stays root's, as /etc/freeauth is.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("agentd.toml");
    fs::write(&config, "[paths]\nstate_dir = \"state\"\nseed_key = \"seed.key\"\n").unwrap();
    let init = || {
        Command::new(binary("freeauthctl"))
            .args(["--config", config.to_str().unwrap(), "init", "--user", "nobody"])
            .output()
            .unwrap()
    };

    let first = init();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let state = fs::metadata(dir.path().join("state")).unwrap();
    assert_eq!(state.uid(), 65534);
    assert_eq!(state.mode() & 0o7777, 0o700);
    let key = fs::metadata(dir.path().join("seed.key")).unwrap();
    assert_eq!(key.uid(), 65534);
    assert_eq!(key.mode() & 0o7777, 0o600);
    assert!(
        !dir.path().join("state/freeauth.db").exists(),
        "the database is left to the agent"
    );
    let key_text = fs::read(dir.path().join("seed.key")).unwrap();

    let again = init();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists; kept it"));
    assert_eq!(
        fs::read(dir.path().join("seed.key")).unwrap(),
        key_text,
        "the key is kept"
    );

    std::os::unix::fs::chown(dir.path().join("seed.key"), Some(0), Some(0)).unwrap();
    let wrong_owner = init();
    assert_eq!(wrong_owner.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&wrong_owner.stderr);
    assert!(stderr.contains("belongs to uid 0, not to nobody"), "{stderr}");
}

/// The state folder belongs to the agent's user, who can replace the new
/// key file with a symbolic link while `init --user` runs as root. The key
/// must be given to that user through the open file, so that the link's
/// target keeps its owner.
#[test]
fn init_for_user_ignores_swapped_key() {
    if !freeauth_e2e::pam::running_as_root() {
        eprintln!("skipped: init --user needs root");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let target = dir.path().join("root-file");
    fs::write(&target, "root's\n").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("agentd.toml");
    fs::write(
        &config,
        "[paths]\nstate_dir = \"state\"\nseed_key = \"state/seed.key\"\n",
    )
    .unwrap();

    // Acts as the folder's owner: moves the key away as soon as it
    // exists and puts a link to the root-owned file in its place.
    let key = state.join("seed.key");
    let link_target = target.clone();
    let swapper = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if fs::rename(&key, key.with_file_name("moved")).is_ok() {
                std::os::unix::fs::symlink(&link_target, &key).unwrap();
                return true;
            }
        }
        false
    });
    let output = Command::new(binary("freeauthctl"))
        .args(["--config", config.to_str().unwrap(), "init", "--user", "nobody"])
        .output()
        .unwrap();
    assert!(swapper.join().unwrap(), "the key file never appeared: {output:?}");

    let meta = fs::symlink_metadata(&target).unwrap();
    assert_eq!(meta.uid(), 0, "init --user gave the link's target to nobody");
    assert_eq!(meta.gid(), 0, "init --user gave the link's target to nogroup");
    let moved = fs::metadata(state.join("moved")).unwrap();
    assert_eq!(moved.uid(), 65534, "the key itself belongs to nobody");
}

/// The exit status of verify and enroll must not depend on whether their
/// output could be written: a rejected code stays 1 when the reader of
/// standard output has gone away, and lost output is an error.
#[test]
fn ctl_exit_status_without_stdout() {
    let agent = Agent::start_with(Options {
        failure_delay_ms: 300,
        max_failure_delay_ms: 300,
        ..Options::default()
    });
    enroll_totp(&agent, "alice", RFC_SEED_HEX, &["--type", "hotp"]);
    let command = |args: &[&str]| {
        let mut command = Command::new(binary("freeauthctl"));
        command.arg("--config").arg(agent.config()).args(args);
        command.stdin(std::process::Stdio::null());
        command.stderr(std::process::Stdio::piped());
        command
    };
    let dev_full = || fs::OpenOptions::new().write(true).open("/dev/full").unwrap();

    let rejected = command(&["verify", "alice", "000000"])
        .stdout(dev_full())
        .output()
        .unwrap();
    assert_eq!(rejected.status.code(), Some(1), "verify with a full disk");

    // The failure delay lets the reader go away before the verdict is printed.
    let mut child = command(&["verify", "alice", "000000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "verify into a closed pipe");

    let enrolled = command(&["enroll", "bob", "--no-qr"])
        .stdout(dev_full())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&enrolled.stderr);
    assert_eq!(
        enrolled.status.code(),
        Some(2),
        "enroll whose secret was not written: {stderr}"
    );
    assert!(stderr.contains("cannot write to standard output"), "{stderr}");
}

/// A code from a token whose clock is 5 minutes ahead is rejected like any
/// wrong code, and the reason names the clock offset for the administrator.
#[test]
fn code_from_fast_clock_names_the_clock() {
    let agent = Agent::start();
    enroll_totp(&agent, "alice", RFC_SEED_HEX, &[]);
    wait_for_fresh_step(30, 3);
    let code = oath_totp(RFC_SEED_HEX, "sha1", 6, 30, now() + 300);
    let rejected = agent.ctl(&["verify", "alice", &code]);
    assert_eq!(rejected.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&rejected.stdout);
    assert!(stdout.contains("300 s ahead of this host's"), "{stdout}");
    assert!(stdout.contains("(time step offset 10)"), "{stdout}");
    assert!(stdout.contains("freeauthctl resync"), "{stdout}");
    assert!(
        agent.log().contains("300 s ahead of this host's"),
        "the log line says it too"
    );
}

#[test]
fn ctl_verify_prints_reason() {
    let agent = Agent::start();
    enroll_totp(&agent, "alice", RFC_SEED_HEX, &["--type", "hotp"]);
    let code = oath_hotp(RFC_SEED_HEX, 0, 6);
    assert_eq!(agent.ctl_verify("alice", &code), 0);

    let reused = agent.ctl(&["verify", "alice", &code]);
    assert_eq!(reused.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&reused.stdout);
    assert_eq!(stdout.trim(), "rejected: code already used");

    // A front end on the agent socket gets the verdict without a reason.
    let mut client = agent.agent_client();
    let response = client.call(verify_request("alice", &code, pam_origin())).unwrap();
    assert_eq!(
        response,
        Response::Verdict {
            result: VerifyResult::Rejected,
            reason: None
        }
    );
}

/// An admin request with `caller_delays` still gets a verdict
/// after the failure delay.
#[test]
fn caller_delays_ignored_for_admin() {
    let agent = Agent::start_with(Options {
        failure_delay_ms: 1000,
        max_failure_delay_ms: 1000,
        ..Options::default()
    });
    enroll_hotp(&agent, "alice");
    let origin = Origin::Radius {
        client: "vpn".into(),
        nas_identifier: None,
        nas_ip: None,
        calling_station: None,
        caller_delays: Some(true),
    };
    let start = Instant::now();
    let mut admin = Client::connect(&agent.admin_socket(), "test", Duration::from_secs(30)).unwrap();
    let reply = admin.call(verify_request("alice", "000000", origin)).unwrap();
    assert!(matches!(reply, Response::Verdict { .. }), "{reply:?}");
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
}

#[test]
fn second_agent_on_one_state_folder_is_refused() {
    let agent = Agent::start();
    // Other sockets, so that only the state folder is shared.
    let config = agent.dir.path().join("second.toml");
    fs::write(
        &config,
        "[paths]\nstate_dir = \"state\"\nseed_key = \"state/seed.key\"\n\
         agent_socket = \"run2/agent.sock\"\nadmin_socket = \"run2/admin.sock\"\n",
    )
    .unwrap();

    let (status, stderr) = start_expecting_exit(
        "freeauth-agentd",
        &config,
        "a second agent runs on the same state folder",
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a running agent is using it"), "{stderr}");
    assert!(!agent.dir.path().join("run2/agent.sock").exists());
    agent.ctl_ok(&["status"]);
}

#[test]
fn init_beside_running_agent_keeps_its_files() {
    let agent = Agent::start();
    let output = agent.ctl_ok(&["init"]);
    assert!(output.contains("the agent is running on state folder"), "{output}");
    agent.ctl_ok(&["status"]);
}

#[test]
fn start_failure_shown_when_log_is_off() {
    let dir = tempfile::tempdir().unwrap();
    // The socket folder's path names a regular file, so the agent
    // passes its check, then fails to listen and stops with status 1.
    fs::write(dir.path().join("blocker"), "").unwrap();
    let config = dir.path().join("agentd.toml");
    fs::write(
        &config,
        "[paths]\nstate_dir = \"state\"\nseed_key = \"state/seed.key\"\n\
         agent_socket = \"blocker/agent.sock\"\nadmin_socket = \"blocker/admin.sock\"\n",
    )
    .unwrap();

    for filter in ["off", "error"] {
        let output = output_within(
            Command::new(binary("freeauth-agentd"))
                .arg("--config")
                .arg(&config)
                .env("FREEAUTH_LOG", filter),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "FREEAUTH_LOG={filter}: {stderr}");
        assert_eq!(
            stderr.matches("cannot run: cannot listen on").count(),
            1,
            "FREEAUTH_LOG={filter}: {stderr}"
        );
    }
}

/// A reload warns about settings that wait for a restart only while the
/// file differs from what runs, so going back to the running values is
/// quiet.
#[test]
fn reload_warns_only_about_pending_changes() {
    let agent = Agent::start();
    let config = agent.config();
    let original = fs::read_to_string(&config).unwrap();
    let reload = |text: &str, reloads: usize| {
        fs::write(&config, text).unwrap();
        agent.signal(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.log().matches("configuration reloaded").count() < reloads {
            assert!(Instant::now() < deadline, "no reload logged:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    reload(
        &format!("log_level = \"debug\"\n{original}[server]\nmax_connections = 10\n"),
        1,
    );
    let log = agent.log();
    assert_eq!(log.matches("log_level changes take effect").count(), 1, "{log}");
    assert_eq!(log.matches("changes to [paths]").count(), 1, "{log}");

    reload(&original, 2);
    let log = agent.log();
    assert_eq!(log.matches("log_level changes take effect").count(), 1, "{log}");
    assert_eq!(log.matches("changes to [paths]").count(), 1, "{log}");
}

/// Returns the value of the `Cpus_allowed_list` line of a `/proc/.../status` file, such
/// as "0-1".
fn cpus_allowed(status_path: &Path) -> String {
    let status = fs::read_to_string(status_path).unwrap();
    let line = status.lines().find(|line| line.starts_with("Cpus_allowed_list:"));
    line.unwrap().split_once(':').unwrap().1.trim().to_string()
}

/// Returns the allowed CPUs of each thread of process `pid`, by thread name.
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = entry.unwrap().path();
        let name = fs::read_to_string(task.join("comm")).unwrap().trim().to_string();
        threads.push((name, cpus_allowed(&task.join("status"))));
    }
    threads
}

fn cpus_of<'a>(threads: &'a [(String, String)], name: &str) -> &'a str {
    let found = threads.iter().find(|(thread, _)| thread == name);
    &found.unwrap_or_else(|| panic!("no thread named {name}: {threads:?}")).1
}

/// Sends lookups 150 ms apart, past the agent's 100 ms placement interval,
/// until `done` accepts the threads' CPUs or `limit` passes.
fn look_up_until(agent: &Agent, limit: Duration, done: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    let pid = agent.child.as_ref().unwrap().id();
    let mut client = agent.agent_client();
    let deadline = Instant::now() + limit;
    loop {
        client.call(Request::Lookup { user: "ghost".into() }).unwrap();
        let threads = thread_cpus(pid);
        if done(&threads) || Instant::now() > deadline {
            return threads;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Returns the CPU list this test may use, or `None` after printing why the
/// test is skipped: thread placement needs two CPUs.
fn cpus_for_placement() -> Option<String> {
    let all = cpus_allowed(Path::new("/proc/self/status"));
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("skipped: thread placement needs two CPUs, this test may use {all}");
        return None;
    }
    Some(all)
}

#[test]
fn light_load_puts_two_threads_on_one_cpu() {
    let Some(all) = cpus_for_placement() else {
        return;
    };
    let agent = Agent::start();

    let threads = look_up_until(&agent, Duration::from_secs(5), |threads| {
        cpus_of(threads, "engine") != all
    });

    // The main thread serves the connections.
    let connection = cpus_of(&threads, "freeauth-agentd");
    let engine = cpus_of(&threads, "engine");
    assert_eq!(connection, engine, "{threads:?}");
    assert!(engine.parse::<usize>().is_ok(), "not a single CPU: {threads:?}");
    assert_eq!(cpus_of(&threads, "wal-sync"), all, "{threads:?}");
    assert!(agent.log().contains("share one CPU"), "{}", agent.log());
}

#[test]
fn thread_placement_off_keeps_every_cpu() {
    let all = cpus_allowed(Path::new("/proc/self/status"));
    let agent = Agent::start_with(Options {
        extra: "[server]\nthread_placement = false\n".into(),
        ..Options::default()
    });

    // Placement would move the threads within a few of these lookups.
    let threads = look_up_until(&agent, Duration::from_secs(1), |_| false);

    assert_eq!(cpus_of(&threads, "freeauth-agentd"), all, "{threads:?}");
    assert_eq!(cpus_of(&threads, "engine"), all, "{threads:?}");
    assert!(!agent.log().contains("share one CPU"), "{}", agent.log());
}

/// Lists the CPUs of a CPU list such as "0-2,5".
fn cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn thread_placement_keeps_taskset_mask() {
    let Some(all) = cpus_for_placement() else {
        return;
    };
    let agent = Agent::start();
    let pid = agent.child.as_ref().unwrap().id();
    let threads = look_up_until(&agent, Duration::from_secs(5), |threads| {
        cpus_of(threads, "engine") != all
    });
    let shared = cpus_of(&threads, "engine").to_string();
    assert_ne!(shared, all, "placement never shared a CPU: {threads:?}");
    let other = cpu_list(&all)
        .into_iter()
        .map(|cpu| cpu.to_string())
        .find(|cpu| *cpu != shared)
        .unwrap();

    // What an administrator does: change the main thread's mask only.
    let status = Command::new("taskset")
        .args(["-p", "-c", &other, &pid.to_string()])
        .output();
    let Ok(output) = status else {
        eprintln!("skipped: taskset is not installed");
        return;
    };
    assert!(output.status.success(), "{output:?}");

    let threads = look_up_until(&agent, Duration::from_secs(5), |threads| {
        cpus_of(threads, "engine") == other
    });
    assert_eq!(cpus_of(&threads, "freeauth-agentd"), other, "{threads:?}");
    assert_eq!(cpus_of(&threads, "engine"), other, "{threads:?}");
    assert!(agent.log().contains("changed from outside"), "{}", agent.log());
}

#[test]
fn init_json_reports_created_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentd.toml");
    fs::write(
        &config,
        "[paths]\nstate_dir = \"state\"\nseed_key = \"state/seed.key\"\n",
    )
    .unwrap();
    let init = || {
        let output = Command::new(binary("freeauthctl"))
            .args(["--config", config.to_str().unwrap(), "--json", "init"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };

    let first = init();
    assert_eq!(first["type"], "initialized", "{first}");
    assert_eq!(first["seed_key_created"], true, "{first}");
    assert_eq!(first["database_created"], true, "{first}");
    assert_eq!(first["agent_running"], false, "{first}");
    let key = dir.path().join("state/seed.key");
    assert_eq!(first["seed_key"], key.to_str().unwrap(), "{first}");

    let second = init();
    assert_eq!(second["seed_key_created"], false, "{second}");
    assert_eq!(second["database_created"], false, "{second}");
}

#[test]
fn init_json_beside_running_agent() {
    let agent = Agent::start();
    let json: serde_json::Value = serde_json::from_str(&agent.ctl_ok(&["--json", "init"])).unwrap();
    assert_eq!(json["agent_running"], true, "{json}");
    assert_eq!(json["seed_key_created"], false, "{json}");
}

#[test]
fn check_config_json_names_file() {
    let mut agent = Agent::start();
    agent.stop();
    let json: serde_json::Value = serde_json::from_str(&agent.ctl_ok(&["--json", "check-config"])).unwrap();
    assert_eq!(json["type"], "valid_config", "{json}");
    assert_eq!(json["file"], agent.config().to_str().unwrap(), "{json}");
    assert!(json["note"].is_null(), "{json}");

    fs::set_permissions(agent.dir.path().join("state"), fs::Permissions::from_mode(0o755)).unwrap();
    let output = agent.ctl(&["--json", "check-config"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn init_user_json_names_owner() {
    if !freeauth_e2e::pam::running_as_root() {
        eprintln!("SKIPPED: init --user needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("agentd.toml");
    fs::write(&config, "[paths]\nstate_dir = \"state\"\nseed_key = \"seed.key\"\n").unwrap();
    let output = Command::new(binary("freeauthctl"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--json",
            "init",
            "--user",
            "nobody",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["type"], "initialized", "{json}");
    assert_eq!(json["owner"], "nobody", "{json}");
    assert_eq!(json["state_dir_created"], true, "{json}");
    assert_eq!(json["seed_key_created"], true, "{json}");
}
