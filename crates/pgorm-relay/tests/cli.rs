//! The program against real PostgreSQL and a real nats-server: it relays
//! and prints its progress; bad flags are a clear error.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgorm::PgClient;
use pgorm_events::{Events, EventsConfig, NewEvent};
use pgorm_testkit::{NatsServer, TestServer};

const HANG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_prints_progress() {
    let nats = NatsServer::spawn().expect("nats-server");
    let url = TestServer::shared().create_database().await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgorm-relay"))
        .args(["--database-url", &url, "--nats-url", &nats.url()])
        .args([
            "--rule",
            "order.*",
            "--stream",
            "CLI",
            "--progress-secs",
            "0.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run pgorm-relay");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {HANG:?}"),
            }
        }
    };
    wait_for("active");

    let client = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new()).unwrap();
    let batch = (0..5)
        .map(|n| NewEvent::new("order.created", &serde_json::json!({"n": n})).unwrap())
        .collect();
    events.publish_batch(&client, batch).await.unwrap();
    let line = wait_for("relayed 5 ");
    assert!(line.contains("lag 0 events"), "{line}");
    assert!(
        !line.contains(&url),
        "the URL (with its password) was printed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_flags_are_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_pgorm-relay"))
        .args([
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
            "--batch",
            "lots",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("batch"), "{stderr}");
}
