//! The two dialects' migrations arrive at the same schema: the same tables with the same columns, their
//! types mapped. Runs when `WATCHWORD_TEST_DATABASE_URL` names a PostgreSQL database (CI sets it).

use std::collections::BTreeSet;

use watchword_db::{Migrations, postgres::tokio_postgres::NoTls};

/// (table, column, type as SQLite declares it).
type Schema = BTreeSet<(String, String, String)>;

fn sqlite_schema(migrations: &Migrations) -> Schema {
    let conn = watchword_db::rusqlite::Connection::open_in_memory().unwrap();
    for sql in migrations.sqlite {
        conn.execute_batch(sql).unwrap();
    }
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut schema = Schema::new();
    for table in tables {
        let mut columns = conn.prepare(&format!("PRAGMA table_info({table})")).unwrap();
        let rows = columns
            .query_map([], |row| Ok((row.get::<_, String>(1)?, row.get::<_, String>(2)?)))
            .unwrap();
        for row in rows {
            let (column, kind) = row.unwrap();
            schema.insert((table.clone(), column, kind));
        }
    }
    schema
}

/// PostgreSQL's types, named as the SQLite schema names them.
fn as_sqlite_type(pg: &str) -> &'static str {
    match pg {
        "bigint" | "integer" | "boolean" => "INTEGER",
        "text" => "TEXT",
        "bytea" => "BLOB",
        other => panic!("no SQLite counterpart for PostgreSQL type {other}"),
    }
}

async fn postgres_schema(base: &str, migrations: &Migrations) -> Schema {
    let (client, connection) = watchword_db::postgres::tokio_postgres::connect(base, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schema_name = format!("t_schema_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema_name}; SET search_path = {schema_name}"
        ))
        .await
        .unwrap();
    for sql in migrations.postgres {
        client.batch_execute(sql).await.unwrap();
    }
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = $1",
            &[&schema_name],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            (
                row.get(0),
                row.get(1),
                as_sqlite_type(row.get::<_, &str>(2)).to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn both_dialects_migrate_to_the_same_tables_and_columns() {
    let Ok(base) = std::env::var("WATCHWORD_TEST_DATABASE_URL") else {
        eprintln!("skipped: schema parity needs WATCHWORD_TEST_DATABASE_URL (PostgreSQL); .ci/run sets it");
        return;
    };
    for (service, migrations) in [
        ("auth-svc", &auth_svc::MIGRATIONS),
        ("posts-svc", &posts_svc::MIGRATIONS),
    ] {
        assert_eq!(
            migrations.sqlite.len(),
            migrations.postgres.len(),
            "{service}: both dialects carry the same versions"
        );
        let (sqlite, postgres) = (
            sqlite_schema(migrations),
            postgres_schema(&base, migrations).await,
        );
        let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
        let only_postgres: Vec<_> = postgres.difference(&sqlite).collect();
        assert!(
            only_sqlite.is_empty() && only_postgres.is_empty(),
            "{service}: the schemas drifted\n  only in SQLite: {only_sqlite:?}\n  only in PostgreSQL: {only_postgres:?}"
        );
    }
}
