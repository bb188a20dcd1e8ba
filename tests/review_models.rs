//! Hostile review (r3) of the models: each test proves one finding against
//! the real server; the finding's number is in its comment.

mod support;

use pgorm::model::{FromRow, ModelExt};
use pgorm::{OrmError, PgClient};
use serde::Deserialize;
use support::{fresh_database, within};

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Credentials {
    user: String,
    port: u16,
}

#[derive(Debug, FromRow)]
#[allow(dead_code)]
struct Account {
    id: i32,
    #[orm(json)]
    credentials: Credentials,
}

/// Finding 11: a JSON column that does not fit its type is a
/// `ColumnDecode` error whose text (Display and Debug) carries the
/// offending value from the row, through serde_json's "invalid type:
/// string \"…\"" message: row data, possibly a secret, ends up in error
/// messages and logs (the project's rule: no secrets in Debug output, logs
/// or errors).
#[tokio::test]
async fn review_11_a_json_decode_error_does_not_carry_the_rows_value() {
    let url = fresh_database().await;
    let client = within("connect", PgClient::connect(&url)).await.unwrap();
    let secret = "hunter2-s3cr3t";
    let error = client
        .query_one_as::<Account>(
            "SELECT 1 AS id, jsonb_build_object('user', 'ann', 'port', $1::text) AS credentials",
            &[&secret],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OrmError::ColumnDecode { column, .. } if column == "credentials"),
        "{error:?}"
    );
    let shown = format!("{error} / {error:?}");
    assert!(
        !shown.contains(secret),
        "the error shows the row's value: {shown}"
    );
}
