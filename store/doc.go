// Package store holds the implementations of [core.KeysetStore]: a JSON file
// ([OpenFile]) and a SQL database, SQLite or PostgreSQL ([OpenSQLite],
// [OpenPostgres]). See docs/stores.md for the schema, the migrations and the
// locking of each.
package store
