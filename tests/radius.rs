//! End-to-end tests of `freeauth-radius` with `radclient` from
//! freeradius-utils as the RADIUS client and a real agent behind it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use freeauth_e2e::radius::{loopback_clients, verdict_of, Bridge, SECRET};
use freeauth_e2e::*;
use freeauth_radius::codec::{attr, hide_password, message_authenticator, Code, Packet, SharedSecret};

const SEED: &str = "3132333435363738393031323334353637383930";

fn agent_with(users: &[&str]) -> Agent {
    let agent = Agent::start();
    for user in users {
        agent.ctl_ok(&["enroll", user, "--type", "hotp", "--secret-hex", SEED, "--no-qr"]);
    }
    agent
}

fn code(counter: u64) -> String {
    oath_hotp(SEED, counter, 6)
}

#[test]
fn accepts_fresh_code_once() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    assert_eq!(bridge.auth("alice", &code(0)), "accept");
    assert_eq!(bridge.auth("alice", &code(0)), "reject", "reused code");
    assert_eq!(bridge.auth("alice", "000000"), "reject", "wrong code");
    assert_eq!(bridge.auth("nobody-here", &code(1)), "reject", "unknown user");
    assert_eq!(bridge.auth("alice", &code(1)), "accept");
}

#[test]
fn answers_over_ipv6() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let server = format!("[::1]:{}", bridge.port);
    assert_eq!(bridge.auth_with(&server, SECRET, "alice", &code(0), ""), "accept");
}

/// A bridge listening on `0.0.0.0` and `[::]` sends each reply from the
/// address its request was sent to, since radclient, like other clients,
/// ignores a reply from any other address. In the test's network namespace,
/// 127.0.0.2 and 2001:db8::2 are second addresses of the loopback interface,
/// and a reply routed to the client would leave from 127.0.0.1 and
/// 2001:db8::1.
#[test]
fn wildcard_listener_replies_from_request_address() {
    if !pam::running_as_root() {
        eprintln!("SKIPPED: needs root to listen on 0.0.0.0 in a private network namespace (CI runs as root)");
        return;
    }
    let agent = agent_with(&["alice"]);
    let clients = format!(
        "[[client]]\nname = \"lo4\"\naddress = \"127.0.0.0/8\"\nsecret = \"{SECRET}\"\n\
         [[client]]\nname = \"doc6\"\naddress = \"2001:db8::/64\"\nsecret = \"{SECRET}\"\n"
    );
    let bridge = Bridge::start_in_network_namespace(
        &agent,
        "ip addr add 2001:db8::1/64 dev lo nodad; ip addr add 2001:db8::2/64 dev lo nodad",
        "\"0.0.0.0:1812\", \"[::]:1812\"",
        1812,
        &clients,
    );
    let cases = [
        ("127.0.0.1:1812", ""),
        ("127.0.0.2:1812", ""),
        ("[2001:db8::2]:1812", "Packet-Src-IPv6-Address = 2001:db8::1\n"),
    ];
    for (counter, (server, source)) in (0u64..).zip(cases) {
        let attributes = format!(
            "User-Name = alice\nUser-Password = {}\nMessage-Authenticator = 0x00\n{source}",
            code(counter)
        );
        let output = bridge.radclient_in_namespace(server, "auth", SECRET, &attributes);
        assert_eq!(
            verdict_of(&output),
            "accept",
            "request to {server}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn wrong_secret_gets_no_reply() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let server = format!("127.0.0.1:{}", bridge.port);
    assert_eq!(
        bridge.auth_with(&server, "not-the-secret", "alice", &code(0), ""),
        "none"
    );
    assert!(
        bridge.log_text().contains("invalid Message-Authenticator"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(bridge.auth("alice", &code(0)), "accept", "the code was not consumed");
}

#[test]
fn drops_requests_without_message_authenticator() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let server = format!("127.0.0.1:{}", bridge.port);
    let output = bridge.radclient(
        &server,
        "auth",
        SECRET,
        &format!("User-Name = alice\nUser-Password = {}\n", code(0)),
    );
    assert_eq!(verdict_of(&output), "none");
    assert!(bridge.log_text().contains("missing Message-Authenticator"));
}

#[test]
fn insecure_client_may_omit_message_authenticator() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(
        &agent,
        &loopback_clients("message_authenticator = \"danger_not_required\""),
    );
    let server = format!("127.0.0.1:{}", bridge.port);
    let output = bridge.radclient(
        &server,
        "auth",
        SECRET,
        &format!("User-Name = alice\nUser-Password = {}\n", code(0)),
    );
    assert_eq!(verdict_of(&output), "accept");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Message-Authenticator = 0x"),
        "replies always carry one: {text}"
    );
}

/// Builds an Access-Request without a Message-Authenticator, with these
/// attributes as they are.
fn unsigned_request(identifier: u8, attributes: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut packet = vec![Code::AccessRequest.to_byte(), identifier, 0, 0];
    packet.extend_from_slice(&[identifier; 16]);
    for (kind, value) in attributes {
        packet.extend_from_slice(&[*kind, (value.len() + 2) as u8]);
        packet.extend_from_slice(value);
    }
    let length = (packet.len() as u16).to_be_bytes();
    packet[2..4].copy_from_slice(&length);
    packet
}

/// User-Name alice and a hidden User-Password for [`unsigned_request`].
fn alice_with_password(identifier: u8, password: &str) -> Vec<(u8, Vec<u8>)> {
    let secret = SharedSecret::new(SECRET.as_bytes().to_vec());
    let hidden = hide_password(password.as_bytes(), &secret, &[identifier; 16]);
    vec![(attr::USER_NAME, b"alice".to_vec()), (attr::USER_PASSWORD, hidden)]
}

/// Sends `packet` and returns the code of the reply, or `None` after 1 s.
fn reply_code(port: u16, packet: &[u8]) -> Option<Code> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    socket.send_to(packet, ("127.0.0.1", port)).unwrap();
    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).ok()?;
    Some(Packet::parse(&buffer[..length]).unwrap().code)
}

/// Attributes of a request, as type and value.
type Attributes = Vec<(u8, Vec<u8>)>;

/// Builds an Access-Request with these attributes as they are, signed with
/// a Message-Authenticator at the end.
fn signed_request(identifier: u8, attributes: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut packet = unsigned_request(identifier, attributes);
    let offset = packet.len() + 2;
    packet.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
    packet.extend_from_slice(&[0; 16]);
    let length = (packet.len() as u16).to_be_bytes();
    packet[2..4].copy_from_slice(&length);
    let mac = message_authenticator(&packet, offset, &SharedSecret::new(SECRET.as_bytes().to_vec()));
    packet[offset..offset + 16].copy_from_slice(&mac);
    packet
}

/// A signed Access-Request that cannot be decided gets an Access-Reject
/// (RFC 2865 section 5 for an invalid attribute length), not silence that
/// would make its client fail over. The agent is not asked, so a valid code
/// in it stays unused.
#[test]
fn undecidable_signed_requests_get_reject() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let secret = SharedSecret::new(SECRET.as_bytes().to_vec());
    let name = (attr::USER_NAME, b"alice".to_vec());

    let password = |identifier: u8| {
        (
            attr::USER_PASSWORD,
            hide_password(code(0).as_bytes(), &secret, &[identifier; 16]),
        )
    };
    let long_password = |identifier: u8| {
        (
            attr::USER_PASSWORD,
            hide_password(&[b'1'; 140], &secret, &[identifier; 16]),
        )
    };
    let mut cut_password = password(5);
    cut_password.1.pop();

    let cases: Vec<(&str, Attributes)> = vec![
        ("no User-Name", vec![password(1)]),
        ("no User-Password", vec![name.clone()]),
        ("two User-Names", vec![name.clone(), name.clone(), password(3)]),
        ("two User-Passwords", vec![name.clone(), password(4), password(4)]),
        ("User-Password of 15 bytes", vec![name.clone(), cut_password]),
        ("User-Password of 144 bytes", vec![name.clone(), long_password(6)]),
        (
            "empty User-Password",
            vec![name.clone(), (attr::USER_PASSWORD, Vec::new())],
        ),
        (
            "State without User-Password",
            vec![name.clone(), (attr::STATE, b"s".to_vec())],
        ),
    ];

    for (identifier, (case, attributes)) in (1u8..).zip(cases) {
        assert_eq!(
            reply_code(bridge.port, &signed_request(identifier, &attributes)),
            Some(Code::AccessReject),
            "{case}"
        );
    }

    assert!(
        bridge.log_text().contains("rejected: invalid Access-Request"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(bridge.auth("alice", &code(0)), "accept", "the code was not used");
}

/// Two requests from a client that may omit the Message-Authenticator get
/// no reply: one with EAP-Message (RFC 3579 calls for a silent discard),
/// and one whose Proxy-State would not fit into a reply, which must copy
/// it unchanged.
#[test]
fn unsigned_eap_and_oversized_proxy_state_dropped() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(
        &agent,
        &loopback_clients("message_authenticator = \"danger_not_required\""),
    );
    let eap = vec![
        (attr::USER_NAME, b"alice".to_vec()),
        (attr::EAP_MESSAGE, vec![2, 1, 0, 4]),
    ];
    assert_eq!(
        reply_code(bridge.port, &unsigned_request(1, &eap)),
        None,
        "EAP without Message-Authenticator"
    );

    // An MS-CHAP attribute (Microsoft's vendor number 311, MS-CHAP-Response)
    // gets a rejection without a User-Password, so almost the whole request
    // can be Proxy-State: 4,060 bytes, where a reply has room for 4,058.
    let mut long = vec![(attr::VENDOR_SPECIFIC, vec![0, 0, 1, 55, 1, 2])];
    long.extend((0..16).map(|i| (attr::PROXY_STATE, vec![i; 251])));
    long.push((attr::PROXY_STATE, vec![16; 10]));
    let packet = unsigned_request(2, &long);
    assert_eq!(packet.len(), 4088);
    assert_eq!(
        reply_code(bridge.port, &packet),
        None,
        "Proxy-State too long for a reply"
    );

    let mut fitting = alice_with_password(3, &code(0));
    fitting.extend((0..15).map(|i| (attr::PROXY_STATE, vec![i; 251])));
    assert_eq!(
        reply_code(bridge.port, &unsigned_request(3, &fitting)),
        Some(Code::AccessAccept),
        "Proxy-State that fits"
    );
    let log = bridge.log_text();
    assert!(log.contains("missing Message-Authenticator"), "{log}");
    assert!(
        log.contains("Proxy-State attributes too long to copy into a reply"),
        "{log}"
    );
}

#[test]
fn auto_policy_requires_after_first_seen_across_restarts() {
    let agent = agent_with(&["alice"]);
    let mut bridge = Bridge::start(&agent, &loopback_clients("message_authenticator = \"auto\""));
    let server = format!("127.0.0.1:{}", bridge.port);
    let without = |counter| format!("User-Name = alice\nUser-Password = {}\n", code(counter));
    assert_eq!(
        verdict_of(&bridge.radclient(&server, "auth", SECRET, &without(0))),
        "accept",
        "not seen yet"
    );
    assert_eq!(bridge.auth("alice", &code(1)), "accept");
    assert_eq!(
        verdict_of(&bridge.radclient(&server, "auth", SECRET, &without(2))),
        "none",
        "seen once"
    );
    bridge.stop();
    bridge.spawn();
    assert_eq!(
        verdict_of(&bridge.radclient(&server, "auth", SECRET, &without(2))),
        "none",
        "remembered"
    );
}

#[test]
fn realms_are_enforced_per_client() {
    let agent = agent_with(&["alice@example.com"]);
    let clients = format!(
        "[[client]]\nname = \"com\"\naddress = \"127.0.0.1\"\nsecret = \"{SECRET}\"\nrealms = [\"example.com\"]\ndefault_realm = \"example.com\"\n\
         [[client]]\nname = \"net\"\naddress = \"::1\"\nsecret = \"{SECRET}\"\nrealms = [\"example.net\"]\n"
    );
    let bridge = Bridge::start(&agent, &clients);
    let net = format!("[::1]:{}", bridge.port);
    assert_eq!(
        bridge.auth_with(&net, SECRET, "alice@example.com", &code(0), ""),
        "reject",
        "foreign realm"
    );
    assert!(bridge.log_text().contains("realm not allowed"), "{}", bridge.log_text());
    assert_eq!(
        bridge.auth("alice@example.com", &code(0)),
        "accept",
        "own realm; code not consumed before"
    );
    assert_eq!(bridge.auth("alice", &code(1)), "accept", "default realm");
    assert_eq!(bridge.auth("alice@example.net", &code(2)), "reject");
}

#[test]
fn invalid_user_names_get_reject() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    assert_eq!(bridge.auth("alice ", &code(0)), "reject", "white space at the end");
    assert_eq!(bridge.auth("al\\tice", &code(0)), "reject", "a control character");
    assert!(bridge.log_text().contains("invalid user name"), "{}", bridge.log_text());
    assert_eq!(bridge.auth("alice", &code(0)), "accept", "the code was not consumed");
}

#[test]
fn realm_rejection_log_escapes_name() {
    let agent = agent_with(&["alice@example.com"]);
    let clients = format!(
        "[[client]]\nname = \"com\"\naddress = \"127.0.0.1\"\nsecret = \"{SECRET}\"\nrealms = [\"example.com\"]\n"
    );
    let bridge = Bridge::start(&agent, &clients);
    let forged = "x@evil.org\\nFORGED result=accepted";
    assert_eq!(bridge.auth(forged, &code(0)), "reject");
    let log = bridge.log_text();
    assert!(log.contains("rejected by realm policy"), "{log}");
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED")),
        "a line break in the name started a log line:\n{log}"
    );
}

/// Starts an agent with a 1.5 s failure delay and the HOTP users `alice`
/// and `bob`, and a bridge with `max_in_flight = 1`.
fn one_place_bridge() -> (Agent, Bridge) {
    let agent = Agent::start_with(Options {
        failure_delay_ms: 1500,
        max_failure_delay_ms: 1500,
        ..Options::default()
    });
    for user in ["alice", "bob"] {
        agent.ctl_ok(&["enroll", user, "--type", "hotp", "--secret-hex", SEED, "--no-qr"]);
    }
    let bridge = Bridge::start(&agent, &format!("max_in_flight = 1\n{}", loopback_clients("")));
    (agent, bridge)
}

/// A rejection that waits out the agent's failure delay takes no place
/// among the bridge's verifications: with `max_in_flight = 1`, a right code
/// sent while a wrong one waits is accepted before that rejection leaves.
#[test]
fn delayed_rejection_leaves_agent_place() {
    let (_agent, bridge) = one_place_bridge();
    std::thread::scope(|scope| {
        let wrong = scope.spawn(|| (bridge.auth("alice", "000000"), std::time::Instant::now()));
        // Long enough for the wrong code to reach the agent first, and
        // far shorter than its 1.5 s delay.
        std::thread::sleep(Duration::from_millis(300));
        let right = bridge.auth("bob", &code(0));
        let right_at = std::time::Instant::now();
        let (wrong, wrong_at) = wrong.join().unwrap();
        assert_eq!(right, "accept");
        assert_eq!(wrong, "reject");
        assert!(right_at < wrong_at, "the right code waited for the delayed rejection");
    });
}

/// A rejection dropped for want of a free place to wait out its delay was
/// still counted by the agent, so its resends are dropped as in progress
/// and do not count again.
#[test]
fn dropped_rejection_resend_not_counted() {
    let (agent, bridge) = one_place_bridge();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Alice's wrong code takes the only place for a held rejection.
    socket
        .send_to(&request(1, "alice", "000000"), ("127.0.0.1", bridge.port))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let bob = request(2, "bob", "000000");
    for _ in 0..3 {
        socket.send_to(&bob, ("127.0.0.1", bridge.port)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).unwrap();
    let reply = Packet::parse(&buffer[..length]).unwrap();
    assert_eq!(reply.identifier, 1, "only alice's rejection is answered");
    assert_eq!(reply.code, Code::AccessReject);
    assert!(
        bridge
            .log_text()
            .contains("as many places for rejections that wait out their delay as are free"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(
        agent.log().matches("verification user=\"bob\"").count(),
        1,
        "bob's resends reached the agent:\n{}",
        agent.log()
    );
}

#[test]
fn two_clients_behind_one_address() {
    let agent = agent_with(&["alice"]);
    let clients = "[[client]]\nname = \"vpn\"\naddress = \"127.0.0.1\"\nnas_identifier = \"vpn1\"\nsecret = \"vpn-secret-0123456789\"\n\
                   [[client]]\nname = \"web\"\naddress = \"127.0.0.1\"\nnas_identifier = \"web1\"\nsecret = \"web-secret-0123456789\"\n";
    let bridge = Bridge::start(&agent, clients);
    let server = format!("127.0.0.1:{}", bridge.port);
    let web = "NAS-Identifier = \"web1\"\n";
    assert_eq!(
        bridge.auth_with(&server, "vpn-secret-0123456789", "alice", &code(0), web),
        "none",
        "web's secret needed"
    );
    assert_eq!(
        bridge.auth_with(&server, "web-secret-0123456789", "alice", &code(0), web),
        "accept"
    );
    let vpn = "NAS-Identifier = \"vpn1\"\n";
    assert_eq!(
        bridge.auth_with(&server, "vpn-secret-0123456789", "alice", &code(1), vpn),
        "accept"
    );
    assert!(agent.log().contains("client=\"web\""), "web client in the agent log");
    assert!(agent.log().contains("client=\"vpn\""), "vpn client in the agent log");
}

#[test]
fn status_server_needs_message_authenticator() {
    let agent = agent_with(&[]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let server = format!("127.0.0.1:{}", bridge.port);
    let with = bridge.radclient(&server, "status", SECRET, "Message-Authenticator = 0x00\n");
    assert_eq!(verdict_of(&with), "accept");
    let without = bridge.radclient(&server, "status", SECRET, "NAS-Identifier = x\n");
    assert_eq!(verdict_of(&without), "none");
}

#[test]
fn chap_gets_reject_with_explanation() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let server = format!("127.0.0.1:{}", bridge.port);
    let output = bridge.radclient(
        &server,
        "auth",
        SECRET,
        "User-Name = alice\nCHAP-Password = 755224\nMessage-Authenticator = 0x00\n",
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(verdict_of(&output), "reject");
    assert!(text.contains("Only PAP is supported"), "{text}");
}

#[test]
fn proxy_state_is_copied_in_order() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let extra = "Proxy-State = 0x01020304\nProxy-State = 0x0a0b\n";
    let server = format!("127.0.0.1:{}", bridge.port);
    let attributes = format!(
        "User-Name = alice\nUser-Password = {}\nMessage-Authenticator = 0x00\n{extra}",
        code(0)
    );
    let output = bridge.radclient(&server, "auth", SECRET, &attributes);
    let text = String::from_utf8_lossy(&output.stdout);
    let reply = &text[text.find("Received").unwrap()..];
    let first = reply.find("Proxy-State = 0x01020304").expect("first Proxy-State");
    let second = reply.find("Proxy-State = 0x0a0b").expect("second Proxy-State");
    assert!(first < second, "{reply}");
}

/// Builds an Access-Request with a Message-Authenticator, as a client would.
fn request(identifier: u8, user: &str, password: &str) -> Vec<u8> {
    let secret = SharedSecret::new(SECRET.as_bytes().to_vec());
    let authenticator: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(identifier));
    let hidden = hide_password(password.as_bytes(), &secret, &authenticator);
    let mut packet = vec![Code::AccessRequest.to_byte(), identifier, 0, 0];
    packet.extend_from_slice(&authenticator);
    packet.extend_from_slice(&[attr::USER_NAME, (user.len() + 2) as u8]);
    packet.extend_from_slice(user.as_bytes());
    packet.extend_from_slice(&[attr::USER_PASSWORD, (hidden.len() + 2) as u8]);
    packet.extend_from_slice(&hidden);
    let offset = packet.len() + 2;
    packet.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
    packet.extend_from_slice(&[0; 16]);
    let length = (packet.len() as u16).to_be_bytes();
    packet[2..4].copy_from_slice(&length);
    let mac = message_authenticator(&packet, offset, &secret);
    packet[offset..offset + 16].copy_from_slice(&mac);
    packet
}

#[test]
fn retransmission_gets_cached_accept() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let packet = request(42, "alice", &code(0));
    let mut replies = Vec::new();
    for _ in 0..2 {
        socket.send_to(&packet, ("127.0.0.1", bridge.port)).unwrap();
        let mut buffer = [0u8; 4096];
        let (length, _) = socket.recv_from(&mut buffer).unwrap();
        replies.push(buffer[..length].to_vec());
    }
    assert_eq!(replies[0], replies[1], "the same bytes again");
    assert_eq!(Packet::parse(&replies[0]).unwrap().code, Code::AccessAccept);
    assert_eq!(
        agent.log().matches("result=\"accepted\"").count(),
        1,
        "the agent was asked once"
    );
    let fresh = request(43, "alice", &code(0));
    socket.send_to(&fresh, ("127.0.0.1", bridge.port)).unwrap();
    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).unwrap();
    assert_eq!(
        Packet::parse(&buffer[..length]).unwrap().code,
        Code::AccessReject,
        "a new request reuses the code"
    );
}

/// Sends 1,200 distinct requests from `address` (an IP address of the
/// loopback): five source ports with 240 identifiers each. A realm that no
/// client may use keeps the agent out of them. Then waits up to 10 s for
/// the bridge to warn that its duplicate cache is full.
fn flood_duplicate_cache(bridge: &Bridge, address: &str) {
    let sockets: Vec<UdpSocket> = (0..5).map(|_| UdpSocket::bind((address, 0)).unwrap()).collect();
    for identifier in 0..240u8 {
        for socket in &sockets {
            let packet = request(identifier, "bob@elsewhere.example", "123456");
            socket.send_to(&packet, (address, bridge.port)).unwrap();
        }
        // Paced, so that the bridge's receive buffer does not overflow.
        if identifier % 10 == 9 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !bridge.log_text().contains("duplicate cache full") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn full_duplicate_cache_warns() {
    let agent = agent_with(&["alice"]);
    let settings = format!("duplicate_max_requests = 1000\n{}", loopback_clients(""));
    let bridge = Bridge::start(&agent, &settings);
    flood_duplicate_cache(&bridge, "127.0.0.1");
    let log = bridge.log_text();
    assert!(log.contains("duplicate cache full"), "{log}");
    assert!(log.contains("duplicate_max_requests (1000)"), "{log}");
}

/// A full duplicate cache drops the requests of the client with the most.
/// A flood from one client must not push out another client's accepted
/// request, whose resend would then reach the agent again and be rejected
/// as reused.
#[test]
fn flooding_client_keeps_others_cached() {
    let agent = agent_with(&["alice"]);
    let settings = format!("duplicate_max_requests = 1000\n{}", loopback_clients(""));
    let bridge = Bridge::start(&agent, &settings);
    let vpn = UdpSocket::bind("127.0.0.1:0").unwrap();
    vpn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let accepted = request(42, "alice", &code(0));
    let mut buffer = [0u8; 4096];
    vpn.send_to(&accepted, ("127.0.0.1", bridge.port)).unwrap();
    let (length, _) = vpn.recv_from(&mut buffer).unwrap();
    assert_eq!(Packet::parse(&buffer[..length]).unwrap().code, Code::AccessAccept);

    // The flood comes from the other client (::1).
    flood_duplicate_cache(&bridge, "::1");
    let log = bridge.log_text();
    assert!(log.contains(", from client lo6."), "{log}");

    vpn.send_to(&accepted, ("127.0.0.1", bridge.port)).unwrap();
    let (length, _) = vpn.recv_from(&mut buffer).unwrap();
    assert_eq!(
        Packet::parse(&buffer[..length]).unwrap().code,
        Code::AccessAccept,
        "the resend got a fresh answer"
    );
    assert_eq!(
        agent.log().matches("result=\"accepted\"").count(),
        1,
        "the agent was asked again"
    );
}

/// Rejections the bridge makes by itself, without the agent, each get a
/// reply, but at most 10 log lines a minute per client and kind, so a
/// client without a secret cannot flood the log.
#[test]
fn realm_rejections_log_rate_limited() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buffer = [0u8; 4096];
    for identifier in 0..30u8 {
        let packet = request(identifier, "bob@elsewhere.example", "123456");
        socket.send_to(&packet, ("127.0.0.1", bridge.port)).unwrap();
        let (length, _) = socket.recv_from(&mut buffer).unwrap();
        assert_eq!(Packet::parse(&buffer[..length]).unwrap().code, Code::AccessReject);
    }
    let log = bridge.log_text();
    assert_eq!(log.matches("rejected by realm policy").count(), 10, "{log}");
}

/// One client may take at most half of the places for held rejections, so
/// its flood of wrong codes leaves the other clients a reply to theirs.
#[test]
fn held_rejections_shared_between_clients() {
    let agent = Agent::start_with(Options {
        failure_delay_ms: 1500,
        max_failure_delay_ms: 1500,
        ..Options::default()
    });
    for user in ["alice", "bob", "carol"] {
        agent.ctl_ok(&["enroll", user, "--type", "hotp", "--secret-hex", SEED, "--no-qr"]);
    }
    let bridge = Bridge::start(&agent, &format!("max_in_flight = 2\n{}", loopback_clients("")));
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for (identifier, user) in [(1, "alice"), (2, "bob")] {
        flood
            .send_to(&request(identifier, user, "000000"), ("127.0.0.1", bridge.port))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let other = bridge.auth_with(&format!("[::1]:{}", bridge.port), SECRET, "carol", "000000", "");
    assert_eq!(other, "reject", "the other client's rejection was dropped");

    let mut buffer = [0u8; 4096];
    let (length, _) = flood.recv_from(&mut buffer).unwrap();
    assert_eq!(Packet::parse(&buffer[..length]).unwrap().identifier, 1);
    assert!(
        flood.recv_from(&mut buffer).is_err(),
        "the flooding client's second rejection got a reply"
    );
}

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for garbage in [
        &b"\x01\x02"[..],
        &[1, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
    ] {
        socket.send_to(garbage, ("127.0.0.1", bridge.port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bridge.log_text().contains("malformed packet [2 so far]"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(bridge.auth("alice", &code(0)), "accept", "still serving");
}

#[test]
fn agent_outage_gives_no_reply_then_recovers() {
    let mut agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    agent.stop();
    assert_eq!(bridge.auth("alice", &code(0)), "none");
    agent.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut verdict = "none";
    while verdict == "none" && std::time::Instant::now() < deadline {
        verdict = bridge.auth("alice", &code(0));
    }
    assert_eq!(verdict, "accept", "reconnected by itself");
}

#[test]
fn reload_applies_new_clients_and_keeps_old_on_error() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let original = std::fs::read_to_string(&bridge.config).unwrap();
    std::fs::write(&bridge.config, format!("{original}\n[[client]]\nname = \"broken\"\n")).unwrap();
    bridge.signal_hangup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bridge.log_text().contains("configuration reload failed"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(bridge.auth("alice", &code(0)), "accept", "old clients still served");
    let rotated = original.replace(SECRET, "rotated-secret-0123456789");
    std::fs::write(&bridge.config, rotated).unwrap();
    bridge.signal_hangup();
    std::thread::sleep(Duration::from_millis(300));
    let server = format!("127.0.0.1:{}", bridge.port);
    assert_eq!(
        bridge.auth_with(&server, "rotated-secret-0123456789", "alice", &code(1), ""),
        "accept"
    );
    assert_eq!(bridge.auth("alice", &code(2)), "none", "old secret no longer valid");
}

/// A reload names the settings that changed in the file but wait for a
/// restart, and logs no such warning once the file is back to the
/// running values.
#[test]
fn reload_names_settings_pending_restart() {
    let agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let original = std::fs::read_to_string(&bridge.config).unwrap();
    let pending_line = "take effect at the next restart";

    bridge.signal_hangup();
    std::thread::sleep(Duration::from_millis(300));
    let log = bridge.log_text();
    assert!(log.contains("clients and realms reloaded"), "{log}");
    assert!(!log.contains(pending_line), "nothing changed: {log}");

    let changed =
        format!("log_level = \"debug\"\n{original}").replace("duplicate_seconds = 30", "duplicate_seconds = 60");
    std::fs::write(&bridge.config, changed).unwrap();
    bridge.signal_hangup();
    std::thread::sleep(Duration::from_millis(300));
    let log = bridge.log_text();
    let warning = log.lines().find(|line| line.contains(pending_line));
    let warning = warning.unwrap_or_else(|| panic!("no warning about pending settings: {log}"));
    assert!(warning.contains("duplicate_seconds"), "{warning}");
    assert!(warning.contains("log_level"), "{warning}");
    assert!(!warning.contains("listen"), "{warning}");

    std::fs::write(&bridge.config, &original).unwrap();
    bridge.signal_hangup();
    std::thread::sleep(Duration::from_millis(300));
    let log = bridge.log_text();
    assert_eq!(
        log.matches(pending_line).count(),
        1,
        "back to the running values: {log}"
    );
    assert_eq!(log.matches("clients and realms reloaded").count(), 3, "{log}");
    assert_eq!(bridge.auth("alice", &code(0)), "accept");
}

/// A UDP relay between a RADIUS client and the bridge that drops the first
/// reply, so the client times out and sends its request again. Returns the
/// relay's port; the thread ends after `lifetime`.
fn lossy_relay(bridge_port: u16, lifetime: Duration) -> u16 {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(("127.0.0.1", bridge_port)).unwrap();
    let port = front.local_addr().unwrap().port();
    front.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    back.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + lifetime;
        let mut client = None;
        let mut replies_seen = 0;
        let mut buffer = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok((length, source)) = front.recv_from(&mut buffer) {
                client = Some(source);
                let _ = back.send(&buffer[..length]);
            }
            if let Ok(length) = back.recv(&mut buffer) {
                replies_seen += 1;
                if replies_seen > 1 {
                    if let Some(client) = client {
                        let _ = front.send_to(&buffer[..length], client);
                    }
                }
            }
        }
    });
    port
}

/// Runs pamtester under pam_wrapper with a stack of pam_radius_auth.
fn pam_radius_login(dir: &std::path::Path, radius_port: u16, user: &str, code: &str) -> std::process::Output {
    use std::io::Write;
    let conf = dir.join("pam_radius_auth.conf");
    std::fs::write(&conf, format!("127.0.0.1:{radius_port} {SECRET} 1\n")).unwrap();
    let services = dir.join("pam.d");
    std::fs::create_dir_all(&services).unwrap();
    let module = "/lib/x86_64-linux-gnu/security/pam_radius_auth.so";
    assert!(
        std::path::Path::new(module).exists(),
        "{module} missing: apt-get install libpam-radius-auth"
    );
    std::fs::write(
        services.join("radius-login"),
        format!("auth required {module} conf={} retry=1\n", conf.display()),
    )
    .unwrap();
    let mut child = std::process::Command::new("pamtester")
        .args(["radius-login", user, "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", &services)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pamtester (apt-get install pamtester libpam-wrapper)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{code}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn pam_radius_auth_logs_in_and_its_resend_gets_cached_reply() {
    let agent = agent_with(&["alice"]);
    // pam_radius_auth 2.0 sends no Message-Authenticator.
    let bridge = Bridge::start(
        &agent,
        &loopback_clients("message_authenticator = \"danger_not_required\""),
    );
    let direct = pam_radius_login(agent.dir.path(), bridge.port, "alice", &code(0));
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    let reused = pam_radius_login(agent.dir.path(), bridge.port, "alice", &code(0));
    assert!(!reused.status.success(), "a reused code must fail");

    let relay = lossy_relay(bridge.port, Duration::from_secs(10));
    let resent = pam_radius_login(agent.dir.path(), relay, "alice", &code(1));
    assert!(
        resent.status.success(),
        "the resend after a lost reply must get the cached accept: {}\nbridge log:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&resent.stderr),
        bridge.log_text(),
        agent.log()
    );
    assert!(
        bridge.log_text().contains("retransmission answered from the cache"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(
        agent.log().matches("result=\"accepted\"").count(),
        2,
        "the agent saw the resent code once"
    );
}

#[test]
fn status_server_goes_silent_while_agent_is_down() {
    let mut agent = agent_with(&[]);
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    let server = format!("127.0.0.1:{}", bridge.port);
    agent.stop();
    std::thread::sleep(Duration::from_millis(300));
    let down = bridge.radclient(&server, "status", SECRET, "Message-Authenticator = 0x00\n");
    assert_eq!(verdict_of(&down), "none", "no Access-Accept while logins cannot work");
    agent.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut verdict = "none";
    while verdict == "none" && std::time::Instant::now() < deadline {
        verdict = verdict_of(&bridge.radclient(
            &server,
            "status",
            SECRET,
            "Message-Authenticator = 0x00\nProxy-State = 0x0102\n",
        ));
    }
    assert_eq!(verdict, "accept");
}

/// Stands in for an agent that takes connections and the hello but never
/// sends a response, as a hung agent or one whose database stays locked
/// would. The thread lives until the test process ends.
fn stalled_agent(socket: &std::path::Path) {
    use std::io::Write;
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else {
                return;
            };
            let Ok(hello) = freeauth_proto::frame::read_frame::<_, freeauth_proto::Hello>(&mut stream) else {
                continue;
            };
            let welcome = freeauth_proto::HelloReply::Welcome {
                version: hello.version,
                agent: "stalled".into(),
            };
            let _ = stream.write_all(&freeauth_proto::frame::encode(&welcome).unwrap());
            held.push(stream);
        }
    });
}

/// Status-Server must fail over when logins would. An agent that keeps
/// its connections but sends no response makes logins time out, so the
/// bridge sends no reply to Status-Server either.
#[test]
fn status_server_silent_while_agent_stalls() {
    let mut agent = agent_with(&["alice"]);
    let bridge = Bridge::start(&agent, &format!("agent_timeout_ms = 500\n{}", loopback_clients("")));
    let server = format!("127.0.0.1:{}", bridge.port);
    let status = || verdict_of(&bridge.radclient(&server, "status", SECRET, "Message-Authenticator = 0x00\n"));
    assert_eq!(status(), "accept", "a working agent");

    agent.stop();
    let _ = fs::remove_file(agent.agent_socket());
    stalled_agent(&agent.agent_socket());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let reconnected = |log: String| match (log.find("agent connection lost"), log.rfind("connected to the agent")) {
        (Some(lost), Some(connected)) => connected > lost,
        _ => false,
    };
    while !reconnected(bridge.log_text()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(), "accept", "connected, and no login has failed yet");
    assert_eq!(
        bridge.auth("alice", &code(0)),
        "none",
        "the stalled agent answers no login"
    );
    assert_eq!(status(), "none", "Status-Server answered while logins time out");
}

/// Requests that find every `max_in_flight` slot taken may wait for one,
/// but only as many as there are slots. A request beyond that is dropped
/// at once, so a flood that the agent cannot keep up with does not pile up
/// in the bridge's memory for `agent_timeout_ms` each.
#[test]
fn busy_agent_link_drops_excess_at_once() {
    let agent = agent_with(&["alice"]);
    stalled_agent(&agent.dir.path().join("run/stalled.sock"));
    let clients = format!("max_in_flight = 1\nagent_timeout_ms = 3000\n{}", loopback_clients(""));
    let bridge = Bridge::start_at(&agent, "run/stalled.sock", &clients);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for identifier in 1..=3 {
        let packet = request(identifier, "alice", &code(u64::from(identifier)));
        socket.send_to(&packet, ("127.0.0.1", bridge.port)).unwrap();
    }

    std::thread::sleep(Duration::from_millis(1000));
    let log = bridge.log_text();
    assert_eq!(log.matches("agent busy").count(), 1, "the third request: {log}");
    assert!(!log.contains("agent unavailable"), "the first two still wait: {log}");
}

/// Serves `socket` as a relay to the agent at `agent`. While `slow` is set,
/// it delays each piece of the agent's output by 1.5 s.
fn slow_relay(socket: &std::path::Path, agent: std::path::PathBuf, slow: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for bridge in listener.incoming() {
            let Ok(mut bridge) = bridge else {
                return;
            };
            let Ok(mut to_agent) = UnixStream::connect(&agent) else {
                return;
            };
            let (Ok(mut from_agent), Ok(mut to_bridge)) = (to_agent.try_clone(), bridge.try_clone()) else {
                return;
            };
            std::thread::spawn(move || std::io::copy(&mut bridge, &mut to_agent));
            let slow = Arc::clone(&slow);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 65536];
                while let Ok(length @ 1..) = from_agent.read(&mut buffer) {
                    if slow.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                    if to_bridge.write_all(&buffer[..length]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A verification that outlives `agent_timeout_ms` gets no reply, but the
/// agent still decides it and uses the code. The bridge keeps that late
/// verdict, so the client's resend gets the Access-Accept, not a rejection
/// of a reused code.
#[test]
fn late_verdict_answers_the_resend() {
    let agent = agent_with(&["alice"]);
    let relay = agent.agent_socket().with_file_name("relay.sock");
    let slow = Arc::new(AtomicBool::new(false));
    slow_relay(&relay, agent.agent_socket(), Arc::clone(&slow));
    let clients = format!("agent_timeout_ms = 1000\n{}", loopback_clients(""));
    let bridge = Bridge::start_at(&agent, "run/relay.sock", &clients);

    slow.store(true, Ordering::SeqCst);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(1700))).unwrap();
    let datagram = request(7, "alice", &code(0));
    socket.send_to(&datagram, ("127.0.0.1", bridge.port)).unwrap();
    let mut buffer = [0u8; 4096];
    // The verdict reaches the bridge 1.5 s after the request, after the
    // timeout and before the connection counts as stalled (twice that).
    assert!(socket.recv_from(&mut buffer).is_err(), "a reply after the timeout");
    slow.store(false, Ordering::SeqCst);

    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(&datagram, ("127.0.0.1", bridge.port)).unwrap();
    let (length, _) = socket.recv_from(&mut buffer).unwrap();
    let reply = Packet::parse(&buffer[..length]).unwrap();
    assert_eq!(
        (reply.identifier, reply.code),
        (7, Code::AccessAccept),
        "{}",
        bridge.log_text()
    );
    assert!(
        bridge.log_text().contains("after agent_timeout_ms"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(
        agent.log().matches("verification user=\"alice\"").count(),
        1,
        "the resend reached the agent:\n{}",
        agent.log()
    );
}

/// Runs `freeauthctl [--json] clients` on `config`.
fn ctl_clients(config: &std::path::Path, json: bool) -> std::process::Output {
    let mut command = std::process::Command::new(binary("freeauthctl"));
    if json {
        command.arg("--json");
    }
    command
        .arg("clients")
        .arg("--radius-config")
        .arg(config)
        .output()
        .unwrap()
}

/// Reading a secret file that is a named pipe would wait for a writer
/// forever. So such a file, even with safe permissions, is an error at once
/// for both freeauthctl and the bridge.
#[test]
fn secret_file_pipe_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("gw.secret");
    assert!(Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&secret_file)
        .status()
        .unwrap()
        .success());
    let config = dir.path().join("radius.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:18120\"]\nstate_dir = \"state\"\n\n\
         [[client]]\nname = \"gw\"\naddress = \"192.0.2.10\"\nsecret_file = \"gw.secret\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let limit = Duration::from_secs(10);
    let mut clients = Command::new(binary("freeauthctl"));
    clients.arg("clients").arg("--radius-config").arg(&config);
    let mut check = Command::new(binary("freeauth-radius"));
    check.arg("--config").arg(&config).arg("--check");
    for command in [&mut clients, &mut check] {
        let output = output_within(command, limit);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("gw.secret: not a regular file"), "{stderr}");
    }
}

#[test]
fn ctl_clients_lists_without_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("gw.secret");
    std::fs::write(&secret_file, "secret-from-a-file\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("radius.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:18120\"]\nstate_dir = \"state\"\n\n\
         [[client]]\nname = \"gw\"\naddress = \"192.0.2.10\"\nsecret_file = \"gw.secret\"\n\
         realms = [\"example.com\", \"example.net\"]\ndefault_realm = \"example.com\"\n\
         message_authenticator = \"auto\"\n\n\
         [[client]]\nname = \"lab\"\naddress = \"2001:db8::/64\"\nnas_identifier = \"lab-nas\"\n\
         secret = \"inline-secret-value\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    let text = ctl_clients(&config, false);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let gw = stdout.lines().find(|line| line.starts_with("gw ")).unwrap_or_default();
    assert!(gw.contains("192.0.2.10"), "{stdout}");
    assert!(gw.contains("example.com*,example.net"), "{stdout}");
    assert!(gw.contains("auto (none seen yet)"), "{stdout}");
    assert!(gw.contains(&format!("file {}", secret_file.display())), "{stdout}");
    let lab = stdout.lines().find(|line| line.starts_with("lab ")).unwrap_or_default();
    assert!(lab.contains("2001:db8::/64"), "{stdout}");
    assert!(lab.contains("lab-nas"), "{stdout}");
    assert!(lab.ends_with("inline"), "{stdout}");
    assert!(!stdout.contains("secret-from-a-file"), "{stdout}");
    assert!(!stdout.contains("inline-secret-value"), "{stdout}");
    assert!(
        !dir.path().join("state").exists(),
        "clients created the bridge's state folder"
    );

    // What the bridge remembers for "auto" clients.
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/message-authenticator-clients"), "gw\n").unwrap();
    let json = ctl_clients(&config, true);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["name"], "gw");
    assert_eq!(rows[0]["message_authenticator_seen"], true);
    assert_eq!(rows[1]["message_authenticator"], "require");
    assert!(rows[1]["message_authenticator_seen"].is_null());
    assert!(!String::from_utf8_lossy(&json.stdout).contains("secret-from-a-file"));
}

#[test]
fn ctl_clients_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("radius.toml");
    std::fs::write(
        &config,
        "[server]\nbogus = 1\n[[client]]\nname = \"x\"\naddress = \"10.0.0.0/33\"\nsecret = \"abc\"\n",
    )
    .unwrap();
    let output = ctl_clients(&config, false);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("radius.toml:2:1"), "{stderr}");
    assert!(stderr.contains("radius.toml:5:11"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn second_bridge_on_one_state_folder_is_refused() {
    let agent = Agent::start();
    let bridge = Bridge::start(&agent, &loopback_clients(""));
    // Another port, so that only the state folder is shared.
    let port = freeauth_e2e::radius::free_udp_port();
    let config = agent.dir.path().join("radius-second.toml");
    let text = std::fs::read_to_string(&bridge.config)
        .unwrap()
        .replace(&format!(":{}\"", bridge.port), &format!(":{port}\""));
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let (status, stderr) = start_expecting_exit(
        "freeauth-radius",
        &config,
        "a second bridge runs on the same state folder",
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a running bridge is using it"), "{stderr}");
}

#[test]
fn start_failure_shown_whatever_the_log_filter() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("radius.toml");
    // No such user exists, so the bridge stops with status 1 at start.
    fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nagent_socket = \"agent.sock\"\nstate_dir = \"state\"\n\
         agent_user = \"freeauth-test-no-such-user\"\n",
    )
    .unwrap();

    for filter in ["", "off", "error", "not a filter ["] {
        let output = output_within(
            Command::new(binary("freeauth-radius"))
                .arg("--config")
                .arg(&config)
                .env("FREEAUTH_LOG", filter),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "FREEAUTH_LOG={filter:?}: {stderr}");
        assert_eq!(
            stderr
                .matches("cannot run: agent_user freeauth-test-no-such-user does not exist")
                .count(),
            1,
            "FREEAUTH_LOG={filter:?}: {stderr}"
        );
    }

    // An empty value is reported and ignored, as the agent does.
    let output = output_within(
        Command::new(binary("freeauth-radius"))
            .arg("--config")
            .arg(&config)
            .env("FREEAUTH_LOG", ""),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ignoring empty FREEAUTH_LOG"), "{stderr}");
}
