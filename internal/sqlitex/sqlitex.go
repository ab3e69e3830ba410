// Package sqlitex holds what the SQLite users of the module (store/sqlstore,
// store/sqltable) share about modernc.org/sqlite.
package sqlitex

import (
	"errors"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Busy reports whether err is the driver's SQLITE_BUSY ("database is
// locked") error; with locked true, SQLITE_LOCKED counts too. Only the
// driver's typed error counts.
func Busy(err error, locked bool) bool {
	var se *msqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || (locked && c == sqlite3.SQLITE_LOCKED)
	}
	return false
}
