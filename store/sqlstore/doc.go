// Package sqlstore is the [core.KeysetStore] of a SQL database: SQLite
// ([OpenSQLite], modernc.org/sqlite, pure Go) and PostgreSQL ([OpenPostgres],
// github.com/jackc/pgx/v5). See docs/stores.md.
package sqlstore
