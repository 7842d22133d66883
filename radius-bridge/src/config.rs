//! The bridge's configuration file (`radius.toml`): listening addresses,
//! the agent link, and the RADIUS clients with their secrets and realms.
//!
//! Read with `freeauth_toml`, so every problem is reported with file, line
//! and column. A file that holds a secret must not be readable by others,
//! and weakening Message-Authenticator checks needs an explicit `danger_`
//! value.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use freeauth_toml::{ConfigError, Document, Located, Section};

use crate::codec::SharedSecret;

/// Validated configuration of `freeauth-radius`.
#[derive(Clone)]
pub struct Config {
    pub source: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub agent_socket: PathBuf,
    /// User the agent must run as; `None`: the bridge's own user.
    pub agent_user: Option<String>,
    pub agent_connections: usize,
    pub max_in_flight: usize,
    pub agent_timeout: Duration,
    pub duplicate_window: Duration,
    /// Maximum number of requests the duplicate cache remembers at once.
    pub duplicate_max_requests: usize,
    pub realm_reject_delay: Duration,
    pub state_dir: PathBuf,
    pub clients: Vec<Client>,
    pub log_level: String,
}

/// Policy for the Message-Authenticator of a client's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageAuthenticatorPolicy {
    /// Requests without a valid one are dropped.
    Require,
    /// Required once the client has sent one; remembered across restarts.
    Auto,
    /// Never required (old clients such as pam_radius_auth 2.0); checked when present.
    DangerNotRequired,
}

/// One RADIUS client.
#[derive(Clone)]
pub struct Client {
    pub name: String,
    pub network: Network,
    pub nas_identifier: Option<String>,
    pub secret: SharedSecret,
    /// The `secret_file` the secret was read from; `None` for an inline secret.
    pub secret_file: Option<PathBuf>,
    pub realms: Vec<String>,
    pub default_realm: Option<String>,
    pub message_authenticator: MessageAuthenticatorPolicy,
}

/// An IPv4 or IPv6 address with a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `192.0.2.1`, `192.0.2.0/24`, `::1` or `2001:db8::/32`.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?;
        if let IpAddr::V6(v6) = address {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!(
                    "{text:?} is an IPv4-mapped address; write the IPv4 address instead"
                ));
            }
        }
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length of {text:?} must be 0 to {max}"))?,
        };
        Ok(Network { address, prefix })
    }

    /// Returns whether both describe the same network, however the host bits are
    /// written (`127.0.0.0/8` and `127.0.0.1/8` are the same).
    pub fn same_as(&self, other: &Network) -> bool {
        self.prefix == other.prefix && self.contains(other.address)
    }

    /// Returns whether `ip` is inside this network. IPv4-mapped IPv6 addresses
    /// count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_match(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if network.get(..full) != address.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (network.get(full), address.get(full)) {
        (Some(n), Some(a)) => n & mask == a & mask,
        _ => false,
    }
}

/// Failure to load a configuration file.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's permissions let others change it.
    Unsafe(String),
    Invalid(ConfigError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read { path, source } => write!(f, "cannot read configuration {}: {source}", path.display()),
            LoadError::Unsafe(problem) => f.write_str(problem),
            LoadError::Invalid(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = freeauth_toml::read_regular_file(path, freeauth_toml::MAX_CONFIG_LEN).map_err(|source| {
            LoadError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        if let Some(problem) = freeauth_toml::world_writable(path) {
            return Err(LoadError::Unsafe(problem));
        }
        let readable_by_others = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o007 != 0)
            .unwrap_or(false);
        Config::parse(path, &text, readable_by_others).map_err(LoadError::Invalid)
    }

    /// Validates `text` as read from `path`. `readable_by_others` says
    /// whether the file's mode lets any user read it.
    pub fn parse(path: &Path, text: &str, readable_by_others: bool) -> Result<Config, ConfigError> {
        let document = Document::parse(path, text)?;
        let root = document.root();
        let log_level = read_log_level(&root);
        let server = root.section("server");
        let mut config = Config {
            source: path.to_owned(),
            listen: Vec::new(),
            agent_socket: PathBuf::new(),
            agent_user: None,
            agent_connections: 2,
            max_in_flight: 8192,
            agent_timeout: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(30),
            duplicate_max_requests: crate::dedup::DEFAULT_MAX_ENTRIES,
            realm_reject_delay: Duration::from_millis(500),
            state_dir: PathBuf::new(),
            clients: Vec::new(),
            log_level,
        };
        if let Some(server) = &server {
            read_server(server, &mut config);
        }
        config.clients = read_clients(&root, readable_by_others);
        check_clients(&root, &config.clients);
        root.finish();
        document.finish()?;
        Ok(config)
    }
}

fn read_log_level(root: &Section) -> String {
    root.choice_or("log_level", &["error", "warn", "info", "debug", "trace"], "info")
}

fn read_server(section: &Section, config: &mut Config) {
    let listen = section.strings("listen");
    if listen.is_empty() {
        config.listen = vec![
            SocketAddr::from(([0, 0, 0, 0], 1812)),
            SocketAddr::from(([0u16; 8], 1812)),
        ];
    }
    for Located { value, span } in listen {
        match value.parse::<SocketAddr>() {
            Ok(address) => config.listen.push(address),
            Err(_) => section.problem(
                span,
                "listen",
                format_args!("entry {value:?} is not ADDRESS:PORT (use [::1]:1812 for IPv6)"),
            ),
        }
    }
    config.agent_socket = section.path_or("agent_socket", "/run/freeauth/agent.sock");
    config.agent_user = section.string("agent_user").map(|located| located.value);
    config.agent_connections = to_usize(section.integer_or("agent_connections", 1..=64, 2));
    config.max_in_flight = to_usize(section.integer_or("max_in_flight", 1..=65_536, 8192));
    config.agent_timeout = millis(section.integer_or("agent_timeout_ms", 100..=600_000, 10_000));
    config.duplicate_window = Duration::from_secs(to_u64(section.integer_or("duplicate_seconds", 1..=300, 30)));
    if config.duplicate_window <= config.agent_timeout.saturating_mul(2) {
        // A request still waiting for the agent would leave the cache, and
        // a resend would reach the agent a second time. A verdict may come
        // up to a second timeout late, and the cache keeps it for resends.
        section.problem(
            section.span_of("duplicate_seconds"),
            "duplicate_seconds",
            format_args!(
                "is {} s; it must be longer than twice agent_timeout_ms ({} ms), or a resend of a request still \
                 waiting for the agent, or answered late, is verified a second time, and an accepted code comes \
                 back rejected as reused",
                config.duplicate_window.as_secs(),
                config.agent_timeout.as_millis()
            ),
        );
    }
    let default_max = i64::try_from(crate::dedup::DEFAULT_MAX_ENTRIES).unwrap_or(i64::MAX);
    config.duplicate_max_requests =
        to_usize(section.integer_or("duplicate_max_requests", 1_000..=10_000_000, default_max));
    config.realm_reject_delay = millis(section.integer_or("realm_reject_delay_ms", 0..=60_000, 500));
    config.state_dir = section.path_or("state_dir", "/var/lib/freeauth-radius");
    section.finish();
}

fn read_clients(root: &Section, readable_by_others: bool) -> Vec<Client> {
    let mut clients = Vec::new();
    for client in root.tables("client") {
        if let Some(parsed) = read_client(&client, readable_by_others) {
            clients.push(parsed);
        }
        client.finish();
    }
    clients
}

fn read_client(section: &Section, readable_by_others: bool) -> Option<Client> {
    let name = section.string("name");
    let network = match section.string("address") {
        Some(located) => match Network::parse(&located.value) {
            Ok(network) => Some(network),
            Err(problem) => {
                section.problem(located.span, "address", problem);
                None
            }
        },
        None => {
            section.missing("address");
            None
        }
    };
    let (secret, secret_file) = match read_secret(section, readable_by_others) {
        Some((secret, file)) => (Some(secret), file),
        None => (None, None),
    };
    let realms: Vec<String> = section
        .strings("realms")
        .into_iter()
        .map(|r| r.value.to_lowercase())
        .collect();
    let default_realm = section.string("default_realm").map(|r| r.value.to_lowercase());
    if let Some(realm) = &default_realm {
        if !realms.contains(realm) {
            section.problem(
                section.span_of("default_realm"),
                "default_realm",
                "must be one of this client's realms",
            );
        }
    }
    let policy = read_policy(section);
    let nas_identifier = section.string("nas_identifier").map(|located| located.value);
    let name = match name {
        Some(name) if name.value.is_empty() || name.value.chars().any(char::is_control) => {
            section.problem(
                name.span,
                "name",
                "must be non-empty, without control characters such as a line break",
            );
            None
        }
        Some(name) => Some(name),
        None => {
            section.missing("name");
            None
        }
    };
    Some(Client {
        name: name?.value,
        network: network?,
        nas_identifier,
        secret: secret?,
        secret_file,
        realms,
        default_realm,
        message_authenticator: policy?,
    })
}

/// Reads the client's secret, and the file it came from if any.
fn read_secret(section: &Section, readable_by_others: bool) -> Option<(SharedSecret, Option<PathBuf>)> {
    let inline = section.string("secret");
    let file = section.path("secret_file");
    match (inline, file) {
        (Some(secret), None) => {
            if readable_by_others {
                section.problem(
                    secret.span.clone(),
                    "secret",
                    "is in a configuration file that other users can read; run chmod 640 on this file, or use secret_file",
                );
            }
            check_secret_text(section, "secret", &secret.value, secret.span).map(|secret| (secret, None))
        }
        (None, Some(path)) => {
            let text = match read_secret_file(&path.value) {
                Ok(text) => text,
                Err(problem) => {
                    section.problem(path.span, "secret_file", problem);
                    return None;
                }
            };
            check_secret_text(section, "secret_file", text.trim_end_matches(['\n', '\r']), path.span)
                .map(|secret| (secret, Some(path.value)))
        }
        (Some(secret), Some(_)) => {
            section.problem(secret.span, "secret", "and secret_file are both set; keep one");
            None
        }
        (None, None) => {
            section.missing("secret");
            None
        }
    }
}

fn check_secret_text(section: &Section, key: &str, text: &str, span: std::ops::Range<usize>) -> Option<SharedSecret> {
    if text.is_empty() || text.len() > 128 {
        section.problem(span, key, "must be 1 to 128 bytes");
        return None;
    }
    Some(SharedSecret::new(text.as_bytes().to_vec()))
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}, readable by other users; run chmod 640 on it",
            path.display()
        ));
    }
    // A secret has at most 128 bytes; the rest is room for line breaks.
    freeauth_toml::read_regular_file(path, 4096).map_err(|err| format!("cannot read {}: {err}", path.display()))
}

fn read_policy(section: &Section) -> Option<MessageAuthenticatorPolicy> {
    let Some(located) = section.string("message_authenticator") else {
        return Some(MessageAuthenticatorPolicy::Require);
    };
    match located.value.as_str() {
        "require" => Some(MessageAuthenticatorPolicy::Require),
        "auto" => Some(MessageAuthenticatorPolicy::Auto),
        "danger_not_required" => Some(MessageAuthenticatorPolicy::DangerNotRequired),
        _ => {
            section.problem(
                located.span,
                "message_authenticator",
                "must be \"require\", \"auto\" or \"danger_not_required\"",
            );
            None
        }
    }
}

/// Cross-client rules: unique names, and clients that share an address all
/// name their NAS-Identifier.
fn check_clients(root: &Section, clients: &[Client]) {
    for (index, client) in clients.iter().enumerate() {
        for other in &clients[..index] {
            if other.name == client.name {
                root.problem(
                    root.span_of("client"),
                    "client",
                    format_args!("name {:?} is used twice", client.name),
                );
            }
            // Nested networks are fine (the most specific wins); the same one twice is not.
            let overlap = other.network.same_as(&client.network);
            let told_apart = matches!((&other.nas_identifier, &client.nas_identifier), (Some(a), Some(b)) if a != b);
            if overlap && !told_apart {
                root.problem(
                    root.span_of("client"),
                    "client",
                    format_args!(
                        "{:?} and {:?} have the same address {}/{}{}; give each a different nas_identifier",
                        other.name,
                        client.name,
                        client.network.address,
                        client.network.prefix,
                        describe_nas_identifier_clash(other, client)
                    ),
                );
            }
        }
    }
}

/// Names why two clients with the same network cannot be distinguished:
/// a missing nas_identifier, or the same one twice.
fn describe_nas_identifier_clash(first: &Client, second: &Client) -> String {
    let missing: Vec<String> = [first, second]
        .iter()
        .filter(|client| client.nas_identifier.is_none())
        .map(|client| format!("{:?}", client.name))
        .collect();
    match missing.as_slice() {
        [] => " and the same nas_identifier".to_owned(),
        [one] => format!(", and {one} has no nas_identifier"),
        _ => ", and neither has a nas_identifier".to_owned(),
    }
}

fn millis(value: i64) -> Duration {
    Duration::from_millis(to_u64(value))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_usize(value: i64) -> usize {
    usize::try_from(value).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/freeauth/radius.toml"), text, false)
    }

    const CLIENT: &str = "[[client]]\nname = \"vpn\"\naddress = \"192.0.2.0/24\"\nsecret = \"a-long-enough-secret\"\nrealms = [\"example.com\"]\ndefault_realm = \"example.com\"\n";

    #[test]
    fn reads_a_client() {
        let config = parse(CLIENT).unwrap();
        let client = &config.clients[0];
        assert_eq!(client.name, "vpn");
        assert!(client.network.contains("192.0.2.77".parse().unwrap()));
        assert!(!client.network.contains("192.0.3.1".parse().unwrap()));
        assert_eq!(client.message_authenticator, MessageAuthenticatorPolicy::Require);
        assert_eq!(config.listen.len(), 2);
    }

    #[test]
    fn duplicate_max_requests_default_and_range() {
        assert_eq!(parse(CLIENT).unwrap().duplicate_max_requests, 100_000);
        let raised = parse(&format!("[server]\nduplicate_max_requests = 400000\n{CLIENT}")).unwrap();
        assert_eq!(raised.duplicate_max_requests, 400_000);
        let err = parse(&format!("[server]\nduplicate_max_requests = 10\n{CLIENT}"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("duplicate_max_requests"), "{err}");
    }

    #[test]
    fn wrong_type_secret_is_one_problem() {
        let text = "[[client]]\nname = \"a\"\naddress = \"192.0.2.1\"\nsecret = 12345\n";
        let err = Config::parse(Path::new("/x/radius.toml"), text, false).err().unwrap();
        let err = err.to_string();
        assert!(err.contains("(1 problem)"), "{err}");
        assert!(err.contains("must be a string"), "{err}");
    }

    #[test]
    fn duplicate_window_must_exceed_agent_timeout() {
        let short = parse(&format!("[server]\nduplicate_seconds = 20\n{CLIENT}"))
            .err()
            .unwrap();
        assert!(
            short
                .to_string()
                .contains("longer than twice agent_timeout_ms (10000 ms)"),
            "{short}"
        );
        let shorter_timeout = parse(&format!(
            "[server]\nduplicate_seconds = 20\nagent_timeout_ms = 9000\n{CLIENT}"
        ));
        assert!(shorter_timeout.is_ok());
    }

    #[test]
    fn rejects_inline_secret_in_readable_file() {
        let err = Config::parse(Path::new("/x/radius.toml"), CLIENT, true).err().unwrap();
        assert!(err.to_string().contains("chmod 640"), "{err}");
    }

    #[test]
    fn reports_every_client_problem() {
        let text = "[[client]]\nname = \"a\"\naddress = \"300.1.1.1\"\nsecret = \"\"\nmessage_authenticator = \"off\"\ncolour = 1\n";
        let err = parse(text).err().unwrap();
        assert_eq!(err.problems.len(), 4, "{err}");
    }

    #[test]
    fn rejects_client_name_with_line_break() {
        let err = parse(&CLIENT.replace("\"vpn\"", "\"vpn\\nweb\"")).err().unwrap();
        assert!(err.to_string().contains("control characters"), "{err}");
        let err = parse(&CLIENT.replace("\"vpn\"", "\"\"")).err().unwrap();
        assert!(err.to_string().contains("non-empty"), "{err}");
    }

    #[test]
    fn shared_address_needs_nas_identifiers() {
        let two = format!("{CLIENT}{}", CLIENT.replace("\"vpn\"", "\"web\""));
        let err = parse(&two).err().unwrap().to_string();
        assert!(err.contains("neither has a nas_identifier"), "{err}");
        let one_named = format!(
            "{CLIENT}{}",
            CLIENT.replace("name = \"vpn\"", "name = \"web\"\nnas_identifier = \"web1\"")
        );
        let err = parse(&one_named).err().unwrap().to_string();
        assert!(err.contains("and \"vpn\" has no nas_identifier"), "{err}");
        let same_value = format!(
            "{}{}",
            CLIENT.replace("name = \"vpn\"", "name = \"vpn\"\nnas_identifier = \"gw\""),
            CLIENT.replace("name = \"vpn\"", "name = \"web\"\nnas_identifier = \"gw\"")
        );
        let err = parse(&same_value).err().unwrap().to_string();
        assert!(err.contains("and the same nas_identifier"), "{err}");
        let told_apart = format!(
            "{}{}",
            CLIENT.replace("name = \"vpn\"", "name = \"vpn\"\nnas_identifier = \"vpn1\""),
            CLIENT.replace("name = \"vpn\"", "name = \"web\"\nnas_identifier = \"web1\"")
        );
        assert_eq!(parse(&told_apart).unwrap().clients.len(), 2);
    }

    #[test]
    fn networks_match_by_prefix() {
        let net = Network::parse("2001:db8::/32").unwrap();
        assert!(net.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!net.contains("2001:db9::1".parse().unwrap()));
        let host = Network::parse("127.0.0.1").unwrap();
        assert!(host.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(
            Network::parse("::ffff:127.0.0.1").is_err(),
            "mapped addresses are written as IPv4"
        );
        let wide = Network::parse("127.0.0.0/8").unwrap();
        assert!(wide.same_as(&Network::parse("127.0.0.1/8").unwrap()));
        assert!(!wide.same_as(&host), "nested networks are different");
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("ten").is_err());
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("203.0.113.9".parse().unwrap()));
    }
}
