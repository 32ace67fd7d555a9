//! Acceptance: more than 100 devices. 150 lightweight MQTT clients posing as agents (status
//! only, no Docker) are all in the controller's fleet view — at first, after a controller
//! restart (rumqttd replays at most 100 retained messages to a new QoS1 subscription, so the
//! controller must not rely on replay), and after a gateway restart (the broker forgets
//! everything).

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_protocol::codec::{decode, encode};
use edgefleet_protocol::presence::{ControllerPresence, DevicePresence, PresenceState};
use edgefleet_protocol::signing::{self, VerifyingKey};
use edgefleet_protocol::status::{ConvergenceState, DeviceStatus};
use edgefleet_protocol::topics::{self, TopicKind};
use edgefleet_tests::api::Api;
use edgefleet_tests::procs::{self, Gateway};
use edgefleet_tests::{unique_id, wait};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio_util_free::Stop;

const N: usize = 150;
const T: Duration = Duration::from_secs(90);

/// A tiny stop flag (the tests crate has no tokio-util).
mod tokio_util_free {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn stop(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
        pub fn stopped(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}

fn presence(id: &str, state: PresenceState) -> Vec<u8> {
    encode(&DevicePresence {
        schema: 1,
        device: id.to_owned(),
        state,
        session: 1,
        labels: BTreeMap::from([("site".to_owned(), "sim".to_owned())]),
        agent_version: "fake".to_owned(),
        since: edgefleet_protocol::now_rfc3339(),
    })
}

fn status(id: &str, revision: u64) -> Vec<u8> {
    encode(&DeviceStatus {
        schema: 1,
        device: id.to_owned(),
        observed_revision: revision,
        desired_revision: revision,
        state: if revision == 0 {
            ConvergenceState::Idle
        } else {
            ConvergenceState::Converged
        },
        stacks: BTreeMap::new(),
        last_error: None,
        agent_version: "fake".to_owned(),
        updated_at: edgefleet_protocol::now_rfc3339(),
        platform: None,
    })
}

/// Behaves like an agent on the bus: presence + status on every connect, status for every
/// desired document, a rebirth when a new controller session appears.
async fn fake_agent(id: String, port: u16, key: VerifyingKey, stop: Stop) {
    let mut opts = MqttOptions::new(format!("fake-{id}"), "127.0.0.1", port);
    if let Some((user, password)) = edgefleet_tests::mqtt::login_for(port) {
        opts.set_credentials(user, password);
    }
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(2 << 20, 2 << 20);
    opts.set_last_will(LastWill::new(
        TopicKind::DevicePresence.for_device(&id),
        presence(&id, PresenceState::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let mut revision = 0;
    let mut controller_session = 0;
    while !stop.stopped() {
        let ev = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        let Ok(ev) = ev else { continue };
        let publish_all = |rev: u64| {
            let _ = client.try_publish(
                TopicKind::DevicePresence.for_device(&id),
                QoS::AtLeastOnce,
                true,
                presence(&id, PresenceState::Online),
            );
            let _ = client.try_publish(
                TopicKind::DeviceStatus.for_device(&id),
                QoS::AtLeastOnce,
                true,
                status(&id, rev),
            );
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client
                    .try_subscribe(TopicKind::DeviceDesired.for_device(&id), QoS::AtLeastOnce);
                let _ = client.try_subscribe(topics::controller_presence(), QoS::AtLeastOnce);
                publish_all(revision);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(d) = signing::verify(&key, &p.payload) {
                    revision = d.revision;
                    let _ = client.try_publish(
                        TopicKind::DeviceStatus.for_device(&id),
                        QoS::AtLeastOnce,
                        true,
                        status(&id, revision),
                    );
                } else if let Ok(c) = decode::<ControllerPresence>(&p.payload)
                    && c.state == PresenceState::Online
                    && c.session != controller_session
                {
                    controller_session = c.session;
                    publish_all(revision);
                }
            }
            Ok(_) => {}
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(300 + (id.len() as u64 * 37) % 400)).await
            }
        }
    }
}

fn spawn_fleet(prefix: &str, port: u16, key: VerifyingKey, stop: &Stop) -> Vec<String> {
    let ids: Vec<String> = (0..N).map(|n| format!("{prefix}-{n:03}")).collect();
    for id in &ids {
        tokio::spawn(fake_agent(id.clone(), port, key, stop.clone()));
    }
    ids
}

/// Waits until every fake device is online and converged in the fleet view.
async fn wait_all_online(api: &Api, prefix: &str, what: &str) {
    wait::until(what, T, || async {
        let devices = api.devices().await?;
        let ours: Vec<_> = devices
            .iter()
            .filter(|d| d["id"].as_str().is_some_and(|i| i.starts_with(prefix)))
            .collect();
        let online = ours.iter().filter(|d| d["online"] == true).count();
        let converged = ours.iter().filter(|d| d["converged"] == true).count();
        if ours.len() == N && online == N && converged == N {
            Ok(())
        } else {
            Err(format!(
                "{} known, {online} online, {converged} converged",
                ours.len()
            ))
        }
    })
    .await
}

/// What a SCADA screen sees: the retained summary of the simulated site, read with Debian's
/// mosquitto_sub (one retained message for the whole site, whatever the replay limit).
async fn wait_site_summary_all_online(mqtt_port: u16, what: &str) {
    let topic = edgefleet_protocol::topics::site_summary("sim");
    wait::until(what, T, || async {
        let v = edgefleet_tests::mqtt::retained(mqtt_port, &topic, 3)?;
        if v["devices"] == N
            && v["online"] == N
            && v["converged"] == N
            && v["alarms"] == serde_json::json!([])
        {
            Ok(())
        } else {
            Err(v.to_string().chars().take(300).collect())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_150_survives_a_gateway_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(dir.path());
    let api = gw.api();
    let prefix = unique_id("simgw");
    let stop = Stop::default();
    spawn_fleet(
        &prefix,
        gw.mqtt_port,
        procs::controller_key(dir.path()),
        &stop,
    );
    wait_all_online(&api, &prefix, "150 devices online").await;
    wait_site_summary_all_online(gw.mqtt_port, "site summary shows 150 online").await;

    gw.proc.kill9();
    gw.proc.start();
    gw.wait_ready();
    wait_all_online(&api, &prefix, "150 devices online after a gateway restart").await;
    wait_site_summary_all_online(
        gw.mqtt_port,
        "site summary republished after a gateway restart",
    )
    .await;
    stop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_150_survives_a_controller_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, port) = procs::embedded_broker(dir.path());
    let (mut controller, http) = procs::controller(dir.path(), port);
    let api = Api::admin(http, &procs::controller_data_dir(dir.path()));
    let prefix = unique_id("simctl");
    let stop = Stop::default();
    spawn_fleet(&prefix, port, procs::controller_key(dir.path()), &stop);
    wait_all_online(&api, &prefix, "150 devices online").await;

    controller.kill9();
    controller.start();
    wait::until("controller API back", T, || async {
        api.get("/api/v1/health").await
    })
    .await;
    // Every device is known as soon as the API answers (the view is loaded from the store).
    let known = api
        .devices()
        .await
        .expect("devices")
        .iter()
        .filter(|d| d["id"].as_str().is_some_and(|i| i.starts_with(&prefix)))
        .count();
    assert_eq!(known, N, "the fleet view must come back from the store");
    wait_all_online(
        &api,
        &prefix,
        "150 devices online after a controller restart",
    )
    .await;
    stop.stop();
}
