//! Job wake-ups: workers sleep until a notification says there is work, and
//! claim jobs with `FOR UPDATE SKIP LOCKED`. The table is the truth; the
//! notification only wakes the worker, so a missed one costs at most the
//! fallback poll interval.
//!
//! Run it with `cargo run --example job_wakeup`.

use std::time::Duration;

use pgorm::listen::PgListenerConfig;
use pgorm::prelude::*;

async fn claim_next_job(client: &PgClient) -> OrmResult<Option<(i64, String)>> {
    let row = client
        .query_opt(
            "DELETE FROM jobs WHERE id = (
                 SELECT id FROM jobs ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1
             ) RETURNING id, kind",
            &[],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

async fn enqueue(client: &PgClient, kind: &str) -> OrmResult<()> {
    // The wake-up is sent in the job's own transaction: the worker is woken
    // only once the job is visible.
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO jobs (kind) VALUES ($1)", &[&kind])
        .await?;
    pgorm::notify(&tx, "jobs_available", "").await?;
    tx.commit().await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, _server) = pgorm_testkit::database_url_or_spawn()?;
    let client = PgClient::connect(&database_url).await?;
    client.execute("DROP TABLE IF EXISTS jobs", &[]).await?;
    client
        .execute(
            "CREATE TABLE jobs (id bigserial PRIMARY KEY, kind text NOT NULL)",
            &[],
        )
        .await?;

    let mut wakeups = client
        .listener_with(PgListenerConfig::new().channels(["jobs_available"]))
        .await?;
    let worker_client = client.clone();
    let worker = tokio::spawn(async move {
        let mut done = 0;
        while done < 3 {
            while let Some((id, kind)) = claim_next_job(&worker_client).await? {
                println!("worker ran job {id} ({kind})");
                done += 1;
            }
            // Sleep until woken, but never longer than the fallback poll.
            let _ = tokio::time::timeout(Duration::from_secs(5), wakeups.next_event()).await;
        }
        wakeups.close().await?;
        OrmResult::Ok(())
    });

    for kind in ["send_email", "resize_image", "generate_report"] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        enqueue(&client, kind).await?;
        println!("enqueued {kind}");
    }
    worker.await??;
    Ok(())
}
