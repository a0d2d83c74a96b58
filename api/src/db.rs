//! The database: SQLite (default, one file, WAL) or PostgreSQL (replicas).
//!
//! Queries go through sqlx's `Any` driver so almost every statement is
//! written once (`$1` placeholders work on both). Where the dialects differ —
//! full-text search, claiming queued work — callers branch on [`Dialect`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};

use crate::error::{Error, Result};
use crate::ids::{Page, Paginated};

/// Which SQL dialect the pool speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3 (bundled), FTS5.
    Sqlite,
    /// PostgreSQL, tsvector.
    Postgres,
}

/// A connection pool and its dialect.
#[derive(Clone, Debug)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// Its dialect.
    pub dialect: Dialect,
}

/// A transaction on [`Db`].
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Db {
    /// The default SQLite URL for a data directory.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("prodgy.db").display())
    }

    /// Connects and runs the migrations of the dialect.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(Error::Config(
                "--database-url must start with postgres:// or sqlite:".into(),
            ));
        };
        let options = AnyConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("--database-url: {e}")))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside the single writer; the
                        // busy timeout makes writers queue instead of failing.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 15000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let db = Db { pool, dialect };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        match self.dialect {
            Dialect::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.pool)
                    .await?;
            }
            Dialect::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts a transaction. SQLite takes the write lock up front so a
    /// read-then-write transaction never fails on a lock upgrade.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A row with an id, for keyset pagination.
pub trait Keyed {
    /// The row's id.
    fn key(&self) -> &str;
}

/// One page of a product's rows of `table`, newest first.
pub async fn page_of<R>(
    db: &Db,
    table: &str,
    columns: &str,
    product: &str,
    page: &Page,
) -> Result<Paginated<R>>
where
    R: for<'r> sqlx::FromRow<'r, AnyRow> + Keyed + Send + Unpin,
{
    let rows = sqlx::query_as::<_, R>(&format!(
        "SELECT {columns} FROM {table} WHERE product = $1 AND ($2 IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(product)
    .bind(page.before.clone())
    .bind(page.limit + 1)
    .fetch_all(&db.pool)
    .await?;
    Ok(Paginated::from_rows(rows, page, |r| r.key()))
}

/// A product's row of `table` by id; `NotFound(what)` when there is none
/// (or it belongs to another product: the two are not told apart).
pub async fn find<R>(
    db: &Db,
    table: &str,
    columns: &str,
    product: &str,
    id: &str,
    what: &'static str,
) -> Result<R>
where
    R: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin,
{
    sqlx::query_as::<_, R>(&format!(
        "SELECT {columns} FROM {table} WHERE product = $1 AND id = $2"
    ))
    .bind(product)
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or(Error::NotFound(what))
}

/// Deletes a product's row of `table` and, in the same transaction, the
/// rows of each `(child table, column)` that point at it.
pub async fn delete_with_children(
    db: &Db,
    table: &str,
    product: &str,
    id: &str,
    children: &[(&str, &str)],
    what: &'static str,
) -> Result<()> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(&format!(
        "DELETE FROM {table} WHERE product = $1 AND id = $2"
    ))
    .bind(product)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(what));
    }
    for (child, column) in children {
        sqlx::query(&format!(
            "DELETE FROM {child} WHERE product = $1 AND {column} = $2"
        ))
        .bind(product)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
