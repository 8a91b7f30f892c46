//! Configuration: embedded defaults, overridden by `<data-dir>/hexa.toml`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// The defaults compiled into the binary, so `hexa serve` starts on a fresh machine.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

/// The appliance's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// The facility this appliance serves.
    pub facility: FacilityConfig,
    /// Which consent readers are where; none means simulated readers.
    #[serde(default)]
    pub devices: hexa_hal::config::ReadersConfig,
    /// Timings of the consent ceremonies and the fingerprint module's capacity.
    #[serde(default)]
    pub consent: ConsentConfig,
}

/// Timings of the consent ceremonies (all in seconds) and the fingerprint module's
/// capacity. The FIDO2 relying party ID is not here: it is one national constant, so a card
/// enrolled at one appliance answers at every other.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// How long a challenge may be answered after it is issued (at least
    /// `max_timeout_secs`, or a slow tap would always be stale).
    pub challenge_ttl_secs: u64,
    /// Time to tap when a request does not say (`timeoutSeconds`).
    pub default_timeout_secs: u64,
    /// Longest `timeoutSeconds` a request may ask for.
    pub max_timeout_secs: u64,
    /// How long after its ceremony a fingerprint consent or an enrolment may be
    /// countersigned by the health worker.
    pub countersign_window_secs: u64,
    /// Lifetime of a patient's card-tap session at the front desk.
    pub session_ttl_secs: u64,
    /// Template slots of the fingerprint module (R503: 200, AS608: 300, R307: 1000).
    pub finger_slots: u16,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            challenge_ttl_secs: 180,
            default_timeout_secs: 30,
            max_timeout_secs: 120,
            countersign_window_secs: 3600,
            session_ttl_secs: 600,
            finger_slots: 200,
        }
    }
}

/// HTTP server settings; every one of them bounds what a client can make the server hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket address the API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a client has to send its request headers before it is cut off.
    pub header_read_timeout_secs: u64,
    /// Connections served at once.
    pub max_connections: usize,
    /// Seconds a client has to send a request body once its headers arrived (408 after).
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_secs: u64,
    /// The absolute URL clients reach this appliance at (`https://hexa.example.rw`),
    /// used for `fullUrl`, `Location` and paging links and as the token endpoint's
    /// audience. The `Host` header is never used (clients control it). Absent: derived
    /// from the address the server listens on (`http://127.0.0.1:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
    /// Requests per second one client (bearer token's client id) may make on `/fhir`;
    /// 0 turns the per-client limit off.
    #[serde(default = "default_client_rate")]
    pub client_rate_per_sec: u32,
    /// Requests a client may make in a burst above its rate.
    #[serde(default = "default_client_burst")]
    pub client_burst: u32,
    /// Token requests per second one IP address may make on `/fhir/token`; 0 turns it off.
    #[serde(default = "default_token_rate")]
    pub token_rate_per_sec: u32,
    /// Token requests an IP address may make in a burst.
    #[serde(default = "default_token_burst")]
    pub token_burst: u32,
    /// Most clients (and, separately, IP addresses) whose rate is tracked at once; bounds
    /// the memory the limiters use.
    #[serde(default = "default_rate_keys")]
    pub rate_limit_max_keys: usize,
}

fn default_body_timeout() -> u64 {
    30
}
fn default_client_rate() -> u32 {
    5_000
}
fn default_client_burst() -> u32 {
    10_000
}
fn default_token_rate() -> u32 {
    10
}
fn default_token_burst() -> u32 {
    60
}
fn default_rate_keys() -> usize {
    10_000
}

/// The facility identity this appliance speaks for (as listed in the national roster).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FacilityConfig {
    /// Facility ID in the national roster.
    pub id: String,
    /// Human-readable facility name.
    pub name: String,
}

/// A configuration error, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid for hexa.
    #[error("invalid configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, from the TOML parser.
        message: String,
    },
}

impl Config {
    /// The embedded defaults.
    pub fn defaults() -> Config {
        toml::from_str(DEFAULT_CONFIG).expect("embedded default configuration is valid")
    }

    /// Reads a configuration file; every field must be present and known.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > 64 << 20 {
            return Err("server.max_body_bytes must be between 1 and 67108864".into());
        }
        if self.server.header_read_timeout_secs == 0 || self.server.header_read_timeout_secs > 300 {
            return Err("server.header_read_timeout_secs must be between 1 and 300".into());
        }
        if self.server.body_read_timeout_secs == 0 || self.server.body_read_timeout_secs > 600 {
            return Err("server.body_read_timeout_secs must be between 1 and 600".into());
        }
        if self.server.max_connections == 0 || self.server.max_connections > 65_536 {
            return Err("server.max_connections must be between 1 and 65536".into());
        }
        if let Some(u) = &self.server.public_base_url {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty()
                    && !r.ends_with('/')
                    && r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~:/[]%".contains(&b))
            });
            if !ok || u.len() > 256 {
                return Err(
                    "server.public_base_url must be an http(s) URL without a trailing slash, query or fragment"
                        .into(),
                );
            }
        }
        if self.server.client_burst == 0 && self.server.client_rate_per_sec > 0
            || self.server.token_burst == 0 && self.server.token_rate_per_sec > 0
        {
            return Err("server.client_burst and server.token_burst must be at least 1".into());
        }
        if self.server.rate_limit_max_keys == 0 || self.server.rate_limit_max_keys > 1_000_000 {
            return Err("server.rate_limit_max_keys must be between 1 and 1000000".into());
        }
        let c = &self.consent;
        if !(1..=600).contains(&c.max_timeout_secs)
            || !(1..=c.max_timeout_secs).contains(&c.default_timeout_secs)
        {
            return Err(
                "consent.max_timeout_secs must be 1-600 and consent.default_timeout_secs 1 to it"
                    .into(),
            );
        }
        if c.challenge_ttl_secs < c.max_timeout_secs || c.challenge_ttl_secs > 900 {
            return Err(
                "consent.challenge_ttl_secs must be at least consent.max_timeout_secs and at most 900"
                    .into(),
            );
        }
        if !(60..=7 * 86_400).contains(&c.countersign_window_secs) {
            return Err("consent.countersign_window_secs must be between 60 and 604800".into());
        }
        if !(60..=3_600).contains(&c.session_ttl_secs) {
            return Err("consent.session_ttl_secs must be between 60 and 3600".into());
        }
        if !(1..=3_000).contains(&c.finger_slots) {
            return Err("consent.finger_slots must be between 1 and 3000".into());
        }
        if self.facility.id.is_empty()
            || self.facility.id.len() > 64
            || !self
                .facility
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(
                "facility.id must be 1-64 characters of letters, digits, '-' and '.'".into(),
            );
        }
        Ok(())
    }

    /// The TOML text written to `<data-dir>/hexa.toml`.
    pub fn to_toml(&self) -> String {
        format!(
            "# hexa configuration, written by `hexa init`.\n{}",
            toml::to_string_pretty(self).expect("config serializes")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::defaults();
        c.validate().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::defaults();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn unknown_fields_and_bad_limits_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hexa.toml");
        std::fs::write(
            &p,
            DEFAULT_CONFIG.replace("[facility]", "[facility]\ncolour = 1"),
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        std::fs::write(
            &p,
            DEFAULT_CONFIG.replace("max_body_bytes = 1048576", "max_body_bytes = 0"),
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("max_body_bytes"), "{e}");
        for bad in ["ftp://x", "http://x/", "http://x?a=1", "https://"] {
            let mut c = Config::defaults();
            c.server.public_base_url = Some(bad.into());
            assert!(c.validate().is_err(), "{bad}");
        }
        let mut c = Config::defaults();
        c.server.public_base_url = Some("https://hexa.example.rw:8443".into());
        c.validate().unwrap();
    }

    #[test]
    fn a_config_without_the_newer_server_fields_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hexa.toml");
        let old: String = DEFAULT_CONFIG
            .lines()
            .filter(|l| {
                !l.contains("rate")
                    && !l.contains("burst")
                    && !l.contains("public_base_url")
                    && !l.contains("body_read_timeout")
                    && ![
                        "[consent]",
                        "challenge_ttl_secs",
                        "default_timeout_secs",
                        "max_timeout_secs",
                        "countersign_window_secs",
                        "session_ttl_secs",
                        "finger_slots",
                    ]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&p, old).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.server.client_rate_per_sec, default_client_rate());
        assert_eq!(c.server.public_base_url, None);
        assert_eq!(c.consent, ConsentConfig::default());
    }

    #[test]
    fn consent_timings_are_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hexa.toml");
        let text = DEFAULT_CONFIG
            .replace("max_timeout_secs = 120", "max_timeout_secs = 60")
            .replace("finger_slots = 200", "finger_slots = 1000");
        std::fs::write(&p, text).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.consent.max_timeout_secs, 60);
        assert_eq!(c.consent.finger_slots, 1000);
        for (bad, field) in [
            ("challenge_ttl_secs = 180", "challenge_ttl_secs = 30"),
            ("finger_slots = 200", "finger_slots = 0"),
            ("default_timeout_secs = 30", "default_timeout_secs = 121"),
            (
                "countersign_window_secs = 3600",
                "countersign_window_secs = 10",
            ),
            ("session_ttl_secs = 600", "session_ttl_secs = 86400"),
        ] {
            std::fs::write(&p, DEFAULT_CONFIG.replace(bad, field)).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            assert!(e.contains("consent."), "{field}: {e}");
        }
        std::fs::write(
            &p,
            DEFAULT_CONFIG.replace("[consent]", "[consent]\nrp_id = \"x\""),
        )
        .unwrap();
        assert!(
            Config::load(&p).is_err(),
            "the relying party ID is not configurable"
        );
    }
}
