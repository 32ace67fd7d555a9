//! Agent configuration: the command line, the optional TOML file, and the validated [`Config`]
//! that `run` receives. Everything is checked here, once, at start-up; nothing below reads the
//! environment or the file again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use edgefleet_protocol::ids::{validate_device_id, validate_label};
use edgefleet_protocol::signing::{VerifyingKey, parse_public_key};
use serde::Deserialize;
use thiserror::Error;

/// Why the configuration was refused. Each message says which setting is wrong and how to fix it.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error(
        "no device id: pass --id ID (or set `id` in the config file), or --data-dir of an enrolled device"
    )]
    MissingId,
    #[error("invalid device id: {0}")]
    DeviceId(edgefleet_protocol::ids::IdError),
    #[error("no broker: pass --broker mqtt://HOST:PORT (or set `broker` in the config file)")]
    MissingBroker,
    #[error(transparent)]
    Broker(#[from] edgefleet_protocol::broker_url::BrokerUrlError),
    #[error("invalid label '{item}': expected key=value, e.g. site=lyon")]
    LabelSyntax { item: String },
    #[error("invalid label: {0}")]
    Label(edgefleet_protocol::ids::IdError),
    #[error("invalid keepalive {0} s: use 1 to 65535 seconds")]
    Keepalive(u64),
    #[error(
        "cannot determine the current directory for the default data dir ({0}): pass --data-dir"
    )]
    CurrentDir(std::io::Error),
    #[error(
        "no controller key to verify desired state with: enroll the device (edgefleet-agent enroll), or pass --controller-key FILE (the gateway writes its key to DATA_DIR/signing/desired-signing.pub)"
    )]
    MissingControllerKey,
    #[error("cannot use the controller key {path}: {message}")]
    ControllerKey { path: PathBuf, message: String },
    #[error("{0}")]
    Identity(String),
    #[error(
        "the data dir {data_dir} is enrolled as device '{enrolled}', not '{asked}': drop --id or use another --data-dir"
    )]
    OtherDevice {
        data_dir: PathBuf,
        enrolled: String,
        asked: String,
    },
    #[error("cannot use TLS for {broker}: {message}")]
    Tls { broker: String, message: String },
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Command line of `edgefleet-agent`.
#[derive(Debug, Parser)]
#[command(
    name = "edgefleet-agent",
    version,
    about = "edgefleet edge agent: runs this device's desired containers on the local Docker engine",
    long_about = "edgefleet edge agent.\n\n\
        Connects outbound to the edgefleet gateway (or any MQTT 3.1.1 broker), receives this \
        device's desired state, and reconciles it continuously against the local Docker engine. \
        It keeps running the last applied state when the broker is unreachable and after a reboot.\n\n\
        Settings come from flags, then EDGEFLEET_* environment variables, then the --config file \
        (flags win). Log verbosity follows RUST_LOG (default: info).",
    after_help = "Example:\n  edgefleet-agent --id press-07 --broker mqtt://gateway:1883 --labels site=lyon,line=3\n\n\
        Config file (TOML), all keys optional:\n  id = \"press-07\"\n  broker = \"mqtt://gateway:1883\"\n  \
        data_dir = \"/var/lib/edgefleet-agent\"\n  keepalive_secs = 10\n  log_format = \"text\"\n  \
        [labels]\n  site = \"lyon\"\n  line = \"3\""
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Device id (letters, digits, '-', '_', '.'; at most 64 characters), e.g. press-07.
    #[arg(long, env = "EDGEFLEET_DEVICE_ID", value_name = "ID")]
    pub id: Option<String>,

    /// Broker to connect to, as mqtt://HOST:PORT (plain MQTT 3.1.1; TLS is not supported yet).
    #[arg(long, env = "EDGEFLEET_BROKER", value_name = "URL")]
    pub broker: Option<String>,

    /// Labels this device reports about itself, key=value pairs separated by commas, e.g.
    /// site=lyon,line=3. When given, they replace the labels of the config file (an enrolled
    /// device reports its enrolled labels). The controller shows them as "reported" only:
    /// its inventory (`edgefleet device add` / `device label`) decides the device's site and
    /// targets, and a mismatch is an alarm. A device the controller has never heard of is
    /// adopted with them.
    #[arg(
        long,
        env = "EDGEFLEET_LABELS",
        value_name = "K=V,...",
        value_delimiter = ','
    )]
    pub labels: Option<Vec<String>>,

    /// Directory for the agent's local state (last desired state, session counter).
    /// Default: ./.edgefleet-agent/<ID> under the current directory.
    #[arg(long, env = "EDGEFLEET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// MQTT keepalive in seconds [default: 10].
    #[arg(long, env = "EDGEFLEET_KEEPALIVE", value_name = "SECS")]
    pub keepalive: Option<u64>,

    /// TOML config file with the same settings (id, broker, data_dir, keepalive_secs,
    /// log_format and a [labels] table).
    #[arg(long, env = "EDGEFLEET_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format [default: text].
    #[arg(long, env = "EDGEFLEET_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// The controller's public key (base64 text file) that every desired document must be
    /// signed with. Set by enrollment; needed only without it.
    #[arg(long, env = "EDGEFLEET_CONTROLLER_KEY", value_name = "FILE")]
    pub controller_key: Option<PathBuf>,
}

/// Subcommands (without one, the agent runs).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Exchange a one-time enrollment token for this device's certificate and key.
    ///
    /// The token comes from `edgefleet device add ID` on the gateway. It names the device and
    /// pins the gateway's CA, so the exchange cannot be intercepted. The identity is written
    /// to DATA_DIR/identity/ (the key with 0600 permissions); afterwards start the agent with
    /// the same --data-dir and nothing else: id, broker (mqtts://) and labels come from it.
    #[command(
        after_help = "Example:\n  edgefleet-agent enroll --token efenroll1_eyJk… --data-dir /var/lib/edgefleet-agent\n  edgefleet-agent --data-dir /var/lib/edgefleet-agent"
    )]
    Enroll(EnrollArgs),
}

#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The token printed by `edgefleet device add`.
    #[arg(long, env = "EDGEFLEET_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The gateway's enrollment address, when the one in the token is not reachable from
    /// here (https://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Where to keep the identity and state. Default: ./.edgefleet-agent/<ID>.
    #[arg(long, env = "EDGEFLEET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The config file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<String>,
    pub broker: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub data_dir: Option<PathBuf>,
    pub keepalive_secs: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub controller_key: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

pub use edgefleet_protocol::broker_url::BrokerAddr;

/// The validated configuration `run` works with.
#[derive(Debug, Clone)]
pub struct Config {
    pub device_id: String,
    pub broker: BrokerAddr,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub keepalive: Duration,
    /// The controller key desired documents must be signed with.
    pub trusted_key: VerifyingKey,
    /// TLS client configuration (gateway CA + this device's certificate) for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Default MQTT keepalive.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 10;

impl Config {
    /// Merges the command line over the config file (if any) and validates the result.
    /// Returns the config and the chosen log format.
    pub fn from_cli(cli: Cli) -> Result<(Config, LogFormat), ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        // An enrolled device finds its id, broker and labels in its data dir.
        let asked_id = cli.id.or(file.id);
        let data_dir = cli.data_dir.or(file.data_dir);
        let enrolled_in = match (&data_dir, &asked_id) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(id)) => Some(default_data_dir(id)?),
            (None, None) => None,
        };
        let enrolled = match &enrolled_in {
            Some(dir) => crate::identity::load_enrolled(dir)
                .map_err(|e| ConfigError::Identity(format!("{e:#}")))?,
            None => None,
        };
        let id = match (asked_id, &enrolled) {
            (Some(asked), Some(e)) if asked != e.device => {
                return Err(ConfigError::OtherDevice {
                    data_dir: enrolled_in.unwrap_or_default(),
                    enrolled: e.device.clone(),
                    asked,
                });
            }
            (Some(asked), _) => asked,
            (None, Some(e)) => e.device.clone(),
            (None, None) => return Err(ConfigError::MissingId),
        };
        let labels = match (cli.labels, file.labels, &enrolled) {
            (Some(items), _, _) => parse_labels(&items)?,
            (None, Some(labels), _) => labels,
            (None, None, Some(e)) => e.labels.clone(),
            (None, None, None) => BTreeMap::new(),
        };
        let log_format = cli.log_format.or(file.log_format).unwrap_or_default();
        let config = Config::new(
            id,
            &cli.broker
                .or(file.broker)
                .or(enrolled.map(|e| e.broker_url))
                .ok_or(ConfigError::MissingBroker)?,
            labels,
            data_dir,
            cli.keepalive
                .or(file.keepalive_secs)
                .unwrap_or(DEFAULT_KEEPALIVE_SECS),
            cli.controller_key.or(file.controller_key),
        )?;
        Ok((config, log_format))
    }

    /// Builds a validated config. `data_dir: None` picks `./.edgefleet-agent/<id>`;
    /// `controller_key: None` uses the key pinned at enrollment (`DATA_DIR/identity/`).
    pub fn new(
        device_id: String,
        broker: &str,
        labels: BTreeMap<String, String>,
        data_dir: Option<PathBuf>,
        keepalive_secs: u64,
        controller_key: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        validate_device_id(&device_id).map_err(ConfigError::DeviceId)?;
        for (k, v) in &labels {
            validate_label(k, v).map_err(ConfigError::Label)?;
        }
        let broker = BrokerAddr::parse(broker)?;
        if !(1..=u64::from(u16::MAX)).contains(&keepalive_secs) {
            return Err(ConfigError::Keepalive(keepalive_secs));
        }
        let data_dir = match data_dir {
            Some(dir) => dir,
            None => default_data_dir(&device_id)?,
        };
        let tls = if broker.tls {
            Some(
                crate::identity::mqtt_tls_config(&data_dir).map_err(|e| ConfigError::Tls {
                    broker: broker.to_string(),
                    message: format!("{e:#}"),
                })?,
            )
        } else {
            None
        };
        let key_path = match controller_key {
            Some(path) => path,
            None => {
                let pinned = pinned_key_path(&data_dir);
                if !pinned.exists() {
                    return Err(ConfigError::MissingControllerKey);
                }
                pinned
            }
        };
        let trusted_key = load_key(&key_path)?;
        Ok(Config {
            device_id,
            broker,
            labels,
            data_dir,
            keepalive: Duration::from_secs(keepalive_secs),
            trusted_key,
            tls,
        })
    }
}

/// `./.edgefleet-agent/<id>` under the current directory.
pub fn default_data_dir(device_id: &str) -> Result<PathBuf, ConfigError> {
    Ok(std::env::current_dir()
        .map_err(ConfigError::CurrentDir)?
        .join(".edgefleet-agent")
        .join(device_id))
}

/// Where enrollment pins the controller's public key.
pub fn pinned_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("controller.pub")
}

fn load_key(path: &Path) -> Result<VerifyingKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ControllerKey {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse_public_key(&text).map_err(|message| ConfigError::ControllerKey {
        path: path.to_owned(),
        message,
    })
}

fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::LabelSyntax {
                item: item.to_owned(),
            })?;
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["edgefleet-agent"];
        all.extend_from_slice(args);
        let mut cli = Cli::try_parse_from(all).unwrap();
        if cli.controller_key.is_none() {
            cli.controller_key = Some(test_key());
        }
        cli
    }

    /// A valid controller public key file shared by these tests.
    fn test_key() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("edgefleet-test-key-{}-{n}.pub", std::process::id()));
        let signer = edgefleet_protocol::signing::DocumentSigner::from_secret(&[9; 32]);
        std::fs::write(&path, signer.public_key_text()).unwrap();
        path
    }

    #[test]
    fn controller_key_is_required_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let mut c = cli(&["--id", "a", "--broker", "mqtt://gw:1", "--data-dir", data]);
        c.controller_key = None;
        let e = Config::from_cli(c).unwrap_err().to_string();
        assert!(
            e.contains("enroll") && e.contains("--controller-key"),
            "{e}"
        );
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "not a key").unwrap();
        let e = Config::from_cli(cli(&[
            "--id",
            "a",
            "--broker",
            "mqtt://gw:1",
            "--controller-key",
            bad.to_str().unwrap(),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad.pub") && e.contains("base64"), "{e}");
        // The key pinned at enrollment is found without a flag.
        std::fs::create_dir_all(dir.path().join("identity")).unwrap();
        std::fs::copy(test_key(), pinned_key_path(dir.path())).unwrap();
        let mut c = cli(&["--id", "a", "--broker", "mqtt://gw:1", "--data-dir", data]);
        c.controller_key = None;
        assert!(Config::from_cli(c).is_ok());
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "id = \"from-file\"\nbroker = \"mqtt://file:1883\"\nkeepalive_secs = 30\n\
             [labels]\nsite = \"lyon\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let (c, fmt) = Config::from_cli(cli(&["--config", p, "--id", "press-07"])).unwrap();
        assert_eq!(c.device_id, "press-07");
        assert_eq!(c.broker.host, "file");
        assert_eq!(c.keepalive, Duration::from_secs(30));
        assert_eq!(c.labels.get("site").map(String::as_str), Some("lyon"));
        assert_eq!(fmt, LogFormat::Text);
        assert!(c.data_dir.ends_with(".edgefleet-agent/press-07"));

        let (c, _) =
            Config::from_cli(cli(&["--config", p, "--labels", "line=3, area=stamping"])).unwrap();
        assert_eq!(c.device_id, "from-file");
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.labels["area"], "stamping");
    }

    #[test]
    fn refuses_bad_settings_with_clear_errors() {
        let e = |args: &[&str]| Config::from_cli(cli(args)).unwrap_err().to_string();
        assert!(e(&["--broker", "mqtt://gw:1"]).contains("--id"));
        assert!(e(&["--id", "a/b", "--broker", "mqtt://gw:1"]).contains("device id"));
        assert!(e(&["--id", "a"]).contains("--broker"));
        assert!(
            e(&["--id", "a", "--broker", "mqtt://gw:1", "--labels", "x"]).contains("key=value")
        );
        assert!(
            e(&["--id", "a", "--broker", "mqtt://gw:1", "--labels", "x=a b"]).contains("label")
        );
        assert!(
            e(&["--id", "a", "--broker", "mqtt://gw:1", "--keepalive", "0"]).contains("keepalive")
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "idd = \"x\"\n").unwrap();
        let e = Config::from_cli(cli(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("idd"), "{e}");
    }
}
