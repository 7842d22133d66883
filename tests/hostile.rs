//! Hostile peers on the agent socket: truncated frames, oversized length
//! prefixes, garbage JSON, wrong protocol versions and clients that stall.
//! The agent must keep serving everyone else and log each event once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use freeauth_e2e::*;
use freeauth_proto::VerifyResult;

const SEED: &str = "3132333435363738393031323334353637383930";

fn agent_with_user() -> Agent {
    let agent = Agent::start_with(Options {
        extra: "[server]\nio_timeout_ms = 500\n".into(),
        ..Options::default()
    });
    agent.ctl_ok(&["enroll", "victim", "--type", "hotp", "--secret-hex", SEED, "--no-qr"]);
    agent
}

fn connect(agent: &Agent) -> UnixStream {
    UnixStream::connect(agent.agent_socket()).unwrap()
}

/// Asserts that a well-behaved client still gets service.
fn assert_serving(agent: &Agent, counter: u64) {
    let code = oath_hotp(SEED, counter, 6);
    assert_eq!(agent.verify_pam("victim", &code), VerifyResult::Accepted);
}

#[test]
fn oversized_length_prefix_closes_only_that_connection() {
    let agent = agent_with_user();
    let mut stream = connect(&agent);
    raw_send(&mut stream, &hello_frame());
    raw_send(&mut stream, &[0xff, 0xff, 0xff, 0xff]);
    let reply = raw_read_all(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("malformed"), "error frame before closing: {text}");
    assert_serving(&agent, 0);
    assert_eq!(
        agent.log().matches("invalid frame length 4294967295").count(),
        1,
        "{}",
        agent.log()
    );
}

#[test]
fn zero_length_and_garbage_json_are_rejected() {
    let agent = agent_with_user();
    for bad in [
        vec![0, 0, 0, 0],
        frame(b"{\"id\":1,\"request\":"),
        frame(b"\x00\xff\xfe binary"),
        frame(b"{\"id\":1,\"request\":{\"type\":\"verify\",\"user\":\"victim\"}}"),
    ] {
        let mut stream = connect(&agent);
        raw_send(&mut stream, &hello_frame());
        raw_send(&mut stream, &bad);
        let reply = raw_read_all(&mut stream, Duration::from_secs(5));
        assert!(String::from_utf8_lossy(&reply).contains("malformed"), "{bad:?}");
    }
    assert_serving(&agent, 0);
}

#[test]
fn garbage_before_hello_is_rejected() {
    let agent = agent_with_user();
    let mut stream = connect(&agent);
    raw_send(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = raw_read_all(&mut stream, Duration::from_secs(5));
    let mut stream = connect(&agent);
    raw_send(&mut stream, &frame(br#"{"version":99,"client":"future"}"#));
    let reply = raw_read_all(&mut stream, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&reply).contains("unsupported"), "version reply");
    assert_serving(&agent, 0);
}

/// The agent welcomes the bridge's version 2 as version 2, and a client
/// of version 1 as version 1, so that either side may be upgraded first.
#[test]
fn hello_versions_one_and_two_welcomed() {
    let agent = agent_with_user();
    for version in [1, 2] {
        let mut stream = connect(&agent);
        let hello = format!(r#"{{"version":{version},"client":"test"}}"#);
        raw_send(&mut stream, &frame(hello.as_bytes()));
        let welcome: freeauth_proto::HelloReply = freeauth_proto::frame::read_frame(&mut stream).unwrap();
        assert!(
            matches!(welcome, freeauth_proto::HelloReply::Welcome { version: spoken, .. } if spoken == version),
            "{welcome:?}"
        );
    }
}

#[test]
fn truncated_frame_is_logged_once() {
    let agent = agent_with_user();
    let mut stream = connect(&agent);
    raw_send(&mut stream, &hello_frame());
    let mut reader = stream.try_clone().unwrap();
    let _: freeauth_proto::HelloReply = freeauth_proto::frame::read_frame(&mut reader).unwrap();
    let full = frame(br#"{"id":1,"request":{"type":"lookup","user":"victim"}}"#);
    raw_send(&mut stream, &full[..20]);
    drop(reader);
    drop(stream);
    std::thread::sleep(Duration::from_millis(200));
    assert_serving(&agent, 0);
    assert_eq!(
        agent.log().matches("closed in the middle of a frame").count(),
        1,
        "{}",
        agent.log()
    );
    let sent = format!("(16 of {} bytes)", full.len() - 4);
    assert!(agent.log().contains(&sent), "{}", agent.log());
}

#[test]
fn stalled_clients_do_not_block_others() {
    let agent = agent_with_user();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(&agent);
        raw_send(&mut stream, &hello_frame());
        raw_send(&mut stream, &[0, 0, 0, 50, b'{']);
        stalled.push(stream);
    }
    let silent: Vec<UnixStream> = (0..20).map(|_| connect(&agent)).collect();
    let start = Instant::now();
    assert_serving(&agent, 0);
    assert!(start.elapsed() < Duration::from_secs(5), "served while others stall");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.log().contains("peer stalled: frame"), "{}", agent.log());
    for mut stream in stalled.into_iter().chain(silent) {
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest).is_ok();
        assert!(closed, "the agent closed the stalled connection");
        assert!(
            !String::from_utf8_lossy(&rest).contains("verdict"),
            "no verdict for a stalled frame"
        );
    }
    assert_serving(&agent, 1);
}

#[test]
fn many_bad_connections_are_rate_limited_in_the_log() {
    let agent = agent_with_user();
    for _ in 0..50 {
        let mut stream = connect(&agent);
        raw_send(&mut stream, &hello_frame());
        stream.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        let _ = raw_read_all(&mut stream, Duration::from_secs(5));
    }
    assert_serving(&agent, 0);
    let lines = agent.log().matches("invalid frame length").count();
    assert!((1..=11).contains(&lines), "{lines} log lines for 50 bad peers");
}

#[test]
fn random_bytes_never_stop_the_agent() {
    let agent = agent_with_user();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let mut stream = connect(&agent);
        if round % 2 == 0 {
            raw_send(&mut stream, &hello_frame());
        }
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = stream.write_all(&bytes);
        drop(stream);
    }
    assert_serving(&agent, 0);
}

#[test]
fn errors_never_quote_the_peer() {
    let agent = agent_with_user();
    let mut stream = connect(&agent);
    raw_send(&mut stream, &hello_frame());
    let forged = br#"{"id":1,"request":{"type":"FORGED\nverification user=\"root\" result=\"accepted\""}}"#;
    raw_send(&mut stream, &frame(forged));
    let reply = raw_read_all(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("malformed"), "{text}");
    assert!(
        !text.contains("FORGED") && !agent.log().contains("FORGED"),
        "{}",
        agent.log()
    );
}

#[test]
fn large_frames_are_refused_on_the_agent_socket() {
    let agent = agent_with_user();
    let mut stream = connect(&agent);
    raw_send(&mut stream, &hello_frame());
    raw_send(&mut stream, &(64 * 1024u32).to_be_bytes());
    let reply = raw_read_all(&mut stream, Duration::from_secs(5));
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.contains("invalid frame length 65536 (must be 1 to 16384 bytes)"),
        "{reply}"
    );
    assert_serving(&agent, 0);
}

/// Resident memory of process `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A peer that sends requests and reads no reply fills its socket and
/// then waits: the agent stops reading once `max_in_flight` replies wait
/// for the writer, instead of starting a task for every request.
#[test]
fn unread_replies_stop_reading() {
    let agent = Agent::start_with(Options {
        extra: "[server]\nmax_in_flight = 4\n".into(),
        ..Options::default()
    });
    let pid = agent.child.as_ref().unwrap().id();

    let mut stream = connect(&agent);
    stream.write_all(&hello_frame()).unwrap();
    // An invalid name is rejected at once, without the engine.
    let request = freeauth_proto::frame::encode(&freeauth_proto::RequestFrame {
        id: 1,
        request: freeauth_proto::Request::Lookup { user: " x".into() },
    })
    .unwrap();
    let chunk = request.repeat(1000);
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();

    let before = resident_kib(pid);
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < Duration::from_secs(5) && stream.write_all(&chunk).is_ok() {
        written += 1000;
    }
    let after = resident_kib(pid);
    assert!(
        written < 100_000,
        "the agent read {written} requests whose replies nobody reads"
    );
    assert!(
        after < before + 64 * 1024,
        "agent memory grew from {before} KiB to {after} KiB"
    );
}
