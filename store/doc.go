// Package store holds implementations of [core.KeysetStore]: here the JSON
// keyset file ([OpenFile]) and its lock ([LockFile]); the SQL stores (SQLite,
// PostgreSQL) are in store/sqlstore, so that a program that only uses the
// file links no database driver. See docs/stores.md for the schema, the
// migrations and the locking of each.
package store
