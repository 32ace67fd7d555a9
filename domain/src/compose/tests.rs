use super::*;

const FULL: &str = r#"
version: "3.8"
x-common: &common
  restart: unless-stopped
services:
  db:
    <<: *common
    image: registry.local/db:1.2
    environment: ["A=1", "B=two"]
    volumes: ["data:/var/lib/db", "/etc/plant:/etc/plant:ro", "./conf:/etc/db"]
  web:
    image: web:2
    command: ["httpd", "-f"]
    entrypoint: /bin/sh -c
    environment: { MODE: prod, PORT: 8080 }
    ports: ["8080:80", "127.0.0.1:9000:9000/udp", "443"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1m30s
      timeout: 500ms
      retries: 3
      start_period: 2s
    labels: { team: ot }
    depends_on: { db: { condition: service_healthy } }
    deploy:
      update_config:
        order: start-first
    x-notes: ignored
volumes:
  data: {}
"#;

#[test]
fn parses_the_supported_subset() {
    let stack = parse(FULL).unwrap();
    assert_eq!(stack.volumes, vec!["data"]);
    let db = &stack.services["db"];
    assert_eq!(db.environment["B"], "two");
    assert_eq!(db.volumes[0].kind, VolumeKind::Named);
    assert!(db.volumes[1].read_only);
    assert_eq!(db.volumes[2].kind, VolumeKind::Stack);
    assert_eq!(db.volumes[2].source, "conf");
    assert_eq!(
        db.restart,
        RestartPolicy::UnlessStopped,
        "merge key applied"
    );
    let web = &stack.services["web"];
    assert_eq!(
        web.command.as_deref(),
        Some(&["httpd".to_owned(), "-f".to_owned()][..])
    );
    assert_eq!(web.entrypoint.as_ref().map(Vec::len), Some(2));
    assert_eq!(web.environment["PORT"], "8080");
    assert_eq!(web.ports[0].host_port, Some(8080));
    assert_eq!(web.ports[1].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(web.ports[1].protocol, PortProtocol::Udp);
    assert_eq!(web.ports[2].host_port, None);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, vec!["CMD", "true"]);
    assert_eq!(hc.interval_ms, Some(90_000));
    assert_eq!(hc.timeout_ms, Some(500));
    assert_eq!(hc.retries, Some(3));
    assert_eq!(web.depends_on, vec!["db"]);
    assert_eq!(
        web.extra.depends_conditions["db"],
        DependsCondition::ServiceHealthy
    );
    assert_eq!(web.update_order, UpdateOrder::StartFirst);
    assert_eq!(db.update_order, UpdateOrder::StopFirst);
    // Every service is on the stack's own network.
    assert_eq!(stack.networks.keys().collect::<Vec<_>>(), vec!["default"]);
}

#[test]
fn the_keys_real_files_use() {
    let yaml = r#"
services:
  nodered:
    container_name: nodered
    image: nodered/node-red:latest
    hostname: nr
    user: "1000:1000"
    working_dir: /data
    expose: ["1880", "9000-9001/udp"]
    networks:
      front: { aliases: [flows] }
      default:
    devices: ["/dev/ttyUSB0:/dev/ttyUSB0"]
    cap_add: [SYS_RAWIO]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    extra_hosts: ["plc:10.0.0.5", "host.docker.internal:host-gateway"]
    dns: 10.0.0.1
    sysctls: { net.core.somaxconn: 1024 }
    ulimits: { nofile: { soft: 1024, hard: 2048 }, nproc: 512 }
    tmpfs: /run
    read_only: true
    shm_size: 64m
    init: true
    stop_signal: SIGINT
    stop_grace_period: 1m
    logging: { driver: json-file, options: { max-size: 10m, max-file: "3" } }
    mem_limit: 512m
    cpus: 1.5
    tty: true
    stdin_open: true
    platform: linux/arm64
    command: node-red --settings "/data/my settings.js"
  host:
    image: telegraf
    network_mode: host
    privileged: true
    deploy: { resources: { limits: { memory: 1g, cpus: "0.5" } } }
  side:
    image: busybox
    network_mode: "service:host"
networks:
  front:
    driver: bridge
    driver_opts: { com.docker.network.bridge.name: br-front }
    internal: true
  plant:
    external: true
    name: plant-lan
"#;
    let stack = parse(yaml).unwrap();
    let nr = &stack.services["nodered"];
    let x = &nr.extra;
    assert_eq!(x.container_name.as_deref(), Some("nodered"));
    assert_eq!(x.hostname.as_deref(), Some("nr"));
    assert_eq!(x.user.as_deref(), Some("1000:1000"));
    assert_eq!(x.working_dir.as_deref(), Some("/data"));
    assert_eq!(x.expose, vec!["1880/tcp", "9000/udp", "9001/udp"]);
    assert_eq!(x.networks["front"].aliases, vec!["flows"]);
    assert!(x.networks.contains_key("default"));
    assert_eq!(x.devices, vec!["/dev/ttyUSB0:/dev/ttyUSB0"]);
    assert_eq!(x.cap_add, vec!["SYS_RAWIO"]);
    assert_eq!(x.cap_drop, vec!["ALL"]);
    assert_eq!(x.security_opt, vec!["no-new-privileges:true"]);
    assert_eq!(
        x.extra_hosts,
        vec!["plc:10.0.0.5", "host.docker.internal:host-gateway"]
    );
    assert_eq!(x.dns, vec!["10.0.0.1"]);
    assert_eq!(x.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(
        x.ulimits["nofile"],
        Ulimit {
            soft: 1024,
            hard: 2048
        }
    );
    assert_eq!(
        x.ulimits["nproc"],
        Ulimit {
            soft: 512,
            hard: 512
        }
    );
    assert_eq!(x.tmpfs, vec!["/run"]);
    assert!(x.read_only && x.init && x.tty && x.stdin_open);
    assert_eq!(x.shm_size, Some(64 << 20));
    assert_eq!(x.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(x.stop_grace_period_ms, Some(60_000));
    let log = x.logging.as_ref().unwrap();
    assert_eq!(log.driver.as_deref(), Some("json-file"));
    assert_eq!(log.options["max-file"], "3");
    assert_eq!(x.memory_bytes, Some(512 << 20));
    assert_eq!(x.nano_cpus, Some(1_500_000_000));
    assert_eq!(x.platform.as_deref(), Some("linux/arm64"));
    assert_eq!(
        nr.command.as_deref().unwrap(),
        ["node-red", "--settings", "/data/my settings.js"]
    );
    let host = &stack.services["host"].extra;
    assert_eq!(host.network_mode.as_deref(), Some("host"));
    assert!(host.privileged);
    assert_eq!(host.memory_bytes, Some(1 << 30));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(
        stack.services["side"].extra.network_mode.as_deref(),
        Some("service:host")
    );
    let front = &stack.networks["front"];
    assert!(front.internal);
    assert_eq!(front.driver.as_deref(), Some("bridge"));
    assert_eq!(
        front.driver_opts["com.docker.network.bridge.name"],
        "br-front"
    );
    assert!(stack.networks["plant"].external);
    assert_eq!(stack.networks["plant"].name.as_deref(), Some("plant-lan"));
    assert!(stack.networks.contains_key("default"));
}

#[test]
fn interpolation_from_variables() {
    let yaml = r#"
services:
  app:
    image: "registry.local/app:${TAG:-1.0}"
    ports: ["${PORT}:80"]
    environment:
      SITE: "${EDGEFLEET_SITE}"
      PRICE: "5$$"
      FROM_VARS:
    cpus: ${CPUS:-0.5}
"#;
    let vars: Variables = [
        ("PORT", "8081"),
        ("EDGEFLEET_SITE", "lyon"),
        ("FROM_VARS", "v"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let stack = parse_with(yaml, &vars).unwrap();
    let app = &stack.services["app"];
    assert_eq!(app.image, "registry.local/app:1.0");
    assert_eq!(app.ports[0].host_port, Some(8081));
    assert_eq!(app.environment["SITE"], "lyon");
    assert_eq!(app.environment["PRICE"], "5$");
    assert_eq!(app.environment["FROM_VARS"], "v");
    assert_eq!(app.extra.nano_cpus, Some(500_000_000));
    let err = parse(yaml).unwrap_err().to_string();
    assert!(
        err.starts_with("services.app.") && err.contains("is not set"),
        "{err}"
    );
    // Every variable parse_with looked up is a reference (FROM_VARS: a bare key); parsing
    // with exactly those gives the same stack.
    let refs = scan(yaml).unwrap().references;
    let names: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["CPUS", "EDGEFLEET_SITE", "FROM_VARS", "PORT", "TAG"]
    );
    let only: Variables = vars
        .iter()
        .filter(|(k, _)| refs.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(parse_with(yaml, &only).unwrap(), stack);
}

#[test]
fn scan_reads_references_and_rollout_without_variables() {
    let yaml = r#"
x-edgefleet-rollout: { canary: 1 }
x-anchors: { ignored: "${NOT_READ}" }
services:
  app:
    image: "app:${TAG:-${DEFAULT_TAG:-1}}"
    environment: [LINE_IP, "MODE=${MODE?say the mode}", "LIT=$$HOME"]
    labels: { owner: null, site: "$EDGEFLEET_SITE" }
"#;
    let s = scan(yaml).unwrap();
    let names: Vec<&str> = s.references.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "DEFAULT_TAG",
            "EDGEFLEET_SITE",
            "LINE_IP",
            "MODE",
            "TAG",
            "owner"
        ]
    );
    assert_eq!(s.rollout.map(|r| r.canary), Some(1));
    let required: Vec<(&str, &str)> = s
        .required
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        required,
        [
            ("EDGEFLEET_SITE", "services.app.labels.site"),
            ("MODE", "services.app.environment[1]")
        ]
    );
    assert!(matches!(
        scan("services:\n  a:\n    image: \"${A\"\n"),
        Err(ComposeError::Interpolate { .. })
    ));
    assert!(matches!(scan("- a\n"), Err(ComposeError::NotAMapping)));
    // A config's `environment:` is a reference (a site may keep it); a secret's is not.
    let s = scan("services: {}\nconfigs:\n  c: { environment: CONF }\nsecrets:\n  s: { environment: TOKEN }\n").unwrap();
    assert!(s.references.contains("CONF") && !s.references.contains("TOKEN"));
    assert!(matches!(
        scan("services:\n  a:\n    image: a\n    environment: [\"${X}\"]\n"),
        Err(ComposeError::Invalid { .. })
    ));
    assert!(matches!(
        scan("services: {}\ninclude: [a.yml]\n"),
        Err(ComposeError::Refused { .. })
    ));
}

#[test]
fn update_order_from_deploy_update_config() {
    let order = |deploy: &str| {
        parse(&format!(
            "services:\n  web:\n    image: a\n    deploy: {deploy}\n"
        ))
        .map(|s| s.services["web"].update_order)
    };
    assert_eq!(
        order("{ update_config: { order: start-first } }"),
        Ok(UpdateOrder::StartFirst)
    );
    assert_eq!(
        order("{ update_config: { order: stop-first } }"),
        Ok(UpdateOrder::StopFirst)
    );
    assert_eq!(order("{ update_config: {} }"), Ok(UpdateOrder::StopFirst));
    assert_eq!(order("{}"), Ok(UpdateOrder::StopFirst));
    // The default order leaves the spec (and its config hash) as without `deploy`.
    let plain = parse("services:\n  web:\n    image: a\n").unwrap();
    let stop = parse(
        "services:\n  web:\n    image: a\n    deploy: { update_config: { order: stop-first } }\n",
    )
    .unwrap();
    assert_eq!(plain, stop);
}

#[test]
fn refusals_name_the_service_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "services:\n  web:\n    image: a\n    pid: host\n",
            "service 'web': key 'pid' is not supported",
        ),
        (
            "services:\n  web:\n    image: a\n    blkio_config: {}\n",
            "service 'web': key 'blkio_config' is not supported by edgefleet",
        ),
        (
            "services:\n  web:\n    build: .\n",
            "key 'build' is not supported: edgefleet does not build images on devices: build it once, push it to a registry",
        ),
        (
            "services:\n  web:\n    image: a\n    env_file: .env\n",
            "--env-file",
        ),
        ("services:\n  web:\n    command: x\n", "'image' is required"),
        (
            "services:\n  web:\n    image: a\n    ports: [\"99999:1\"]\n",
            "service 'web': 'ports'",
        ),
        (
            "services:\n  web:\n    image: a\n    ports: [\"8000-8001:80\"]\n",
            "service 'web': 'ports'",
        ),
        (
            "services:\n  web:\n    image: a\n    volumes: [\"../x:/x\"]\n",
            "leaves the stack directory",
        ),
        (
            "services:\n  web:\n    image: a\n    volumes: [\"~/x:/x\"]\n",
            "home directory",
        ),
        (
            "services:\n  web:\n    image: a\n    volumes: [\"/x\"]\n",
            "anonymous volume",
        ),
        (
            "services:\n  web:\n    image: a\n    volumes: [\"data:/x\"]\n",
            "not declared",
        ),
        (
            "services:\n  web:\n    image: a\n    networks: [lan]\n",
            "network 'lan' used by service 'web' is not declared",
        ),
        (
            "services:\n  web:\n    image: a\n    network_mode: \"service:zz\"\n",
            "'zz', which is not a service",
        ),
        (
            "services:\n  web:\n    image: a\n    network_mode: \"container:abc\"\n",
            "service 'web': 'network_mode'",
        ),
        (
            "services:\n  web:\n    image: a\n    extra_hosts: [\"plc:nowhere\"]\n",
            "entry 'plc:nowhere' needs a host name and an IP address",
        ),
        (
            "services:\n  web:\n    image: a\n    restart: sometimes\n",
            "service 'web': 'restart'",
        ),
        (
            "services:\n  a:\n    image: a\n    depends_on: [b]\n  b:\n    image: b\n    depends_on: [a]\n",
            "cycle",
        ),
        (
            "services:\n  a:\n    image: a\n    depends_on: [zz]\n",
            "'zz'",
        ),
        (
            "services:\n  a:\n    image: a\n    healthcheck: { test: [\"CMD\", \"x\"], interval: soon }\n",
            "service 'a': 'healthcheck'",
        ),
        ("services: {}\n", "no services"),
        ("- a\n- b\n", "mapping"),
        ("services:\n  web: [\n", "not valid YAML"),
        ("services:\n  \"a/b\":\n    image: a\n", "service name"),
        (
            "include: [other.yml]\nservices:\n  web:\n    image: a\n",
            "key 'include' is not supported",
        ),
        (
            "services:\n  web:\n    image: a\n    deploy: { replicas: 2 }\n",
            "service 'web': 'deploy' key 'replicas' is not supported (supported: update_config.order, resources.limits.cpus, resources.limits.memory)",
        ),
        (
            "services:\n  web:\n    image: a\n    deploy: { update_config: { order: start-first, parallelism: 2 } }\n",
            "service 'web': 'deploy' key 'update_config.parallelism' is not supported",
        ),
        (
            "services:\n  web:\n    image: a\n    deploy: { update_config: { order: rolling } }\n",
            "service 'web': 'deploy'",
        ),
        (
            "services:\n  web:\n    image: a\n    deploy: start-first\n",
            "service 'web': 'deploy' must be a mapping",
        ),
        (
            "services:\n  web:\n    image: a\n    deploy: { update_config: [order] }\n",
            "service 'web': 'deploy' key 'update_config' must be a mapping",
        ),
        (
            "services:\n  web:\n    image: a\n    container_name: w\n    deploy: { update_config: { order: start-first } }\n",
            "two containers cannot hold one name",
        ),
        (
            "networks:\n  n: { ipam: { driver: dhcp } }\nservices:\n  web:\n    image: a\n",
            "top-level network 'n': ipam driver 'dhcp' is not supported",
        ),
        (
            "networks:\n  n: { ipam: { config: [{ subnet: 10.0.0.0/24 }], options: { a: b } } }\nservices:\n  web:\n    image: a\n",
            "ipam 'options'",
        ),
        (
            "networks:\n  n: { ipam: { config: [{ subnet: 10.0.0.300/24 }] } }\nservices:\n  web:\n    image: a\n",
            "top-level network 'n'",
        ),
        (
            "networks:\n  n: {}\nservices:\n  web:\n    image: a\n    networks: { n: { ipv4_address: 10.0.0.5 } }\n",
            "service 'web': 'networks' network 'n': fixed address 10.0.0.5 is in no subnet",
        ),
        (
            "networks:\n  n: { ipam: { config: [{ subnet: 10.0.0.0/24 }] } }\nservices:\n  web:\n    image: a\n    networks: { n: { ipv4_address: 10.0.1.5 } }\n",
            "fixed address 10.0.1.5 is in no subnet",
        ),
        (
            "networks:\n  n: { ipam: { config: [{ subnet: 10.0.0.0/24 }] } }\nservices:\n  web:\n    image: a\n    networks: { n: { ipv4_address: 10.0.0.5 } }\n    deploy: { update_config: { order: start-first } }\n",
            "two containers cannot hold one address",
        ),
        (
            "networks:\n  n: {}\nservices:\n  web:\n    image: a\n    networks: { n: { mac_address: \"02:42:ac:11:00:02\" } }\n",
            "only 'aliases', 'ipv4_address' and 'ipv6_address' are supported",
        ),
        (
            "services:\n  web:\n    image: a\n    device_cgroup_rules: [\"x 188:* rw\"]\n",
            "service 'web': 'device_cgroup_rules' is not valid",
        ),
        (
            "volumes:\n  d: { driver: nfs-plugin }\nservices:\n  web:\n    image: a\n",
            "driver 'nfs-plugin' is not supported",
        ),
        (
            "services:\n  web:\n    image: \"${UNSET}\"\n",
            "services.web.image: variable 'UNSET' is not set",
        ),
        (
            "services:\n  web:\n    image: \"${SITE:?set the site}\"\n",
            "variable 'SITE' is required: set the site",
        ),
    ];
    for (yaml, needle) in cases {
        let err = parse(yaml).expect_err(yaml).to_string();
        assert!(
            err.contains(needle),
            "{yaml:?}: got {err:?}, wanted {needle:?}"
        );
    }
}

#[test]
fn hostile_files_are_clear_errors() {
    // A 10 MB file.
    let big = format!(
        "services:\n  a:\n    image: a\n# {}\n",
        "x".repeat(10 << 20)
    );
    assert!(matches!(parse(&big), Err(ComposeError::TooLarge(_))));
    // "Billion laughs": nine levels of ten aliases each.
    let mut bomb = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    bomb.push_str("services:\n  a:\n    image: a\n    labels: { x: *a9 }\n");
    let err = parse(&bomb).unwrap_err();
    assert!(matches!(err, ComposeError::Yaml(_)), "{err}");
    // Deep nesting.
    let deep = format!("services: {}{}", "[".repeat(5000), "]".repeat(5000));
    assert!(matches!(parse(&deep), Err(ComposeError::Yaml(_))));
    // Two documents, tags, binary junk.
    assert!(parse("services: {a: {image: a}}\n---\nservices: {}\n").is_err());
    assert!(parse("\u{0}\u{1}\u{2}").is_err());
    assert!(parse("").is_err());
}

/// A stack network with a fixed subnet (as pihole/cloudflared DoH stacks pin their resolver's
/// address) and a service allowed a class of devices by number (as ESPHome is for USB serial
/// adapters, which come and go while it runs).
#[test]
fn fixed_subnets_fixed_addresses_and_device_cgroup_rules() {
    let yaml = r#"
services:
  resolver:
    image: resolver:1
    networks:
      dns:
        ipv4_address: 172.28.5.2
        ipv6_address: "fd00:28::2"
        aliases: [upstream]
  flasher:
    image: flasher:1
    network_mode: host
    device_cgroup_rules:
      - 'c 188:* rw'
      - 'a 7:1 r'
  web:
    image: web:1
    networks: [dns, default]
networks:
  dns:
    ipam:
      driver: default
      config:
        - subnet: 172.28.5.0/24
          ip_range: 172.28.5.128/25
          gateway: 172.28.5.1
          aux_addresses: { router: 172.28.5.3 }
        - subnet: "fd00:28::/64"
"#;
    let stack = parse(yaml).unwrap();
    let dns = &stack.networks["dns"];
    assert_eq!(
        dns.ipam,
        vec![
            IpamPool {
                subnet: Some("172.28.5.0/24".into()),
                ip_range: Some("172.28.5.128/25".into()),
                gateway: Some("172.28.5.1".into()),
                aux_addresses: [("router".to_owned(), "172.28.5.3".to_owned())].into(),
            },
            IpamPool {
                subnet: Some("fd00:28::/64".into()),
                ..IpamPool::default()
            },
        ]
    );
    let resolver = &stack.services["resolver"].extra.networks["dns"];
    assert_eq!(resolver.ipv4_address.as_deref(), Some("172.28.5.2"));
    assert_eq!(resolver.ipv6_address.as_deref(), Some("fd00:28::2"));
    assert_eq!(resolver.aliases, vec!["upstream"]);
    assert_eq!(
        stack.services["flasher"].extra.device_cgroup_rules,
        vec!["c 188:* rw", "a 7:1 r"]
    );
    // `ipam: { driver: default }` alone (IOTstack's base file) is no pool at all.
    let plain = parse("networks:\n  lan: { ipam: { driver: default } }\nservices:\n  web:\n    image: a\n    networks: [lan]\n").unwrap();
    assert!(plain.networks["lan"].ipam.is_empty());
    // An external network's subnets are the device's: a fixed address there is Docker's check.
    parse("networks:\n  lan: { external: true }\nservices:\n  web:\n    image: a\n    networks: { lan: { ipv4_address: 192.168.1.9 } }\n").unwrap();
}

#[test]
fn subnet_membership() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(in_subnet(ip("10.1.2.3"), "10.1.0.0/16"));
    assert!(!in_subnet(ip("10.2.2.3"), "10.1.0.0/16"));
    assert!(in_subnet(ip("10.2.2.3"), "0.0.0.0/0"));
    assert!(in_subnet(ip("fd00::5"), "fd00::/64"));
    assert!(!in_subnet(ip("fd01::5"), "fd00::/64"));
    assert!(!in_subnet(ip("10.1.2.3"), "fd00::/64"));
    assert!(!in_subnet(ip("10.1.2.3"), "10.1.0.0/33"));
    assert!(!in_subnet(ip("10.1.2.3"), "10.1.0.0"));
}

#[test]
fn configs_and_secrets_mount_as_files() {
    let yaml = r#"
services:
  db:
    image: postgres:16
    configs:
      - pg_conf
      - source: banner
        target: /etc/motd
        mode: 0440
    secrets:
      - db_password
      - source: api_token
        target: token
        uid: "999"
        mode: 0o400
configs:
  pg_conf:
    content: "max_connections = ${MAXC:-50}"
  banner:
    file: ./banner.txt
secrets:
  db_password:
    file: ./secrets/db.txt
  api_token:
    environment: API_TOKEN
  unused:
    file: ./never-read.txt
"#;
    let files: BTreeMap<String, String> = [
        ("./banner.txt".to_string(), "welcome".to_string()),
        ("./secrets/db.txt".to_string(), "hunter2".to_string()),
    ]
    .into();
    let vars: Variables = [("API_TOKEN".to_string(), "tok-123".to_string())].into();
    let mut stack = parse_inputs(yaml, &vars, &files).unwrap();
    assert_eq!(stack.configs["pg_conf"].content, "max_connections = 50");
    assert_eq!(stack.configs["banner"].content, "welcome");
    let db = &stack.services["db"];
    let targets: Vec<_> = db.extra.configs.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(targets, ["/pg_conf", "/etc/motd"]);
    assert_eq!(
        db.extra.configs[1].mode,
        Some(0o440),
        "0440 is octal, as Compose means it"
    );
    assert!(!db.extra.configs[0].digest.is_empty());
    let secrets: Vec<_> = db.extra.secrets.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(secrets, ["/run/secrets/db_password", "/run/secrets/token"]);
    assert_eq!(db.extra.secrets[1].uid, Some(999));
    assert_eq!(db.extra.secrets[1].mode, Some(0o400));
    // The content never enters the parsed stack.
    assert!(!format!("{stack:?}").contains("hunter2"));
    let contents = secret_contents(&stack, &vars, &files).unwrap();
    assert_eq!(contents["db_password"].bytes(), b"hunter2");
    assert_eq!(contents["api_token"].bytes(), b"tok-123");
    assert!(
        !contents.contains_key("unused"),
        "a secret no service mounts is not read"
    );
    assert!(!format!("{contents:?}").contains("hunter2"));
    stack.set_secret_digests(&[("db_password".to_string(), "d1".to_string())].into());
    let spec = stack.into_stack_spec("app", 1);
    assert_eq!(spec.secrets["db_password"].digest, "d1");
    assert!(spec.secrets["db_password"].sealed.is_none());
    assert_eq!(
        file_sources(yaml),
        ["./banner.txt", "./never-read.txt", "./secrets/db.txt"]
    );
}

#[test]
fn configs_and_secrets_refusals_name_what_is_wrong() {
    let base = "services:\n  a:\n    image: x\n";
    let cases = [
        (
            format!("{base}    secrets: [nope]\n"),
            "secret 'nope' is not declared",
        ),
        (
            format!("{base}    configs: [nope]\n"),
            "config 'nope' is not declared",
        ),
        (
            format!("{base}    secrets: [s]\nsecrets:\n  s:\n    external: true\n"),
            "'external' secrets live in a swarm",
        ),
        (
            format!("{base}    configs: [c]\nconfigs:\n  c:\n    file: ./c.txt\n"),
            "file './c.txt' was not sent with the apply",
        ),
        (
            format!("{base}    configs: [c]\nconfigs:\n  c:\n    environment: NOPE\n"),
            "variable 'NOPE' is not set",
        ),
        (
            format!(
                "{base}    secrets: [s, {{source: s, target: /run/secrets/s}}]\nsecrets:\n  s:\n    file: ./s\n"
            ),
            "two entries mount onto '/run/secrets/s'",
        ),
    ];
    for (yaml, want) in cases {
        let err = parse_with(&yaml, &Variables::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{yaml}\n→ {err}\nwanted: {want}");
    }
    // A secret's file missing is said at apply, when its content is read.
    let yaml = format!("{base}    secrets: [s]\nsecrets:\n  s:\n    file: ./s.txt\n");
    let stack = parse_with(&yaml, &Variables::new()).unwrap();
    let err = secret_contents(&stack, &Variables::new(), &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("secret 's': file './s.txt' was not sent"),
        "{err}"
    );
}
