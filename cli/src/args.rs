//! The command line as clap reads it: every command, flag and its help text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edgefleet_controller::ControllerConfig;
use edgefleet_protocol::broker_url::BrokerAddr;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "edgefleet",
    version,
    about = "edgefleet: one control plane for containerised apps on a fleet of edge devices",
    long_about = "edgefleet runs containerised apps on a fleet of edge devices over MQTT.\n\n\
        Start the control plane with `edgefleet gateway --data-dir ./data` (embedded MQTT broker + controller + HTTP API),\n\
        enroll each device with `edgefleet device add ID --labels site=lyon,line=3` and, on the device,\n\
        `edgefleet-agent enroll --token TOKEN` then `edgefleet-agent --data-dir DIR` (it connects to the TLS listener, mqtts://GATEWAY:8883),\n\
        then deploy a Compose file with `edgefleet apply -f stack.yml --name NAME --target 'site=lyon,line=3'`\n\
        and watch with `edgefleet get devices`. Every --*-listen flag accepts port 0; the addresses really bound\n\
        are printed and written to DATA_DIR/addresses.json."
)]
pub struct Cli {
    /// API of the gateway, for client commands: https://GATEWAY:8444 from another host (the
    /// CA pinned by `edgefleet login --ca-file`), or the loopback http://127.0.0.1:8080.
    #[arg(
        long,
        global = true,
        env = "EDGEFLEET_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Print the API's JSON instead of tables (client commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format of server commands: text or json. Log level comes from RUST_LOG (default info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: embedded MQTT broker + controller + HTTP API in one process.
    Gateway(GatewayArgs),
    /// Run the controller against an external MQTT broker (Mosquitto, EMQX, …).
    Controller(ControllerArgs),
    /// Run only the embedded MQTT broker (e.g. to run the controller as a separate process).
    Broker(BrokerArgs),
    /// Create or update a deployment from a Compose file (a new revision if anything changed).
    Apply(ApplyArgs),
    /// Show devices or deployments.
    #[command(subcommand)]
    Get(GetCommand),
    /// Delete a deployment: its containers are removed from every device it targets.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// A deployment's revisions with who and when; `--diff A B` shows what changed between two.
    History {
        deployment: String,
        /// Two revisions to compare, e.g. `--diff 3 4`.
        #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
        diff: Option<Vec<u64>>,
    },
    /// Maintenance windows per site: rollout waves wait for them.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Workload policies: what the apps of each site may do on its devices (privileged,
    /// host network, host paths, devices, registries, limits, …). Admins set them; anyone
    /// may read them and check a file against them.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Private registries: the credentials devices pull their images with (admins set
    /// them). A device gets a registry's credential, sealed for its enrolled key, when its
    /// stacks' images come from that registry and its site is in the credential's scope.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Variables the controller keeps per site and per device: the values `${VAR}` takes in
    /// a Compose file on each device. Precedence: built-ins (EDGEFLEET_DEVICE, EDGEFLEET_SITE
    /// and one per label) > the device's > its site's > `apply --var`/`--env-file`.
    #[command(subcommand)]
    Vars(VarsCommand),
    /// Staged rollouts: start one, watch it, pause, resume or abort it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Log in to the API; the session token is kept in the config dir (0600) for 12 h.
    Login(LoginArgs),
    /// Revoke the stored session token and forget it.
    Logout,
    /// Who the stored token (or EDGEFLEET_TOKEN) belongs to: user, role, sites.
    Whoami,
    /// API users (admin only).
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for scripts (EDGEFLEET_TOKEN), with your role and sites.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The tamper-evident audit log: verify it, list or export records.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Device identities: enroll a device (one-time token) or revoke it (admin only).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Read-only MQTT credentials for integrators (SCADA, historians), admin only.
    #[command(subcommand)]
    Integrator(IntegratorCommand),
    /// Local MQTT users of the gateway's plain loopback listener (admin only).
    #[command(subcommand, name = "mqtt-user")]
    MqttUser(MqttUserCommand),
    /// The confinement rules for an external broker.
    #[command(subcommand)]
    Acl(AclCommand),
    /// The last lines a service wrote on a device, read from the device now.
    #[command(after_help = "Example:\n  edgefleet logs press-07 opcua-bridge bridge --tail 200")]
    Logs {
        device: String,
        stack: String,
        service: String,
        /// How many lines (1 to 1000).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a one-time enrollment token for a device (printed once; expires).
    ///
    /// On the device run `edgefleet-agent enroll --token TOKEN`: the agent gets its own
    /// certificate and key and pins this gateway's CA and signing key. A token works once.
    #[command(
        after_help = "Example:\n  edgefleet device add press-07 --labels site=lyon,area=stamping,line=3 --expires 2h"
    )]
    Add {
        id: String,
        /// Labels the device starts with, key=value comma-separated (site, area, line…).
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token stays valid (e.g. 2h, 7d; at most 30d).
        #[arg(long, default_value = "24h")]
        expires: String,
    },
    /// Revoke every certificate of a device: it is disconnected now and cannot reconnect.
    /// Enroll it again (device add) to let it back.
    Revoke { id: String },
    /// Change a device's labels (its site, area, line…): the inventory, not the device,
    /// decides them. The device's desired state, scope and site summary follow at once.
    ///
    /// `key=value` sets a label, `key-` removes it. What the device reports about itself is
    /// shown as "reported" and never used; a mismatch is an alarm.
    #[command(after_help = "Example:
  edgefleet device label press-07 site=paris line=2 area-")]
    Label {
        id: String,
        /// `key=value` to set, `key-` to remove (at least one).
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MqttUserCommand {
    /// Create a local MQTT user with a random password (printed once) for the gateway's plain
    /// listener (--mqtt-listen, loopback). The role decides what it may do: `local` (default)
    /// publishes and reads only outside edgefleet/, within its --read and --write filters;
    /// `bridge` may use every topic, like the controller (a trusted bridge or a test suite);
    /// `device:ID` and `integrator:NAME` act exactly as that device or integrator.
    ///
    /// A local user may subscribe to a broader filter than it may read (`#`): it receives only
    /// the messages its read filters match. A filter matching none of them is refused (SUBACK
    /// 0x80). A PUBLISH outside its write filters is acknowledged and dropped, and audited.
    #[command(
        after_help = "Examples:\n  edgefleet mqtt-user add historian --read 'plant/#' --write none\n  mosquitto_sub -h 127.0.0.1 -p 1883 -u historian -P PASSWORD -t 'plant/#'\n  edgefleet mqtt-user add line3-plc --read 'plant/line3/cmd/#' --write 'plant/line3/#'"
    )]
    Add {
        name: String,
        /// local, bridge, device:ID or integrator:NAME.
        #[arg(long, default_value = "local")]
        role: String,
        /// Role local: a topic filter it may receive (repeat for several; default `#`, every
        /// topic outside edgefleet/; `none` for no reading).
        #[arg(long = "read", value_name = "FILTER")]
        read: Vec<String>,
        /// Role local: a topic filter it may publish on (repeat for several; default `#`;
        /// `none` for a read-only user).
        #[arg(long = "write", value_name = "FILTER")]
        write: Vec<String>,
    },
    /// List the local MQTT users (names, roles, who created them; never passwords).
    List,
    /// Remove a local MQTT user: its connections are closed now.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum IntegratorCommand {
    /// Issue a read-only certificate: status, presence, events, site summaries and rollout
    /// status; it can publish nothing. Writes cert.pem, key.pem (0600) and ca.pem to --out.
    #[command(
        after_help = "Then, e.g.:\n  mosquitto_sub -h GATEWAY -p 8883 --cafile OUT/ca.pem --cert OUT/cert.pem --key OUT/key.pem \\\n    -i integrator:NAME -t 'edgefleet/v1/fleet/#' -v"
    )]
    Add {
        name: String,
        /// Directory to write the credentials to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke every certificate of an integrator: its connections close now and it cannot
    /// connect again (issue a new one with `integrator add`).
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Print the ACL file that gives an external broker the same confinement as the gateway.
    Export {
        /// Broker flavour.
        #[arg(long, default_value = "mosquitto", value_parser = ["mosquitto"])]
        format: String,
        /// Integrator names to write read-only user blocks for (repeat for several).
        #[arg(long = "integrator")]
        integrators: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User to log in as.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Read the password from this file (e.g. <data-dir>/initial-admin-password).
    #[arg(long, conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// The gateway's CA certificate (its DATA_DIR/pki/ca.pem) to check an https:// --server
    /// against; kept next to the token and used by every later command. Without it, the CA
    /// pinned at an earlier login (or EDGEFLEET_CA_FILE) is used.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a password is generated and printed once.
    Add {
        name: String,
        /// admin, operator, viewer or auditor.
        #[arg(long)]
        role: String,
        /// A site the user may act on (operators and viewers; repeat for several).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// All users with their role and sites.
    List,
    /// Remove a user and revoke every token of theirs.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for yourself; it is printed once. Use it as EDGEFLEET_TOKEN.
    Create {
        /// What uses it, e.g. ci-deploy.
        name: String,
        /// Lifetime, e.g. 30d or 12h: at most 366d, for a viewer at most 31d. Default 90d (30d
        /// for a viewer).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Your unexpired tokens by name (sessions are named `login`); admins: --user or --all.
    List {
        /// Another user's tokens (admin only).
        #[arg(long, conflicts_with = "all")]
        user: Option<String>,
        /// Every user's tokens (admin only).
        #[arg(long)]
        all: bool,
    },
    /// Revoke every token of yours with this name (admins: another user's with --user).
    Revoke {
        name: String,
        /// Whose token (admin only).
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain in the store file; exits non-zero and names the first bad record.
    /// Reads the file directly, so it works with the gateway stopped. Prints the head, signed
    /// with the data dir's key, to be saved outside the gateway.
    Verify {
        /// The gateway's data directory (holding edgefleet.db).
        #[arg(long, default_value = "./edgefleet-data")]
        data_dir: PathBuf,
        /// A signed head saved earlier (`edgefleet --json audit head > FILE`, or the retained
        /// edgefleet/v1/audit/head): also fails if the chain no longer holds that record with
        /// that hash (the newest records cut off, or the chain rewritten and rehashed).
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// The controller's public key to check the saved head with: base64 text or a file
        /// holding it. Default: DATA_DIR/signing/desired-signing.pub. Give the key you pinned
        /// elsewhere (an enrollment bundle) if the gateway's files may have been replaced.
        #[arg(long, value_name = "KEY|FILE", requires = "against")]
        key: Option<String>,
    },
    /// The audit log's current head, verified and signed by the gateway (admin, auditor):
    /// save it outside the gateway (`edgefleet --json audit head > head.json`) and check it
    /// later with `audit verify --against head.json`.
    Head,
    /// Audit records, oldest first (admin, auditor).
    List {
        /// RFC 3339 time or a duration back from now (2h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Export records as CSV or JSON (admin, auditor).
    Export {
        /// csv or json.
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// RFC 3339 time or a duration back from now (2h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Directory for the store (edgefleet.db). Created if missing.
    #[arg(long, default_value = "./edgefleet-data")]
    pub data_dir: PathBuf,
    /// Address of the plain HTTP API and dashboard: loopback only (127.0.0.1, ::1), since
    /// passwords, cookies and tokens would cross the network in clear; a gateway serves other
    /// hosts over HTTPS (--https-listen). Port 0: any free port (see DATA_DIR/addresses.json).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// An HTTP connection (new, or kept alive between requests) that has not sent a whole
    /// request head within this time is closed; also the TLS handshake's limit on HTTPS.
    /// Applies to every HTTP listener (API, dashboard, enrollment).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Duration,
    /// MQTT keepalive of the controller's connection, in seconds.
    #[arg(long, default_value_t = 10)]
    pub keepalive: u64,
    /// Audit retention by age (e.g. 400d): hourly, a signed checkpoint is written and the
    /// records before the newest checkpoint older than this are deleted. Default: keep all.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "audit_keep_records")]
    pub audit_retention: Option<Duration>,
    /// Audit retention by count: keep at least this many of the newest records (pruned only
    /// before a signed checkpoint, hourly). Default: keep all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_keep_records: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Address of the plain MQTT listener for local users an admin created (`edgefleet
    /// mqtt-user add`): each is confined to its role's topics, like a TLS client. Keep it on
    /// loopback (passwords travel in clear); any other address is accepted with a warning.
    /// The embedded broker itself listens on a loopback port of its own that takes only the
    /// gateway's internal credential. Port 0: any free port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Address of the TLS MQTT listener devices and integrators connect to, with the
    /// certificate they got at enrollment (`mqtts://`). Port 0: any free port.
    #[arg(long, default_value = "0.0.0.0:8883")]
    pub mqtts_listen: SocketAddr,
    /// Address of the HTTPS listener agents enroll at (`edgefleet-agent enroll`). Port 0: any
    /// free port.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub enroll_listen: SocketAddr,
    /// Address of the HTTPS API and dashboard, with the gateway's server certificate (signed
    /// by DATA_DIR/pki/ca.pem; `edgefleet login --ca-file` pins it). Port 0: any free port.
    #[arg(long, default_value = "0.0.0.0:8444")]
    pub https_listen: SocketAddr,
    /// Name or address devices reach this gateway at: goes into enrollment tokens and the
    /// gateway's server certificate. Default: this machine's host name.
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
}

impl GatewayArgs {
    /// The name devices reach this gateway at: `--public-host`, else this machine's host name.
    pub fn public_host(&self) -> String {
        self.public_host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_owned())
        })
    }
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The external broker, as mqtt://HOST:PORT (plain MQTT: run the controller next to the
    /// broker or on a trusted network; devices use the broker's TLS listener).
    #[arg(long, value_parser = plain_broker)]
    pub broker: BrokerAddr,
    /// User name for the broker, if it requires one (Mosquitto's password_file); give the
    /// password with --broker-password-file.
    #[arg(long, value_name = "USER", requires = "broker_password_file")]
    pub broker_user: Option<String>,
    /// File holding the broker password (its first line; keep it 0600). Never on the
    /// command line, where every local user could read it in the process list.
    #[arg(long, value_name = "FILE", requires = "broker_user")]
    pub broker_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Address of the plain MQTT listener (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Write the address really bound to this JSON file (`{"schema":1,"pid":…,"mqtt":"HOST:PORT"}`).
    #[arg(long, value_name = "FILE")]
    pub addresses_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub input: ComposeInput,
    /// Deployment name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    /// Devices to run it on: 'site=lyon,line=3' (labels), 'id=press-07|press-08' (devices), or '*'.
    #[arg(long)]
    pub target: String,
    /// Check the file, the target, the workload policies and every device's document size,
    /// and print what would change (revision, devices, devices held by a staged apply) without recording or
    /// sending anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// All devices with their connection, revision and service health.
    Devices,
    /// One device: status of every stack and service, recent events.
    Device { id: String },
    /// All deployments with their target and latest revision.
    Deployments,
    /// One deployment: its revisions and current Compose file.
    Deployment { name: String },
}

/// Which policy a `policy` command means: one site's, or the fleet default.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PolicyScope {
    /// The site (its devices' `site` label).
    pub site: Option<String>,
    /// The fleet default: the policy of every site that has none of its own.
    #[arg(long)]
    pub fleet: bool,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// The registries with a credential: host, sites, username, who set it (never the
    /// password).
    List,
    /// Set the credential for a registry host, e.g. `printf %s "$PW" | edgefleet registry
    /// set registry.plant.local:5000 --username plant --password-stdin --site lyon`.
    /// The host is written as images name it. Devices of the sites get it with their next
    /// desired document; the gateway keeps it sealed, and neither logs nor shows the password.
    Set {
        /// Registry host[:port], as in the images' names.
        host: String,
        #[arg(long)]
        username: String,
        /// Read the password from standard input (one line).
        #[arg(long, conflicts_with = "password_file")]
        password_stdin: bool,
        /// Read the password from a file.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// A site whose devices get it (repeatable).
        #[arg(long = "site", required_unless_present = "all_sites")]
        sites: Vec<String>,
        /// Every site's devices get it.
        #[arg(long, conflicts_with = "sites")]
        all_sites: bool,
    },
    /// Remove a registry's credential (devices keep the images they pulled).
    Remove { host: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The policy a site's devices run under (its own, else the fleet default, else the
    /// baseline), with who set it.
    #[command(
        after_help = "Examples:\n  edgefleet policy get lyon\n  edgefleet policy get --fleet"
    )]
    Get {
        #[command(flatten)]
        scope: PolicyScope,
    },
    /// Every policy set, and the baseline they start from.
    List,
    /// Set a site's policy (or the fleet default) from a YAML file, admin only. Prints the
    /// deployments that break the new policy: they keep running, listed, until changed.
    #[command(
        after_help = "A policy file (every rule optional; left out = the baseline's answer, which is 'no'):\n\
        \n  registries: [registry.plant.local, docker.io]   # images only from these (absent: any)\
        \n  require_digest: false      # images must be name@sha256:...\
        \n  privileged: false\
        \n  host_network: false        # network_mode: host\
        \n  devices: ['/dev/ttyUSB*']  # host devices that may be mapped\
        \n  host_paths: [/srv/data]    # host paths bind mounts may use (./relative ones are always allowed)\
        \n  capabilities: [NET_ADMIN]  # cap_add beyond the baseline set\
        \n  unconfined: false          # security_opt seccomp/apparmor unconfined\
        \n  sysctls: []                # beyond the safe set\
        \n  volume_drivers: []         # beyond local\
        \n  require_memory_limit: true\
        \n  require_cpu_limit: false\
        \n  max_log_size: 50m          # per container (max-size x max-file)\
        \n\nExample:\n  edgefleet policy set lyon -f lyon-policy.yml"
    )]
    Set {
        #[command(flatten)]
        scope: PolicyScope,
        /// The policy file (YAML or JSON).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Remove a site's own policy (it falls back to the fleet default) or the fleet default
    /// (back to the baseline), admin only.
    Clear {
        #[command(flatten)]
        scope: PolicyScope,
    },
    /// Check a Compose file against the policies of the devices a target reaches, without
    /// applying it: every refusal, with service, key and rule.
    #[command(
        after_help = "Example:\n  edgefleet policy check -f stack.yml --target site=lyon,line=3"
    )]
    Check {
        #[command(flatten)]
        input: ComposeInput,
        /// Devices it would run on, as for apply: 'site=lyon,line=3', 'id=press-07', '*'.
        #[arg(long)]
        target: String,
        /// Deployment name, as for apply (only its form is checked).
        #[arg(long, default_value = "check")]
        name: String,
    },
    /// Deployments that break the policy their devices run under now.
    Violations,
}

/// Which variables a `vars` command changes: one site's or one device's.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct VarsScope {
    /// A site: the variables of every device whose `site` label is this.
    #[arg(long)]
    pub site: Option<String>,
    /// One device: its variables win over its site's.
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VarsCommand {
    /// Set variables of a site or a device (others are kept). Every device they reach gets
    /// its deployments resolved again at once; a file that refers to them (`${LINE_IP}`) is
    /// resolved per device. Admins, and operators within their sites.
    #[command(after_help = "Examples:
  edgefleet vars set --site lyon HISTORIAN=10.1.0.5 TZ=Europe/Paris
  edgefleet vars set --device press-07 LINE_IP=10.1.3.7

In the Compose file:  environment: { PLC: \"${LINE_IP}\", SITE: \"${EDGEFLEET_SITE}\" }")]
    Set {
        #[command(flatten)]
        scope: VarsScope,
        /// NAME=VALUE (names: letters, digits, _; not starting with EDGEFLEET_).
        #[arg(required = true, value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// The variables of a site or a device, with who set them; without --site or --device,
    /// every one you may see.
    Get {
        /// A site's.
        #[arg(long, conflicts_with = "device")]
        site: Option<String>,
        /// A device's (only its own: `edgefleet get device ID` shows what it resolves).
        #[arg(long)]
        device: Option<String>,
    },
    /// Remove variables of a site or a device. A device that can no longer resolve a
    /// deployment keeps what it runs of it, with an alarm.
    #[command(after_help = "Examples:
  edgefleet vars unset --device press-07 LINE_IP
  edgefleet vars unset --site lyon --all")]
    Unset {
        #[command(flatten)]
        scope: VarsScope,
        /// Names to remove.
        #[arg(value_name = "NAME", required_unless_present = "all")]
        names: Vec<String>,
        /// Remove every variable of the site or device.
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
}

/// A Compose file and the values for its `${VAR}`s, as `apply` and `policy check` read them.
#[derive(Debug, Args)]
pub struct ComposeInput {
    /// Compose file ('-' reads standard input).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// A value for ${KEY} in the Compose file (repeatable); wins over --env-file.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// An env file (KEY=value lines, # comments) giving values for ${KEY} in the Compose file.
    /// Read here and sent with the file: it need not exist on the devices.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Set a site's window, e.g. `edgefleet window set lyon 'Mon-Fri 22:00-04:00' --tz Europe/Paris`.
    /// A window ending before it starts runs past midnight.
    Set {
        site: String,
        /// DAYS HH:MM-HH:MM (days: Mon-Fri, Sat,Sun, daily).
        window: String,
        /// IANA time zone of the site.
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    /// Remove a site's window (its devices can be updated at any time).
    Clear { site: String },
    /// List the windows and whether each is open now.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Move a deployment's devices to a revision in waves, gated on container health.
    /// Strategy flags override the deployment file's `x-edgefleet-rollout`.
    Start(Box<RolloutStart>),
    /// Progress of a rollout, wave by wave (`--watch`: follow it live until it ends or pauses).
    Status {
        id: u64,
        /// Follow the rollout (progress bar on a terminal) until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// All rollouts, newest first.
    List,
    /// Stop moving further devices; devices in flight finish.
    Pause { id: u64 },
    /// Continue a paused rollout.
    Resume { id: u64 },
    /// End the rollout: no further device moves; every device stays on one consistent revision.
    Abort { id: u64 },
    /// Return every device the rollout moved to the revision it came from (a rollout of its own).
    Rollback { id: u64 },
}

#[derive(Debug, Args)]
pub struct RolloutStart {
    /// Deployment to roll out.
    pub deployment: String,
    /// Target revision (default: the latest).
    #[arg(long)]
    pub revision: Option<u64>,
    /// Devices in the first wave.
    #[arg(long)]
    pub canary: Option<u32>,
    /// Devices per following wave: a count (2) or a share (25%).
    #[arg(long)]
    pub batch: Option<String>,
    /// Failures tolerated before --on-failure applies: a count or a share.
    #[arg(long)]
    pub max_failures: Option<String>,
    /// Time a device has to become healthy (e.g. 5m).
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// How long a device must stay healthy to count as a success (e.g. 30s).
    #[arg(long)]
    pub soak: Option<String>,
    /// On too many failures: pause or rollback.
    #[arg(long)]
    pub on_failure: Option<String>,
    /// A device offline when its wave comes: wait, skip or fail.
    #[arg(long)]
    pub offline: Option<String>,
    /// How long `--offline wait` waits (e.g. 10m).
    #[arg(long)]
    pub offline_timeout: Option<String>,
    /// Order devices by site, area or line.
    #[arg(long)]
    pub order_by: Option<String>,
    /// Never two devices of the same site, area or line in one wave.
    #[arg(long)]
    pub one_per: Option<String>,
}

impl RolloutStart {
    /// The strategy overrides as the API takes them (only the flags given).
    pub fn overrides(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(c) = self.canary {
            m.insert("canary".into(), json!(c));
        }
        let text = [
            ("batch", &self.batch),
            ("max_failures", &self.max_failures),
            ("health_timeout", &self.health_timeout),
            ("soak", &self.soak),
            ("on_failure", &self.on_failure),
            ("offline", &self.offline),
            ("offline_timeout", &self.offline_timeout),
            ("order_by", &self.order_by),
            ("one_per", &self.one_per),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a deployment (its revisions stay in the history).
    Deployment { name: String },
}

impl ServerArgs {
    pub fn controller_config(&self, broker: BrokerAddr) -> ControllerConfig {
        let mut c = ControllerConfig::new(self.data_dir.clone(), broker);
        c.keepalive = Duration::from_secs(self.keepalive.max(1));
        c.http_limits.header_read_timeout = self.http_idle_timeout.max(Duration::from_millis(100));
        c.http_limits.handshake_timeout = c.http_limits.header_read_timeout;
        use edgefleet_store::audit::Retention;
        c.audit_retention = match (self.audit_retention, self.audit_keep_records) {
            (Some(age), _) => Some(Retention::Age(age)),
            (None, Some(n)) => Some(Retention::Count(n)),
            (None, None) => None,
        };
        c
    }
}

/// The controller's own broker connection is plain MQTT (loopback or a trusted network).
fn plain_broker(s: &str) -> Result<BrokerAddr, String> {
    let addr = BrokerAddr::parse(s).map_err(|e| e.to_string())?;
    if addr.tls {
        return Err(
            "the controller connects to its broker with plain MQTT (mqtt://HOST:PORT); run it next to the broker, devices use the broker's TLS listener".to_owned(),
        );
    }
    Ok(addr)
}
