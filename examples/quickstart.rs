//! The ORM core in one screen: connect, run statements, use a transaction.
//!
//! Run it with `cargo run --example quickstart`. With `DATABASE_URL` set it
//! uses that database; without, it starts a throwaway PostgreSQL server from
//! the binaries installed on this machine.

use pgorm::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;

    // A regular table: each call of `client` may use another pooled
    // connection, so a TEMP table would not be seen by the next one.
    client
        .execute("DROP TABLE IF EXISTS pgorm_quickstart_books", &[])
        .await?;
    client
        .execute(
            "CREATE TABLE pgorm_quickstart_books (id int PRIMARY KEY, title text NOT NULL)",
            &[],
        )
        .await?;

    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO pgorm_quickstart_books VALUES ($1, $2)",
        &[&1i32, &"Dune"],
    )
    .await?;
    tx.execute(
        "INSERT INTO pgorm_quickstart_books VALUES ($1, $2)",
        &[&2i32, &"Solaris"],
    )
    .await?;
    let titles: Vec<String> = tx
        .query("SELECT title FROM pgorm_quickstart_books ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.commit().await?;
    println!("books: {titles:?}");

    match client
        .execute(
            "INSERT INTO pgorm_quickstart_books VALUES ($1, $2)",
            &[&1i32, &"Dune again"],
        )
        .await
    {
        Err(error) => println!(
            "duplicate refused: SQLSTATE {:?}",
            error.sqlstate().map(|state| state.code())
        ),
        Ok(_) => println!("unexpected: the duplicate was accepted"),
    }
    Ok(())
}
