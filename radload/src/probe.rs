//! Readiness check: sends one Access-Request at a time until the server
//! returns a valid reply or the wait is over. An Access-Accept and an
//! Access-Reject both prove that the server, its secret and (for the bridge)
//! the agent behind it work.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use freeauth_otp::{totp, Algorithm};
use freeauth_radius::codec::{SharedSecret, MAX_PACKET_LEN};

use crate::load::{DIGITS, PERIOD};
use crate::packet::{access_request, check_reply, random_authenticator, Verdict};
use crate::users::User;

/// Time one attempt waits for its reply.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Sends requests for `user` until a valid reply comes or `wait` has
/// passed; returns the verdict and the number of attempts.
pub fn probe(server: SocketAddr, secret: &SharedSecret, user: &User, wait: Duration) -> Result<(Verdict, u32), String> {
    let local: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local).map_err(|err| format!("cannot open a UDP socket: {err}"))?;
    socket
        .connect(server)
        .map_err(|err| format!("cannot connect a UDP socket to {server}: {err}"))?;
    socket
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(|err| format!("cannot set the socket timeout: {err}"))?;
    let deadline = Instant::now() + wait;
    let mut buffer = vec![0u8; MAX_PACKET_LEN + 1];
    let mut attempts = 0u32;
    let mut identifier = 0u8;
    while Instant::now() < deadline {
        attempts += 1;
        identifier = identifier.wrapping_add(1);
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let code = totp(&user.secret, unix_time, PERIOD, DIGITS, Algorithm::Sha1);
        let request = access_request(
            identifier,
            random_authenticator()?,
            user.name.as_bytes(),
            code.as_bytes(),
            secret,
        );
        if socket.send(&request.bytes).is_err() {
            // Nothing listens yet (ICMP port unreachable); try again shortly.
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let attempt_end = Instant::now() + ATTEMPT_TIMEOUT;
        while Instant::now() < attempt_end {
            let Ok(length) = socket.recv(&mut buffer) else {
                break;
            };
            if buffer.get(1) != Some(&identifier) {
                continue;
            }
            match check_reply(&buffer[..length], &request.authenticator, secret) {
                Verdict::Invalid => continue,
                verdict => return Ok((verdict, attempts)),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "no valid reply from {server} for user {} within {} s ({attempts} attempts); \
         check that the server runs, that the secret matches, and that it knows the user",
        user.name,
        wait.as_secs()
    ))
}
