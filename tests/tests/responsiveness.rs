//! No blocking on the runtime: while a long audit export runs, a plain API call and the MQTT
//! intake still answer within 100 ms. (Before the store had one writer thread and a separate
//! reader, an export held the store's lock for its whole read, on an async worker, and every
//! authenticated request and device message waited behind it.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgefleet_domain::audit::{GENESIS, chain_hash};
use edgefleet_protocol::codec::encode;
use edgefleet_protocol::presence::{DevicePresence, PresenceState};
use edgefleet_protocol::topics::TopicKind;
use edgefleet_tests::procs::Gateway;
use edgefleet_tests::unique_id;
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// Audit records the export walks: enough for it to take seconds on this machine.
const RECORDS: u64 = 200_000;
const BOUND: Duration = Duration::from_millis(100);

/// Appends `n` chained records after the log's head, as the gateway's own writer would (one
/// `IMMEDIATE` transaction that reads the head and writes after it).
fn append_records(db: &std::path::Path, n: u64) {
    let mut conn = rusqlite::Connection::open(db).expect("open the gateway's store");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("write transaction");
    let (mut seq, mut prev): (u64, String) = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .unwrap_or((0, GENESIS.to_owned()));
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO audit (seq, ts, actor, role, action, target, site, outcome, status, detail, prev_hash, hash)
                 VALUES (?1, ?2, 'loadgen', 'operator', 'deployment.apply', ?3, 'lyon', 'ok', 201, ?4, ?5, ?6)",
            )
            .expect("insert");
        let ts = edgefleet_protocol::now_rfc3339();
        for k in 0..n {
            seq += 1;
            let target = format!("web-{k}");
            let detail = format!("{{\"revision\":{k},\"changed\":true}}");
            let hash = chain_hash(
                seq,
                &ts,
                &[
                    "loadgen",
                    "operator",
                    "deployment.apply",
                    &target,
                    "lyon",
                    "ok",
                ],
                Some(201),
                &detail,
                &prev,
            );
            ins.execute(rusqlite::params![
                seq as i64, ts, target, detail, prev, hash
            ])
            .expect("insert record");
            prev = hash;
        }
    }
    tx.commit().expect("commit");
}

fn presence(id: &str, session: u64) -> Vec<u8> {
    encode(&DevicePresence {
        schema: 1,
        device: id.to_owned(),
        state: PresenceState::Online,
        session,
        labels: BTreeMap::from([("site".to_owned(), "lyon".to_owned())]),
        agent_version: "probe".into(),
        since: edgefleet_protocol::now_rfc3339(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_mqtt_intake_answer_within_100ms_during_a_long_audit_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(dir.path());
    let api = gw.api();
    let token = api.token().expect("admin login").expect("a token");
    let id = unique_id("probe");

    // A device on the bus (plain listener), its presence taken in by the controller.
    let mut opts = MqttOptions::new(format!("edgefleet-agent-{id}"), "127.0.0.1", gw.mqtt_port);
    if let Some((user, password)) = edgefleet_tests::mqtt::login_for(gw.mqtt_port) {
        opts.set_credentials(user, password);
    }
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let session_seen = async |session: u64| {
        api.device(&id)
            .await
            .is_ok_and(|d| d["session"].as_u64() == Some(session))
    };
    client
        .publish(
            TopicKind::DevicePresence.for_device(&id),
            QoS::AtLeastOnce,
            true,
            presence(&id, 1),
        )
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !session_seen(1).await {
        assert!(Instant::now() < deadline, "the probe device never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let db = gw.data_dir.join("edgefleet.db");
    tokio::task::spawn_blocking(move || append_records(&db, RECORDS))
        .await
        .expect("append records");

    // The export, read as fast as this process can.
    let url = format!(
        "http://127.0.0.1:{}/api/v1/audit/export?format=csv",
        gw.http_port
    );
    let export = tokio::spawn(async move {
        let started = Instant::now();
        let mut resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("export request");
        assert_eq!(resp.status(), 200);
        let mut lines = 0u64;
        while let Some(chunk) = resp.chunk().await.expect("export body") {
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        (lines, started.elapsed())
    });

    // Meanwhile: plain API calls, and device messages taken in from the bus.
    let mut api_calls = Vec::new();
    let mut intake = Vec::new();
    let mut session = 1;
    while !export.is_finished() {
        let t = Instant::now();
        api.get("/api/v1/devices").await.expect("devices");
        api_calls.push(t.elapsed());

        session += 1;
        let t = Instant::now();
        client
            .publish(
                TopicKind::DevicePresence.for_device(&id),
                QoS::AtLeastOnce,
                true,
                presence(&id, session),
            )
            .await
            .expect("publish");
        while !session_seen(session).await {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "presence {session} never taken in"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !export.is_finished() {
            intake.push(t.elapsed());
        }
    }
    let (lines, took) = export.await.expect("export task");
    poller.abort();
    assert!(
        lines > RECORDS,
        "the export holds every record ({lines} lines)"
    );
    eprintln!(
        "export of {lines} lines took {took:?}; during it {} API calls (max {:?}) and {} presences taken in (max {:?})",
        api_calls.len(),
        api_calls.iter().max(),
        intake.len(),
        intake.iter().max()
    );
    assert!(
        api_calls.len() >= 5 && intake.len() >= 5,
        "the export ended too soon to measure anything ({took:?}): make it longer"
    );
    let slow_api: Vec<_> = api_calls.iter().filter(|d| **d > BOUND).collect();
    let slow_intake: Vec<_> = intake.iter().filter(|d| **d > BOUND).collect();
    assert!(
        slow_api.is_empty() && slow_intake.is_empty(),
        "over {BOUND:?} while the export ran: API calls {slow_api:?}, intake {slow_intake:?}"
    );
}
