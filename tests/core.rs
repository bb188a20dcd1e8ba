//! The ORM core against a real server: every `GenericClient` and
//! `StreamingClient` method on every implementation, typed errors, pool
//! limits, transactions and TLS.

mod support;

use std::time::Duration;

use futures_util::TryStreamExt;
use pgorm::prelude::*;
use support::{fresh_database, raw_client, tls_url_and_connector, within, TestServer};

/// Runs every method of both traits on `client`, which sees table `items`
/// holding ids 1..=3.
async fn exercise<C: GenericClient + StreamingClient>(client: &C) {
    let rows = client
        .query("SELECT id FROM items WHERE id >= $1 ORDER BY id", &[&2i32])
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [2, 3]
    );

    let row = client
        .query_one("SELECT name FROM items WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "one");

    let missing = client
        .query_one("SELECT name FROM items WHERE id = $1", &[&99i32])
        .await;
    assert!(matches!(missing, Err(OrmError::NotFound)), "{missing:?}");

    assert!(client
        .query_opt("SELECT name FROM items WHERE id = $1", &[&99i32])
        .await
        .unwrap()
        .is_none());
    let some = client
        .query_opt("SELECT name FROM items WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(some.unwrap().get::<_, String>(0), "three");
    let too_many = client.query_opt("SELECT id FROM items", &[]).await;
    assert!(
        matches!(too_many, Err(OrmError::Query { .. })),
        "{too_many:?}"
    );

    let updated = client
        .execute("UPDATE items SET name = name WHERE id <= $1", &[&2i32])
        .await
        .unwrap();
    assert_eq!(updated, 2);

    let statement = client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(statement.params(), &[tokio_postgres::types::Type::INT4]);
    assert_eq!(statement.columns()[0].name(), "name");

    let stream = client
        .query_stream("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap();
    let ids: Vec<i32> = stream
        .map_ok(|row| row.get::<_, i32>(0))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, [1, 2, 3]);
}

async fn database_with_items() -> String {
    let url = fresh_database().await;
    raw_client(&url)
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        )
        .await
        .unwrap();
    url
}

#[tokio::test]
async fn every_method_works_on_a_plain_tokio_postgres_client() {
    let url = database_with_items().await;
    within("exercise", exercise(&raw_client(&url).await)).await;
}

#[tokio::test]
async fn every_method_works_inside_a_tokio_postgres_transaction() {
    let url = database_with_items().await;
    let mut client = raw_client(&url).await;
    let tx = client.transaction().await.unwrap();
    within("exercise", exercise(&tx)).await;
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn every_method_works_on_pooled_connections_and_pool_transactions() {
    let url = database_with_items().await;
    let pool = pgorm::create_pool(&url).unwrap();
    let mut connection = pool.get().await.unwrap();
    within("exercise", exercise(&connection)).await;
    let tx = connection.transaction().await.unwrap();
    within("exercise", exercise(&tx)).await;
}

#[tokio::test]
async fn every_method_works_on_pg_client_and_pg_transaction() {
    let url = database_with_items().await;
    let client = PgClient::connect(&url).await.unwrap();
    within("exercise", exercise(&client)).await;
    let tx = client.transaction().await.unwrap();
    within("exercise", exercise(&tx)).await;
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_unique_violation_is_a_query_error_with_its_sqlstate() {
    let url = database_with_items().await;
    let client = PgClient::connect(&url).await.unwrap();
    let error = client
        .execute("INSERT INTO items VALUES ($1, $2)", &[&1i32, &"again"])
        .await
        .unwrap_err();
    assert!(matches!(error, OrmError::Query { .. }), "{error:?}");
    assert_eq!(
        error.sqlstate(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(error.db_error().unwrap().constraint(), Some("items_pkey"));
    assert!(error.to_string().contains("23505"), "{error}");
    assert!(std::error::Error::source(&error).is_some());
}

async fn insert_then_fail(client: &PgClient) -> OrmResult<()> {
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO items VALUES (10, 'ten')", &[])
        .await?;
    tx.execute("INSERT INTO items VALUES (1, 'duplicate')", &[])
        .await?;
    tx.commit().await
}

#[tokio::test]
async fn a_transaction_is_rolled_back_when_an_error_drops_it() {
    let url = database_with_items().await;
    // One connection, so the test also shows it came back to the pool clean.
    let client = PgClient::connect_with(&url, PoolConfig::new().max_size(1))
        .await
        .unwrap();
    let error = within("failing transaction", insert_then_fail(&client))
        .await
        .unwrap_err();
    assert_eq!(
        error.sqlstate(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let count: i64 = within(
        "count",
        client.query_one("SELECT count(*) FROM items WHERE id = 10", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(count, 0, "the insert before the error must be rolled back");
    let status = client.pool().status();
    assert_eq!((status.size, status.available), (1, 1), "{status:?}");
}

#[tokio::test]
async fn an_explicit_rollback_discards_and_a_commit_keeps() {
    let url = database_with_items().await;
    let client = PgClient::connect(&url).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("DELETE FROM items", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("DELETE FROM items WHERE id = 3", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test]
async fn an_exhausted_pool_gives_a_clear_error_after_its_wait_timeout() {
    let url = fresh_database().await;
    let config = PoolConfig::new()
        .max_size(2)
        .wait_timeout(Duration::from_millis(200));
    let client = PgClient::connect_with(&url, config).await.unwrap();
    let _first = client.connection().await.unwrap();
    let _second = client.connection().await.unwrap();
    let error = within("third checkout", client.query("SELECT 1", &[]))
        .await
        .unwrap_err();
    assert!(matches!(error, OrmError::PoolExhausted { .. }), "{error:?}");
    assert!(error.is_timeout());
    assert!(error.to_string().contains("pool exhausted"), "{error}");
}

#[tokio::test]
async fn connecting_with_a_wrong_password_fails_at_once_without_echoing_it() {
    let server = TestServer::shared();
    let url = server.url().replace(server.password(), "wrong-secret-123");
    let error = within("connect", PgClient::connect(&url))
        .await
        .unwrap_err();
    assert!(matches!(error, OrmError::Connection { .. }), "{error:?}");
    assert_eq!(
        error.sqlstate(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    assert!(!error.to_string().contains("wrong-secret-123"));
    assert!(!format!("{error:?}").contains("wrong-secret-123"));
}

#[tokio::test]
async fn pg_client_debug_output_hides_the_password() {
    let server = TestServer::shared();
    let client = PgClient::connect(&server.url()).await.unwrap();
    let debug = format!("{client:?}");
    assert!(!debug.contains(server.password()), "{debug}");
    assert!(debug.contains(&server.port().to_string()), "{debug}");
    let config_debug = format!("{:?}", client.pg_config());
    assert!(!config_debug.contains(server.password()), "{config_debug}");
}

#[tokio::test]
async fn pg_client_connects_over_tls_with_the_servers_certificate_authority() {
    let (url, tls) = tls_url_and_connector();
    let client = within(
        "TLS connect",
        PgClient::connect_with_tls(&url, PoolConfig::default(), tls),
    )
    .await
    .unwrap();
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted);
}

#[tokio::test]
async fn tls_with_an_untrusted_certificate_is_refused() {
    let server = TestServer::shared();
    // A different server's authority does not vouch for this one.
    let other = TestServer::spawn().unwrap();
    let tls =
        pgorm::tls::rustls_connector_with_pem_roots(other.ca_certificate_pem().as_bytes()).unwrap();
    let url = format!(
        "{}?sslmode=require",
        server.url().replace("127.0.0.1", "localhost")
    );
    let error = within(
        "TLS connect",
        PgClient::connect_with_tls(&url, PoolConfig::default(), tls),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, OrmError::Connection { .. }), "{error:?}");
}
