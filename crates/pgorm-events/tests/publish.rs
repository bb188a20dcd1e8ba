//! Schema migration and publishing against a real server.

mod support;

use std::time::Duration;

use pgorm::{GenericClient, PgClient};
use pgorm_events::{Events, EventsConfig, EventsError, NewEvent, Published};
use serde_json::json;
use support::*;

#[tokio::test]
async fn migrate_is_idempotent_versioned_and_safe_when_concurrent() {
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new().schema("Odd \"Schema\"")).unwrap();
    let (a, b) = tokio::join!(events.migrate(&client), events.migrate(&client));
    // Version 2 debounces wake-ups (a deferred trigger), 3 adds the relay lane,
    // 4 keeps claims from a cursor off the run-time index.
    assert_eq!(a.unwrap(), 4);
    assert_eq!(b.unwrap(), 4);
    assert_eq!(events.migrate(&client).await.unwrap(), 4);
    let versions: i64 = client
        .query_one(
            "SELECT count(*) FROM \"Odd \"\"Schema\"\"\".schema_version",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 4);
    // Autovacuum settings for a high-churn table are part of the schema.
    let options: Vec<String> = client
        .query_one(
            "SELECT reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'Odd \"Schema\"' AND c.relname = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        options
            .iter()
            .any(|o| o == "autovacuum_vacuum_scale_factor=0"),
        "{options:?}"
    );
}

#[tokio::test]
async fn migrate_runs_in_the_callers_transaction() {
    let url = TestServer::shared().create_database().await.unwrap();
    let client = PgClient::connect(&url).await.unwrap();
    let events = Events::new(EventsConfig::new().schema("in_tx")).unwrap();
    let schema_exists = |client: PgClient| async move {
        client
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'in_tx'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    };
    let tx = client.transaction().await.unwrap();
    assert_eq!(events.migrate(&tx).await.unwrap(), 4);
    tx.rollback().await.unwrap();
    assert!(!schema_exists(client.clone()).await);

    let tx = client.transaction().await.unwrap();
    events.migrate(&tx).await.unwrap();
    events
        .publish(&tx, NewEvent::new("t", &serde_json::json!({})).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(schema_exists(client.clone()).await);
    assert_eq!(events.stats(&client).await.unwrap().depth, 1);
}

#[tokio::test]
async fn a_newer_schema_version_is_refused() {
    let (_url, client, events) = setup_schema("too_new").await;
    client
        .execute(
            "INSERT INTO too_new.schema_version (version) VALUES (99)",
            &[],
        )
        .await
        .unwrap();
    let error = events.migrate(&client).await.unwrap_err();
    assert!(
        matches!(
            error,
            EventsError::SchemaTooNew {
                found: 99,
                known: 4
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn publish_in_a_rolled_back_transaction_leaves_nothing() {
    let (_url, client, events) = setup().await;
    let tx = client.transaction().await.unwrap();
    let published = events
        .publish(
            &tx,
            NewEvent::new("order.created", &json!({"id": 1})).unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(published, Published::Inserted { .. }));
    events
        .publish_batch(
            &tx,
            (0..10)
                .map(|i| NewEvent::new("order.created", &json!({ "i": i })).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(stats(&events, &client).await.depth, 0);

    let tx = client.transaction().await.unwrap();
    events
        .publish(
            &tx,
            NewEvent::new("order.created", &json!({"id": 2})).unwrap(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let stats = stats(&events, &client).await;
    assert_eq!((stats.depth, stats.due), (1, 1));
}

#[tokio::test]
async fn publish_works_through_any_generic_client() {
    let (url, client, events) = setup().await;
    let (raw, connection) = pgorm::tokio_postgres::connect(&url, pgorm::tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    events
        .publish(&raw, NewEvent::new("a", &json!(null)).unwrap())
        .await
        .unwrap();
    let pooled = client.connection().await.unwrap();
    events
        .publish(&pooled, NewEvent::new("b", &json!([1, 2])).unwrap())
        .await
        .unwrap();
    let stats = stats(&events, &client).await;
    assert_eq!(stats.depth, 2);
    assert_eq!(stats.by_type.len(), 2);
}

#[tokio::test]
async fn idempotency_keys_deduplicate_while_the_event_is_live() {
    let (_url, client, events) = setup().await;
    let first = events
        .publish(
            &client,
            NewEvent::new("mail.send", &json!({"to": 1}))
                .unwrap()
                .idempotency_key("mail-1"),
        )
        .await
        .unwrap();
    let Published::Inserted { id } = first else {
        panic!("first publish was {first:?}")
    };
    let second = events
        .publish(
            &client,
            NewEvent::new("mail.send", &json!({"to": 1}))
                .unwrap()
                .idempotency_key("mail-1"),
        )
        .await
        .unwrap();
    assert_eq!(second, Published::Duplicate { existing: Some(id) });
    assert!(second.is_duplicate());

    let batch = events
        .publish_batch(
            &client,
            vec![
                NewEvent::new("mail.send", &json!(1))
                    .unwrap()
                    .idempotency_key("mail-1"),
                NewEvent::new("mail.send", &json!(2))
                    .unwrap()
                    .idempotency_key("mail-2"),
                NewEvent::new("mail.send", &json!(3))
                    .unwrap()
                    .idempotency_key("mail-2"),
                NewEvent::new("mail.send", &json!(4)).unwrap(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(batch.inserted.len(), 2);
    assert_eq!(batch.duplicate_keys, ["mail-1", "mail-2"]);
    assert_eq!(stats(&events, &client).await.depth, 3);

    // Once the event is done the key is free again.
    let claimed = events
        .claim(&client, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let mail_1 = claimed.iter().find(|c| c.event().id == id).unwrap();
    events.complete(&client, mail_1).await.unwrap();
    let third = events
        .publish(
            &client,
            NewEvent::new("mail.send", &json!({"to": 1}))
                .unwrap()
                .idempotency_key("mail-1"),
        )
        .await
        .unwrap();
    assert!(matches!(third, Published::Inserted { id: new } if new != id));
}

#[tokio::test]
async fn batch_publish_inserts_everything_in_one_statement() {
    let (_url, client, events) = setup().await;
    let batch: Vec<NewEvent> = (0..5000)
        .map(|i| {
            NewEvent::new("bulk", &json!({ "i": i }))
                .unwrap()
                .priority((i % 3) as i16)
                .max_attempts(3)
        })
        .collect();
    let published = events.publish_batch(&client, batch).await.unwrap();
    assert_eq!(published.inserted.len(), 5000);
    assert!(published.duplicate_keys.is_empty());
    assert_eq!(stats(&events, &client).await.due, 5000);
}

#[tokio::test]
async fn one_wakeup_per_transaction_not_per_event() {
    let (url, client, events) = setup().await;
    let hub = pgorm::listen::PgNotifyHub::connect(&url).await.unwrap();
    let mut wakeups = hub
        .subscribe(&events.config().wakeup_channel())
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    for i in 0..20 {
        events
            .publish(&tx, NewEvent::new("t", &json!(i)).unwrap())
            .await
            .unwrap();
    }
    events
        .publish_batch(
            &tx,
            (0..100)
                .map(|i| NewEvent::new("t", &json!(i)).unwrap())
                .collect(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    within("the wake-up", wakeups.next())
        .await
        .unwrap()
        .unwrap();
    // A marker statement after the transaction: its wake-up must be the
    // very next notification, so nothing else was queued in between.
    pgorm::listen::notify(&client, &events.config().wakeup_channel(), "marker")
        .await
        .unwrap();
    let next = within("the marker", wakeups.next()).await.unwrap().unwrap();
    assert_eq!(next.payload, "marker");
}

#[tokio::test]
async fn delayed_and_scheduled_events_are_not_due_yet() {
    let (_url, client, events) = setup().await;
    events
        .publish(
            &client,
            NewEvent::new("later", &json!({}))
                .unwrap()
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let at = std::time::SystemTime::now() + Duration::from_secs(3600);
    events
        .publish(
            &client,
            NewEvent::new("later", &json!({})).unwrap().run_at(at),
        )
        .await
        .unwrap();
    let stats = stats(&events, &client).await;
    assert_eq!((stats.due, stats.delayed), (0, 2));
    assert!(events
        .claim(&client, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn invalid_events_are_refused_before_the_server() {
    let (_url, client, events) = setup().await;
    let error = events
        .publish(&client, NewEvent::new("", &json!({})).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, EventsError::Setting { .. }), "{error}");
    let error = events
        .publish(
            &client,
            NewEvent::new("x", &json!({})).unwrap().max_attempts(0),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, EventsError::Setting { .. }), "{error}");
}
