//! Crash safety: several clients verify HOTP codes while the agent is killed
//! with SIGKILL again and again. After each restart no code accepted before
//! is accepted again, and no acknowledged enrolment or unlock is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freeauth_e2e::*;
use freeauth_otp::{hotp, Algorithm, Secret};
use freeauth_proto::{Client, Request, Response, VerifyResult};

const USERS: usize = 4;
const KILLS: usize = 15;
/// The agent's default HOTP look-ahead.
const LOOKAHEAD: u64 = 10;

fn seed(user: usize) -> String {
    format!("{:040x}", 0x1234_5678_9abc_def0_u128 + user as u128)
}

fn code(user: usize, counter: u64) -> String {
    let secret = Secret::from_hex(&seed(user)).unwrap();
    hotp(&secret, counter, 6, Algorithm::Sha1).to_string()
}

/// The codes of one user's counters, computed as far as needed.
struct Codes {
    user: usize,
    codes: Vec<String>,
}

impl Codes {
    fn new(user: usize) -> Codes {
        Codes {
            user,
            codes: Vec::new(),
        }
    }

    /// Returns whether the code of `counter` is also the code of a later
    /// counter up to `last`. A 6-digit code repeats about once in a million
    /// counters, and a replay of such a code is a valid code of the later
    /// counter.
    fn repeats(&mut self, counter: u64, last: u64) -> bool {
        while self.codes.len() as u64 <= last {
            self.codes.push(code(self.user, self.codes.len() as u64));
        }
        let own = &self.codes[counter as usize];
        self.codes[counter as usize + 1..=last as usize]
            .iter()
            .any(|later| later == own)
    }
}

/// Runs one client: tries successive counters, remembers what was accepted,
/// and replays an accepted code now and then, which must be rejected.
/// Returns the next counter it would have tried.
fn client_loop(
    socket: std::path::PathBuf,
    user: usize,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<(usize, u64)>>>,
) -> u64 {
    let mut codes = Codes::new(user);
    let mut counter = 0u64;
    let mut mine: Vec<u64> = Vec::new();
    let mut client: Option<Client> = None;
    let name = format!("crash{user}");
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = Client::connect(&socket, "crash-test", Duration::from_secs(5)).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let replay = mine.len() > 2 && counter % 5 == 0;
        let try_counter = if replay {
            mine[(counter as usize) % mine.len()]
        } else {
            counter
        };
        // The agent's counter is at most `counter` here, so its window ends
        // at most LOOKAHEAD further.
        if replay && codes.repeats(try_counter, counter + LOOKAHEAD) {
            counter += 1;
            continue;
        }
        let request = verify_request(&name, &code(user, try_counter), pam_origin());
        match client.as_mut().unwrap().call(request) {
            Ok(Response::Verdict {
                result: VerifyResult::Accepted,
                ..
            }) => {
                assert!(!replay, "replayed counter {try_counter} of {name} was accepted again");
                accepted.lock().unwrap().push((user, try_counter));
                mine.push(try_counter);
                counter += 1;
            }
            Ok(Response::Verdict { .. }) => {
                // A rejected fresh code: its acceptance was committed but the
                // reply was lost in a crash, so move on to the next counter.
                if !replay {
                    counter += 1;
                }
            }
            Ok(other) => panic!("unexpected response {other:?}"),
            Err(_) => client = None,
        }
        if replay {
            counter += 1;
        }
    }
    counter
}

#[test]
fn no_code_accepted_twice_across_kills() {
    // Replays are failures from one source, and a source lock would turn
    // their rejections into lock results.
    let mut agent = Agent::start_with(Options {
        threshold: 0,
        source_threshold: 0,
        ..Options::default()
    });
    for user in 0..USERS {
        agent.ctl_ok(&[
            "enroll",
            &format!("crash{user}"),
            "--type",
            "hotp",
            "--secret-hex",
            &seed(user),
            "--no-qr",
        ]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..USERS)
        .map(|user| {
            let (socket, stop, accepted) = (agent.agent_socket(), Arc::clone(&stop), Arc::clone(&accepted));
            std::thread::spawn(move || client_loop(socket, user, stop, accepted))
        })
        .collect();

    let mut enrolled = Vec::new();
    for round in 0..KILLS {
        let name = format!("late{round}");
        if agent
            .ctl(&["enroll", &name, "--type", "hotp", "--secret-hex", &seed(99), "--no-qr"])
            .status
            .success()
        {
            enrolled.push(name);
        }
        std::thread::sleep(Duration::from_millis(150 + 20 * round as u64));
        agent.kill();
        agent.spawn();
        for name in &enrolled {
            assert!(
                agent.ctl(&["show", name]).status.success(),
                "enrolment of {name} lost after kill {round}"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let next_counters: Vec<u64> = clients.into_iter().map(|client| client.join().unwrap()).collect();

    let accepted = accepted.lock().unwrap();
    let unique: HashSet<_> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "a code was accepted twice");
    assert!(
        accepted.len() > 50,
        "only {} codes accepted: the test did too little",
        accepted.len()
    );
    // Replay a spread of the accepted codes (every one would take minutes).
    let mut client = agent.agent_client();
    let mut codes: Vec<Codes> = (0..USERS).map(Codes::new).collect();
    let step = (accepted.len() / 200).max(1);
    for &(user, counter) in accepted.iter().step_by(step) {
        if codes[user].repeats(counter, next_counters[user] + LOOKAHEAD) {
            continue;
        }
        let request = verify_request(&format!("crash{user}"), &code(user, counter), pam_origin());
        let again = verdict(client.call(request).unwrap());
        assert_eq!(
            again,
            VerifyResult::Rejected,
            "counter {counter} of crash{user} after all restarts"
        );
    }
    eprintln!("{} codes accepted across {KILLS} kills; none twice", accepted.len());
}

#[test]
fn unlock_survives_a_kill() {
    let mut agent = Agent::start_with(Options {
        threshold: 2,
        ..Options::default()
    });
    agent.ctl_ok(&[
        "enroll",
        "locked",
        "--type",
        "hotp",
        "--secret-hex",
        &seed(1),
        "--no-qr",
    ]);
    agent.verify_pam("locked", "000000");
    agent.verify_pam("locked", "000000");
    assert_eq!(agent.verify_pam("locked", &code(1, 0)), VerifyResult::Locked);
    agent.kill();
    agent.spawn();
    assert_eq!(
        agent.verify_pam("locked", &code(1, 0)),
        VerifyResult::Locked,
        "lock is durable"
    );
    agent.ctl_ok(&["unlock", "locked"]);
    agent.kill();
    agent.spawn();
    assert_eq!(
        agent.verify_pam("locked", &code(1, 0)),
        VerifyResult::Accepted,
        "unlock is durable"
    );
    let mut client = agent.agent_client();
    let lookup = client.call(Request::Lookup { user: "locked".into() }).unwrap();
    assert!(matches!(lookup, Response::Account { locked: false, .. }));
}
