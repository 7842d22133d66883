//! Step timing of the agent round trips that pam_freeauth makes in one
//! authentication (connect with the hello, `Lookup`, `Verify`), measured with
//! the protocol client directly and without libpam, so the PAM overhead is
//! the full authentication's latency minus these steps.
//!
//! Before the hello, the module also checks the socket owner (stat), the
//! agent user (getpwnam) and the peer (SO_PEERCRED). Those local calls are
//! not timed here.

use std::path::Path;
use std::time::{Duration, Instant};

use freeauth_proto::{Client, Origin, Request, Response, SecretString, VerifyResult};

use crate::population::{Counters, Population};
use crate::run::{Limit, SplitMix64};
use crate::stats::{millis, percentile};

/// Seed of the probe's user order, apart from the loops' order.
const PROBE_SEED: u64 = 0x9a0b_e5ee_d000_0002;

/// Read and write timeout of each connection, as pam_freeauth's default.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sorted latencies of each step, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Steps {
    pub connect: Vec<u64>,
    pub lookup: Vec<u64>,
    pub verify: Vec<u64>,
    pub errors: u64,
}

impl Steps {
    /// Markdown rows `| users | step | samples | p50 | p99 | p99.9 | max |`.
    pub fn markdown(&self, users: usize) -> Vec<String> {
        let steps = [
            ("connect + hello", &self.connect),
            ("lookup", &self.lookup),
            ("verify (accepted)", &self.verify),
        ];
        steps
            .iter()
            .map(|(name, values)| {
                format!(
                    "| {users} | {name} | {} | {} | {} | {} | {} |",
                    values.len(),
                    millis(percentile(values, 0.50)),
                    millis(percentile(values, 0.99)),
                    millis(percentile(values, 0.999)),
                    millis(values.last().copied().unwrap_or(0)),
                )
            })
            .collect()
    }
}

/// Header of the step table.
pub const STEPS_HEADER: &str =
    "| users | step | samples | p50 ms | p99 ms | p99.9 ms | max ms |\n|---:|---|---:|---:|---:|---:|---:|";

/// Times the three round trips for random users until `limit`, advancing
/// the agent's counters in `counters`.
pub fn time_steps(socket: &Path, population: &Population, counters: &Counters, limit: Limit) -> Steps {
    let mut steps = Steps::default();
    let mut order = SplitMix64(PROBE_SEED);
    let started = Instant::now();
    let mut attempts = 0;
    while attempts < limit.max_attempts && started.elapsed() < limit.duration {
        attempts += 1;
        let user = order.below(population.len());
        let name = population.name(user).to_string_lossy().into_owned();
        let counter = counters.take(user);
        let code = population.code(user, counter);
        if let Err(err) = time_one(socket, &name, &code, &mut steps) {
            steps.errors += 1;
            if steps.errors <= 5 {
                eprintln!("step timing: {name} at counter {counter}: {err}");
            }
        }
    }
    steps.connect.sort_unstable();
    steps.lookup.sort_unstable();
    steps.verify.sort_unstable();
    steps
}

fn time_one(socket: &Path, user: &str, code: &str, steps: &mut Steps) -> Result<(), String> {
    let started = Instant::now();
    let mut client = Client::connect(socket, "pam_freeauth", TIMEOUT).map_err(|err| err.to_string())?;
    let connected = Instant::now();

    let lookup = client
        .call(Request::Lookup { user: user.to_owned() })
        .map_err(|err| err.to_string())?;
    let looked_up = Instant::now();
    if !matches!(
        lookup,
        Response::Account {
            enrolled: true,
            locked: false,
            ..
        }
    ) {
        return Err(format!("lookup returned {lookup:?}"));
    }

    let verify = Request::Verify {
        user: user.to_owned(),
        code: SecretString::new(code),
        origin: Origin::Pam {
            service: "freeauth-bench-pam".into(),
            rhost: None,
            tty: None,
            ruser: None,
        },
    };
    let verdict = client.call(verify).map_err(|err| err.to_string())?;
    let verified = Instant::now();
    if !matches!(
        verdict,
        Response::Verdict {
            result: VerifyResult::Accepted,
            ..
        }
    ) {
        return Err(format!("verify returned {verdict:?}"));
    }

    steps.connect.push(nanos(connected - started));
    steps.lookup.push(nanos(looked_up - connected));
    steps.verify.push(nanos(verified - looked_up));
    Ok(())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
