//! Start-up, reload and shutdown of `freeauth-radius`.
//!
//! SIGHUP reloads the clients and realms: requests in flight keep the client
//! list they started with, and an invalid new file is logged and ignored.
//! SIGTERM and SIGINT stop the bridge.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::signal::unix::{signal, SignalKind};

use crate::agent_link::{AgentLink, LinkSettings};
use crate::config::{Client, Config};
use crate::dedup::Cache;
use crate::ratelog::RateLog;
use crate::seen::SeenClients;
use crate::server::{receive_loop, Bridge};
use crate::udp::Listener;

/// Error that kept the bridge from starting.
#[derive(Debug)]
pub struct DaemonError(pub String);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DaemonError {}

/// Uid the agent must run as: `agent_user`, or this process's own user.
pub fn agent_uid(config: &Config) -> Result<u32, DaemonError> {
    match &config.agent_user {
        None => Ok(nix::unistd::geteuid().as_raw()),
        Some(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) => Err(DaemonError(format!("agent_user {name} does not exist"))),
            Err(err) => Err(DaemonError(format!("cannot look up agent_user {name}: {err}"))),
        },
    }
}

fn warn_about_weak_secrets(clients: &[Client]) {
    for client in clients {
        if client.secret.as_bytes().len() < 16 {
            tracing::warn!(client = %client.name, "RADIUS secret is shorter than 16 bytes; it can be guessed from captured packets");
        }
    }
}

/// Runs the bridge until SIGTERM or SIGINT. `listen` overrides the file's
/// addresses when not empty.
///
/// One thread serves every socket. With two worker threads, a request often
/// woke both in turn (the datagram on one, the agent's reply on the other).
/// The bridge then spent 24 to 38 µs of CPU per request, and 17 to 27 µs on
/// one thread (`docs/benchmarks-radius.md`). At that cost one core serves
/// about 40,000 requests a second, more than the agent decides.
pub fn run(config: Config, listen: Vec<SocketAddr>) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| DaemonError(err.to_string()))?;
    runtime.block_on(serve(config, listen))
}

async fn serve(mut config: Config, listen: Vec<SocketAddr>) -> Result<(), DaemonError> {
    let log = Arc::new(RateLog::default());
    let settings = LinkSettings {
        socket: config.agent_socket.clone(),
        agent_uid: agent_uid(&config)?,
        connections: config.agent_connections,
        max_in_flight: config.max_in_flight,
        timeout: config.agent_timeout,
    };
    // Held for as long as the bridge runs.
    let _state_lock = crate::seen::lock_state_dir(&config.state_dir).map_err(DaemonError)?;
    let seen = SeenClients::load(&config.state_dir).map_err(DaemonError)?;
    warn_about_weak_secrets(&config.clients);
    let bridge = Arc::new(Bridge {
        clients: RwLock::new(Arc::new(config.clients.clone())),
        link: AgentLink::start(settings, Arc::clone(&log)),
        dedup: Mutex::new(Cache::new(config.duplicate_window, config.duplicate_max_requests)),
        seen: Mutex::new(seen),
        log,
        drops: Mutex::new(Default::default()),
        realm_reject_delay: config.realm_reject_delay,
        delayed: crate::server::HeldRejections::new(config.max_in_flight),
    });
    let addresses = if listen.is_empty() {
        config.listen.clone()
    } else {
        listen
    };
    let mut listening = Vec::with_capacity(addresses.len());
    for address in &addresses {
        let socket = match Listener::bind(*address) {
            Ok(socket) => socket,
            Err(err) if lacks_family(*address, &err) => {
                tracing::warn!(%address, error = %err, "not listening on this IPv6 address: the kernel has no IPv6 (ipv6.disable=1)");
                continue;
            }
            Err(err) => return Err(DaemonError(format!("cannot listen on UDP {address}: {err}"))),
        };
        let local = socket
            .local_addr()
            .map_or_else(|_| address.to_string(), |local| local.to_string());
        listening.push(local);
        tokio::spawn(receive_loop(Arc::new(socket), Arc::clone(&bridge)));
    }
    if listening.is_empty() {
        return Err(DaemonError(format!(
            "no address to listen on: the kernel has no IPv6, and listen has no IPv4 address ({})",
            addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        )));
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %listening.join(" "), clients = config.clients.len(), agent = %config.agent_socket.display(), "RADIUS bridge started");
    let signal_error = |err: std::io::Error| DaemonError(format!("cannot install signal handlers: {err}"));
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = hangup.recv() => config = reload(config, &bridge).await,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("RADIUS bridge stopped");
    Ok(())
}

/// Returns true when `err`, from binding `address`, means that the kernel
/// was booted without IPv6. The packaged default lists `[::]:1812` beside
/// `0.0.0.0:1812`, and such a host should still serve IPv4.
fn lacks_family(address: SocketAddr, err: &std::io::Error) -> bool {
    address.is_ipv6() && err.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32)
}

/// Returns the names of the `[server]` keys, and `log_level`, whose value in
/// `new` differs from the running `current`. A reload does not apply them.
fn restart_only_changes(current: &Config, new: &Config) -> Vec<&'static str> {
    // Spelled out without `..`, so that a new setting does not compile
    // until it is listed here.
    let Config {
        source: _,
        listen,
        agent_socket,
        agent_user,
        agent_connections,
        max_in_flight,
        agent_timeout,
        duplicate_window,
        duplicate_max_requests,
        realm_reject_delay,
        state_dir,
        clients: _,
        log_level,
    } = new;
    let keys = [
        ("listen", current.listen != *listen),
        ("agent_socket", current.agent_socket != *agent_socket),
        ("agent_user", current.agent_user != *agent_user),
        ("agent_connections", current.agent_connections != *agent_connections),
        ("max_in_flight", current.max_in_flight != *max_in_flight),
        ("agent_timeout_ms", current.agent_timeout != *agent_timeout),
        ("duplicate_seconds", current.duplicate_window != *duplicate_window),
        (
            "duplicate_max_requests",
            current.duplicate_max_requests != *duplicate_max_requests,
        ),
        (
            "realm_reject_delay_ms",
            current.realm_reject_delay != *realm_reject_delay,
        ),
        ("state_dir", current.state_dir != *state_dir),
        ("log_level", current.log_level != *log_level),
    ];
    keys.into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

/// Reloads clients and realms; keeps `current` when the new file is invalid.
/// The files are read on a blocking thread, so that a slow file system does
/// not hold up the thread that serves every socket.
async fn reload(current: Config, bridge: &Bridge) -> Config {
    let source = current.source.clone();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&source).map_err(|err| err.to_string()))
        .await
        .unwrap_or_else(|err| Err(format!("the thread that reads the configuration failed: {err}")));
    match loaded {
        Ok(new) => {
            warn_about_weak_secrets(&new.clients);
            bridge.set_clients(new.clients.clone());
            let pending = restart_only_changes(&current, &new);
            if !pending.is_empty() {
                tracing::warn!(
                    settings = %pending.join(", "),
                    "settings changed in the file take effect at the next restart; the running values stay until then"
                );
            }
            tracing::info!(path = %new.source.display(), clients = new.clients.len(), "clients and realms reloaded");
            Config {
                clients: new.clients,
                ..current
            }
        }
        Err(err) => {
            tracing::error!("configuration reload failed, keeping the running configuration: {err}");
            current
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn skips_ipv6_without_kernel_support() {
        let missing = std::io::Error::from_raw_os_error(nix::errno::Errno::EAFNOSUPPORT as i32);
        let in_use = std::io::Error::from_raw_os_error(nix::errno::Errno::EADDRINUSE as i32);
        let v6: SocketAddr = "[::]:1812".parse().unwrap();
        let v4: SocketAddr = "0.0.0.0:1812".parse().unwrap();
        assert!(lacks_family(v6, &missing));
        assert!(!lacks_family(v6, &in_use), "a port in use stays an error");
        assert!(!lacks_family(v4, &missing));
    }
}
