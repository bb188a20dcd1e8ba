//! Models against the real server: FromRow shapes and errors, CRUD with
//! generated and composite keys, awkward names, transactions.

mod support;

use pgorm::model::{FromRow, Model, ModelExt};
use pgorm::{GenericClient, OrmError, PgClient};
use serde::{Deserialize, Serialize};
use support::{fresh_database, within};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    theme: String,
    size: u32,
}

#[derive(Debug, PartialEq, FromRow)]
struct Address {
    city: String,
    #[orm(rename = "zip code")]
    zip: Option<String>,
}

#[derive(Debug, PartialEq, FromRow)]
struct Shapes {
    id: i32,
    #[orm(rename = "select")]
    keyword: String,
    nickname: Option<String>,
    #[orm(json)]
    settings: Settings,
    #[orm(json)]
    extra: Option<Settings>,
    #[orm(flatten)]
    address: Address,
    #[orm(default)]
    score: i64,
}

async fn client() -> PgClient {
    let url = fresh_database().await;
    within("connect", PgClient::connect(&url)).await.unwrap()
}

const SHAPES_SQL: &str = r#"SELECT 1 AS id, 'from' AS "select", NULL::text AS nickname,
    '{"theme":"dark","size":3}'::jsonb AS settings, NULL::json AS extra,
    'Oslo' AS city, NULL::text AS "zip code""#;

#[tokio::test]
async fn from_row_reads_renames_nulls_json_flattened_and_defaulted_fields() {
    let client = client().await;
    let row: Shapes = client.query_one_as(SHAPES_SQL, &[]).await.unwrap();
    assert_eq!(
        row,
        Shapes {
            id: 1,
            keyword: "from".into(),
            nickname: None,
            settings: Settings {
                theme: "dark".into(),
                size: 3
            },
            extra: None,
            address: Address {
                city: "Oslo".into(),
                zip: None
            },
            score: 0,
        }
    );
    let with_values: Shapes = client
        .query_one_as(
            &format!(
                "SELECT id, \"select\", 'ace' AS nickname, settings, \
                 '{{\"theme\":\"light\",\"size\":1}}'::json AS extra, city, '0150' AS \"zip code\", 7::int8 AS score \
                 FROM ({SHAPES_SQL}) s"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(with_values.nickname.as_deref(), Some("ace"));
    assert_eq!(with_values.extra.unwrap().theme, "light");
    assert_eq!(with_values.address.zip.as_deref(), Some("0150"));
    assert_eq!(with_values.score, 7);
}

#[tokio::test]
async fn a_missing_column_is_a_typed_error_naming_it() {
    let client = client().await;
    let error = client
        .query_one_as::<Shapes>("SELECT 1 AS id", &[])
        .await
        .unwrap_err();
    match error {
        OrmError::ColumnNotFound { column, rust_type } => {
            assert_eq!(column, "select");
            assert!(rust_type.contains("String"), "{rust_type}");
        }
        other => panic!("expected ColumnNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_type_names_the_column_the_sql_type_and_the_rust_type() {
    let client = client().await;
    let sql = SHAPES_SQL.replace("1 AS id", "'one'::text AS id");
    let error = client.query_one_as::<Shapes>(&sql, &[]).await.unwrap_err();
    match &error {
        OrmError::ColumnDecode {
            column,
            sql_type,
            rust_type,
            ..
        } => {
            assert_eq!(column, "id");
            assert_eq!(sql_type, "text");
            assert_eq!(*rust_type, "i32");
        }
        other => panic!("expected ColumnDecode, got {other:?}"),
    }
    assert!(error.to_string().contains("\"id\""), "{error}");
}

#[tokio::test]
async fn null_in_a_non_option_field_is_a_decode_error() {
    let client = client().await;
    let sql = SHAPES_SQL.replace("'from' AS \"select\"", "NULL::text AS \"select\"");
    let error = client.query_one_as::<Shapes>(&sql, &[]).await.unwrap_err();
    assert!(
        matches!(&error, OrmError::ColumnDecode { column, sql_type, .. } if column == "select" && sql_type == "text"),
        "{error:?}"
    );
}

#[tokio::test]
async fn json_that_does_not_fit_is_a_decode_error() {
    let client = client().await;
    let sql = SHAPES_SQL.replace(r#"{"theme":"dark","size":3}"#, r#"{"theme":7}"#);
    let error = client.query_one_as::<Shapes>(&sql, &[]).await.unwrap_err();
    assert!(
        matches!(&error, OrmError::ColumnDecode { column, sql_type, .. } if column == "settings" && sql_type == "jsonb"),
        "{error:?}"
    );
    let null_json = SHAPES_SQL.replace(r#"'{"theme":"dark","size":3}'::jsonb"#, "NULL::jsonb");
    let error = client
        .query_one_as::<Shapes>(&null_json, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OrmError::ColumnDecode { column, .. } if column == "settings"),
        "{error:?}"
    );
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(schema = "Shop Schema", table = "Order Items")]
struct OrderItem {
    #[orm(key, generated)]
    id: i64,
    #[orm(rename = "select")]
    label: String,
    quantity: Option<i32>,
    #[orm(json)]
    settings: Option<Settings>,
    #[orm(generated, rename = "created \"at\"")]
    created: String,
}

async fn order_items(client: &PgClient) {
    client
        .execute(r#"CREATE SCHEMA "Shop Schema""#, &[])
        .await
        .unwrap();
    client
        .execute(
            r#"CREATE TABLE "Shop Schema"."Order Items" (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 "select" text NOT NULL,
                 quantity int,
                 settings jsonb,
                 "created ""at""" text NOT NULL DEFAULT 'now')"#,
            &[],
        )
        .await
        .unwrap();
}

fn item(label: &str) -> OrderItem {
    OrderItem {
        id: 0,
        label: label.into(),
        quantity: Some(2),
        settings: Some(Settings {
            theme: "x".into(),
            size: 1,
        }),
        created: String::new(),
    }
}

#[tokio::test]
async fn crud_round_trip_with_a_generated_key_and_awkward_names() {
    let client = client().await;
    order_items(&client).await;

    let stored = client.insert(&item("tea")).await.unwrap();
    assert!(stored.id > 0);
    assert_eq!(
        stored.created, "now",
        "the database filled the generated column"
    );
    let second = client.insert(&item("coffee")).await.unwrap();
    assert_ne!(second.id, stored.id);

    let found: Option<OrderItem> = client.find(&stored.id).await.unwrap();
    assert_eq!(found.as_ref(), Some(&stored));
    assert_eq!(client.find::<OrderItem>(&-1).await.unwrap(), None);

    let mut many: Vec<OrderItem> = client
        .find_many(&[second.id, stored.id, 999])
        .await
        .unwrap();
    many.sort_by_key(|item| item.id);
    assert_eq!(many, [stored.clone(), second.clone()]);

    let mut changed = stored.clone();
    changed.label = "green tea".into();
    changed.quantity = None;
    changed.settings = None;
    let updated = client.update(&changed).await.unwrap();
    assert_eq!(updated, changed);
    let raw = client
        .query_one(
            r#"SELECT settings IS NULL FROM "Shop Schema"."Order Items" WHERE id = $1"#,
            &[&stored.id],
        )
        .await
        .unwrap();
    assert!(raw.get::<_, bool>(0), "None is SQL NULL, not JSON null");

    assert!(client.delete(&updated).await.unwrap());
    assert!(!client.delete(&updated).await.unwrap());
    assert_eq!(client.find::<OrderItem>(&stored.id).await.unwrap(), None);
    let error = client.update(&updated).await.unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "seats")]
struct Seat {
    #[orm(key)]
    hall: String,
    #[orm(key)]
    number: i32,
    holder: Option<String>,
}

#[tokio::test]
async fn composite_keys_find_many_in_one_query_and_update_and_delete_by_both_columns() {
    let client = client().await;
    client
        .execute(
            "CREATE TABLE seats (hall text, number int, holder text, PRIMARY KEY (hall, number))",
            &[],
        )
        .await
        .unwrap();
    for (hall, number) in [("a", 1), ("a", 2), ("b", 1), ("b", 2)] {
        client
            .insert(&Seat {
                hall: hall.into(),
                number,
                holder: None,
            })
            .await
            .unwrap();
    }
    let keys = [
        ("a".to_owned(), 2),
        ("b".to_owned(), 1),
        ("c".to_owned(), 1),
    ];
    let mut found: Vec<Seat> = client.find_many(&keys).await.unwrap();
    found.sort_by(|x, y| (&x.hall, x.number).cmp(&(&y.hall, y.number)));
    let found_keys: Vec<(String, i32)> = found.iter().map(Model::key).collect();
    assert_eq!(found_keys, [("a".to_owned(), 2), ("b".to_owned(), 1)]);

    let seat = Seat {
        hall: "b".into(),
        number: 1,
        holder: Some("ada".into()),
    };
    assert_eq!(client.update(&seat).await.unwrap(), seat);
    let other: Seat = client.find(&("a".to_owned(), 1)).await.unwrap().unwrap();
    assert_eq!(
        other.holder, None,
        "only the row with both key columns changed"
    );
    assert!(client
        .delete_by_key::<Seat>(&("b".to_owned(), 1))
        .await
        .unwrap());
    let left: i64 = client
        .query_one("SELECT count(*) FROM seats", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 3);
}

#[tokio::test]
async fn models_in_a_rolled_back_transaction_leave_nothing_and_work_on_pooled_connections() {
    let client = client().await;
    order_items(&client).await;
    let tx = client.transaction().await.unwrap();
    let stored = tx.insert(&item("inside")).await.unwrap();
    assert_eq!(
        tx.find::<OrderItem>(&stored.id).await.unwrap().as_ref(),
        Some(&stored),
        "visible inside the transaction"
    );
    tx.rollback().await.unwrap();
    assert_eq!(client.find::<OrderItem>(&stored.id).await.unwrap(), None);

    let connection = client.connection().await.unwrap();
    let kept = connection.insert(&item("pooled")).await.unwrap();
    let rows: Vec<OrderItem> = connection
        .query_as(
            r#"SELECT * FROM "Shop Schema"."Order Items" WHERE "select" = $1"#,
            &[&"pooled"],
        )
        .await
        .unwrap();
    assert_eq!(rows, [kept]);
}

#[tokio::test]
async fn a_value_with_quotes_and_sql_is_a_parameter_not_sql() {
    let client = client().await;
    order_items(&client).await;
    let nasty = r#"x'); DROP TABLE "Shop Schema"."Order Items"; --"#;
    let stored = client.insert(&item(nasty)).await.unwrap();
    assert_eq!(stored.label, nasty);
    let count: i64 = client
        .query_one(r#"SELECT count(*) FROM "Shop Schema"."Order Items""#, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}
