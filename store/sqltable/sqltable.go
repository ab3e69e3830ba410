// Package sqltable is the database side of re-encryption (DEK rotation):
// it reads and compare-and-swaps the encrypted columns of a SQLite or
// PostgreSQL table for core's [core.Reencrypter], and keeps the job and
// its checkpoints in two tables of the same database,
// keyctl_reencrypt_jobs and keyctl_reencrypt_chunks, created on demand.
//
// A table to re-encrypt must have an integer primary key (INTEGER or
// BIGINT; SQLite: a declared type containing "INT"): rows are read in key
// order and the key range is split into chunks. Encrypted columns hold the
// field ciphertext in binary form (BLOB, BYTEA) or text form (TEXT,
// VARCHAR); NULLs are skipped. Table and column names must be plain
// identifiers ([A-Za-z_][A-Za-z0-9_]*, see core.ValidIdentifier); they are
// always quoted in SQL, so in PostgreSQL they are case-sensitive (a table
// created as CREATE TABLE Users is named users).
//
// Every batch is one transaction: the conditional UPDATEs of its rows and
// the chunk's checkpoint (and lease) are committed together, so a killed
// run resumes exactly after its last batch. See docs/reencrypt.md.
package sqltable

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/sqlitex"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

type dialect int

const (
	sqlite dialect = iota
	postgres
)

var (
	// ErrNotInteger is returned when the key column is not an integer column.
	ErrNotInteger = errors.New("the key column must be an integer primary key (INTEGER or BIGINT)")
	// ErrNotKey is returned when the key column is not the table's primary
	// key (PostgreSQL: nor a NOT NULL column with a unique index of its
	// own): rows with the same or a NULL key would be skipped.
	ErrNotKey = errors.New("the key column must be the table's primary key")
)

// DB is a SQLite or PostgreSQL database holding tables to re-encrypt. It is
// safe for concurrent use.
type DB struct {
	db    *sql.DB
	d     dialect
	where string // "sqlite PATH" or "postgres": never the URL (it may hold a password)
	path  string // SQLite file

	mu       sync.Mutex
	migrated bool // the job tables are created and up to date
}

// OpenSQLite opens the SQLite database file at path (it must exist) with
// WAL, a 30 s busy timeout and write-locking (BEGIN IMMEDIATE)
// transactions.
func OpenSQLite(ctx context.Context, path string) (*DB, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite: path %q: %w", path, core.ErrMalformed)
	}
	dsn := "file:" + path + "?mode=rw&_txlock=immediate&_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	d := &DB{db: db, d: sqlite, where: "sqlite " + path, path: path}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = db.PingContext(ctx)
		if err == nil {
			_, err = db.ExecContext(ctx, "PRAGMA journal_mode=WAL")
		}
		if err == nil || !sqlitex.Busy(err, false) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	return d, nil
}

// OpenPostgres connects to the PostgreSQL database at url (a libpq URL or
// key=value string). A url that does not parse is an error wrapping
// core.ErrMalformed with a fixed message (the parser's would quote parts
// of it); a server that cannot be reached wraps core.ErrUnavailable and
// may name the host, user and database, never the password.
func OpenPostgres(ctx context.Context, url string) (*DB, error) {
	if _, err := pgx.ParseConfig(url); err != nil {
		return nil, fmt.Errorf("postgres: the database URL does not parse (want postgres://USER@HOST/DB or key=value pairs): %w", core.ErrMalformed)
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("postgres: the database URL is not usable: %w", core.ErrMalformed)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: connecting: %w: %w", err, core.ErrUnavailable)
	}
	db.SetMaxOpenConns(8)
	return &DB{db: db, d: postgres, where: "postgres"}, nil
}

// Close closes the database handle.
func (db *DB) Close() error { return db.db.Close() }

// Postgres reports whether db is PostgreSQL.
func (db *DB) Postgres() bool { return db.d == postgres }

// SQL returns the underlying handle (tests, benchmarks).
func (db *DB) SQL() *sql.DB { return db.db }

// String names the database for messages: "sqlite PATH" or "postgres".
func (db *DB) String() string { return db.where }

// retryable reports whether a transaction that failed with err may simply
// be run again: a PostgreSQL deadlock (40P01) or serialization failure
// (40001), or SQLite's busy or locked database.
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40P01" || pe.Code == "40001"
	}
	return sqlitex.Busy(err, true)
}

// quote returns name as a quoted identifier; name must have passed
// core.ValidIdentifier (so it holds no quote).
func quote(name string) string { return `"` + name + `"` }

// ph returns placeholder i (1-based). SQLite gets anonymous "?" (binding
// numbered ones costs a name lookup per parameter in modernc.org/sqlite),
// so every query must use its placeholders once each, in order.
func (db *DB) ph(i int) string {
	if db.d == postgres {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}

// Spec names what to re-encrypt.
type Spec struct {
	// Table is the table name.
	Table string
	// Key is its integer primary-key column.
	Key string
	// Columns are the encrypted columns (at least one, at most 32).
	Columns []string
}

// Validate checks the names. Errors wrap core.ErrMalformed.
func (s Spec) Validate() error {
	if err := core.ValidIdentifier(s.Table); err != nil {
		return fmt.Errorf("table: %w", err)
	}
	if err := core.ValidIdentifier(s.Key); err != nil {
		return fmt.Errorf("key column: %w", err)
	}
	if len(s.Columns) == 0 || len(s.Columns) > 32 {
		return fmt.Errorf("%d encrypted columns (allowed 1 to 32): %w", len(s.Columns), core.ErrMalformed)
	}
	seen := map[string]bool{s.Key: true}
	for _, c := range s.Columns {
		if err := core.ValidIdentifier(c); err != nil {
			return fmt.Errorf("column: %w", err)
		}
		if seen[c] {
			return fmt.Errorf("column %q named twice (or is the key column): %w", c, core.ErrMalformed)
		}
		seen[c] = true
	}
	return nil
}

// colsKey is the job table's form of the column list.
func (s Spec) colsKey() string { return strings.Join(s.Columns, ",") }

// Table is one table to re-encrypt, checked against the database.
type Table struct {
	db       *DB
	spec     Spec
	pgType   []string // PostgreSQL: bytea or text per column
	scanFrom string   // SELECT ... WHERE key >= lo ...
	scanNext string   // SELECT ... WHERE key > after ...
	selCols  string
}

// Table checks that spec's table and columns exist and that the key column
// is an integer (errors wrap ErrNotInteger otherwise, or core.ErrMalformed
// for a missing table or column).
func (db *DB) Table(ctx context.Context, spec Spec) (*Table, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	t := &Table{db: db, spec: spec}
	types := map[string]string{}
	var pks []string // SQLite: the primary-key columns
	switch db.d {
	case sqlite:
		// pragma_table_info finds a table whatever the case of its name;
		// the job tables and the associated data use the name as given,
		// so it must be the table's own spelling.
		var name string
		err := db.db.QueryRowContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE`, spec.Table).Scan(&name)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("%s: no table %q: %w", db.where, spec.Table, core.ErrMalformed)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
		}
		if name != spec.Table {
			return nil, fmt.Errorf("%s: the table is named %q, not %q (give its exact name): %w", db.where, name, spec.Table, core.ErrMalformed)
		}
		rows, err := db.db.QueryContext(ctx, `SELECT name, type, pk FROM pragma_table_info(?) ORDER BY pk`, spec.Table)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
		}
		for rows.Next() {
			var n, ty string
			var pk int
			if err := rows.Scan(&n, &ty, &pk); err != nil {
				rows.Close()
				return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
			}
			types[n] = strings.ToLower(ty)
			if pk > 0 {
				pks = append(pks, n)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
		}
	case postgres:
		rows, err := db.db.QueryContext(ctx, `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1`, spec.Table)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
		}
		for rows.Next() {
			var n, ty string
			if err := rows.Scan(&n, &ty); err != nil {
				rows.Close()
				return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
			}
			types[n] = ty
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
		}
	}
	if len(types) == 0 {
		return nil, fmt.Errorf("%s: no table %q (names are case-sensitive): %w", db.where, spec.Table, core.ErrMalformed)
	}
	kt, ok := types[spec.Key]
	if !ok {
		return nil, fmt.Errorf("%s: table %s has no column %q: %w", db.where, spec.Table, spec.Key, core.ErrMalformed)
	}
	intKey := false
	if db.d == sqlite {
		intKey = strings.Contains(kt, "int")
	} else {
		intKey = kt == "bigint" || kt == "integer" || kt == "smallint"
	}
	if !intKey {
		return nil, fmt.Errorf("%s: %s.%s is %s: %w", db.where, spec.Table, spec.Key, kt, ErrNotInteger)
	}
	// The key must identify every row exactly once: the scan pages with
	// key > last, so duplicate keys at a batch edge and NULL keys would be
	// skipped, and a verify pass that misses rows could let --retire-old
	// retire a DEK that they still use.
	switch db.d {
	case sqlite:
		if len(pks) != 1 || pks[0] != spec.Key {
			have := "no primary key"
			if len(pks) > 0 {
				have = "primary key (" + strings.Join(pks, ", ") + ")"
			}
			return nil, fmt.Errorf("%s: %s.%s is not the table's primary key (the table has %s): %w", db.where, spec.Table, spec.Key, have, ErrNotKey)
		}
	case postgres:
		var ok bool
		err := db.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i
			JOIN pg_class c ON c.oid = i.indrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
			WHERE n.nspname = current_schema() AND c.relname = $1 AND a.attname = $2 AND i.indnkeyatts = 1
			  AND (i.indisprimary OR (i.indisunique AND a.attnotnull AND i.indpred IS NULL AND i.indexprs IS NULL)))`,
			spec.Table, spec.Key).Scan(&ok)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", db.where, spec.Table, err)
		}
		if !ok {
			return nil, fmt.Errorf("%s: %s.%s is neither the table's primary key nor a NOT NULL column with a unique index of its own: %w", db.where, spec.Table, spec.Key, ErrNotKey)
		}
	}
	for _, c := range spec.Columns {
		ty, ok := types[c]
		if !ok {
			return nil, fmt.Errorf("%s: table %s has no column %q: %w", db.where, spec.Table, c, core.ErrMalformed)
		}
		if db.d == postgres {
			switch ty {
			case "bytea":
				t.pgType = append(t.pgType, "bytea")
			case "text", "character varying":
				t.pgType = append(t.pgType, "text")
			default:
				return nil, fmt.Errorf("%s: %s.%s is %s; encrypted columns must be bytea, text or varchar: %w", db.where, spec.Table, c, ty, core.ErrMalformed)
			}
		}
	}
	q := make([]string, 0, len(spec.Columns)+1)
	q = append(q, quote(spec.Key))
	for _, c := range spec.Columns {
		q = append(q, quote(c))
	}
	t.selCols = strings.Join(q, ", ")
	base := "SELECT " + t.selCols + " FROM " + quote(spec.Table) + " WHERE " + quote(spec.Key)
	tail := " AND " + quote(spec.Key) + " <= " + db.ph(2) + " ORDER BY " + quote(spec.Key) + " LIMIT " + db.ph(3)
	t.scanFrom = base + " >= " + db.ph(1) + tail
	t.scanNext = base + " > " + db.ph(1) + tail
	return t, nil
}

// Spec returns the table's spec.
func (t *Table) Spec() Spec { return t.spec }

// Bounds returns the smallest and largest key; ok is false for an empty
// table.
func (t *Table) Bounds(ctx context.Context) (lo, hi int64, ok bool, err error) {
	var a, b sql.NullInt64
	k := quote(t.spec.Key)
	err = t.db.db.QueryRowContext(ctx, "SELECT MIN("+k+"), MAX("+k+") FROM "+quote(t.spec.Table)).Scan(&a, &b)
	if err != nil {
		return 0, 0, false, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
	}
	return a.Int64, b.Int64, a.Valid, nil
}

// scanRows reads rows of the result set.
func (t *Table) scanRows(rows *sql.Rows, out []core.ReencryptRow) ([]core.ReencryptRow, error) {
	defer rows.Close()
	n := len(t.spec.Columns)
	dest := make([]any, n+1)
	vals := make([]any, n)
	var key int64
	dest[0] = &key
	for i := range vals {
		dest[i+1] = &vals[i]
	}
	var slab []core.FieldValue // the rows' values, allocated in blocks
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
		}
		if len(slab) < n {
			slab = make([]core.FieldValue, n*max(cap(out)-len(out), 1))
		}
		r := core.ReencryptRow{Key: key, Values: slab[:n:n]}
		slab = slab[n:]
		for i, v := range vals {
			switch v := v.(type) {
			case nil:
				r.Values[i].Null = true
			case []byte:
				r.Values[i].Data = v // database/sql gives *any a copy
			case string:
				r.Values[i] = core.FieldValue{Text: true, Data: []byte(v)}
			default:
				return nil, fmt.Errorf("%s: %s.%s of row %d holds a %T, not a BLOB/BYTEA or TEXT: %w", t.db.where, t.spec.Table, t.spec.Columns[i], key, v, core.ErrMalformed)
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
	}
	return out, nil
}

// scan reads up to limit rows in (after, hi], or [lo, hi] at the start.
func (t *Table) scan(ctx context.Context, q queryer, lo, hi int64, after core.Cursor, limit int) ([]core.ReencryptRow, error) {
	var rows *sql.Rows
	var err error
	if after.Set {
		if after.Key >= hi {
			return nil, nil
		}
		rows, err = q.QueryContext(ctx, t.scanNext, after.Key, hi, limit)
	} else {
		rows, err = q.QueryContext(ctx, t.scanFrom, lo, hi, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
	}
	return t.scanRows(rows, make([]core.ReencryptRow, 0, limit))
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// reread reads the rows with keys.
func (t *Table) reread(ctx context.Context, keys []int64) ([]core.ReencryptRow, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	var out []core.ReencryptRow
	for len(keys) > 0 {
		part := keys[:min(len(keys), 500)]
		keys = keys[len(part):]
		phs := make([]string, len(part))
		args := make([]any, len(part))
		for i, k := range part {
			phs[i] = t.db.ph(i + 1)
			args[i] = k
		}
		q := "SELECT " + t.selCols + " FROM " + quote(t.spec.Table) + " WHERE " + quote(t.spec.Key) + " IN (" + strings.Join(phs, ", ") + ")"
		rows, err := t.db.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
		}
		if out, err = t.scanRows(rows, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// arg is the SQL argument for a value in its stored form.
func arg(v core.FieldValue) any {
	if v.Text {
		return string(v.Data)
	}
	return v.Data
}

// applyUpdates runs the compare-and-swaps of updates in tx: in SQLite one
// conditional UPDATE per row (prepared once per set of changed columns), in
// PostgreSQL one UPDATE ... FROM unnest(...) per set of changed columns.
func (t *Table) applyUpdates(ctx context.Context, tx *sql.Tx, updates []core.RowUpdate) ([]bool, error) {
	if t.db.d == postgres {
		return t.applyUpdatesPG(ctx, tx, updates)
	}
	out := make([]bool, len(updates))
	stmts := map[uint32]*sql.Stmt{} // by the set of changed columns (at most 32)
	defer func() {
		for _, s := range stmts {
			s.Close()
		}
	}()
	var args []any
	for i, u := range updates {
		var sig uint32
		for _, s := range u.Set {
			sig |= 1 << uint(s.Column)
		}
		st := stmts[sig]
		if st == nil {
			var set, where []string
			n := 1
			for _, s := range u.Set {
				set = append(set, quote(t.spec.Columns[s.Column])+" = "+t.db.ph(n))
				n++
			}
			where = append(where, quote(t.spec.Key)+" = "+t.db.ph(n))
			n++
			for _, s := range u.Set {
				where = append(where, quote(t.spec.Columns[s.Column])+" = "+t.db.ph(n))
				n++
			}
			q := "UPDATE " + quote(t.spec.Table) + " SET " + strings.Join(set, ", ") + " WHERE " + strings.Join(where, " AND ")
			var err error
			if st, err = tx.PrepareContext(ctx, q); err != nil {
				return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
			}
			stmts[sig] = st
		}
		args = args[:0]
		for _, s := range u.Set {
			args = append(args, arg(s.New))
		}
		args = append(args, u.Key)
		for _, s := range u.Set {
			args = append(args, arg(s.Old))
		}
		res, err := st.ExecContext(ctx, args...)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: updating row %d: %w", t.db.where, t.spec.Table, u.Key, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
		}
		out[i] = n == 1
	}
	return out, nil
}

// Reader returns a read-only source over the whole table, for
// core.Verify and dry runs: its Apply fails.
func (t *Table) Reader() core.ReencryptSource { return reader{t} }

type reader struct{ t *Table }

func (r reader) Columns() []string { return r.t.spec.Columns }
func (r reader) Scan(ctx context.Context, after core.Cursor, limit int) ([]core.ReencryptRow, error) {
	return r.t.scan(ctx, r.t.db.db, -1<<63, 1<<63-1, after, limit)
}
func (r reader) Reread(ctx context.Context, keys []int64) ([]core.ReencryptRow, error) {
	return r.t.reread(ctx, keys)
}
func (r reader) Apply(context.Context, []core.RowUpdate, core.Cursor) ([]bool, error) {
	return nil, errors.New("sqltable: the table reader is read-only")
}

// applyUpdatesPG swaps every row of a set of changed columns with one
// statement:
//
//	UPDATE t SET c = v.n0 FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS v(k, n0, o0)
//	 WHERE t.key = v.k AND t.c = v.o0 RETURNING t.key
//
// The rows it returns are the ones whose compare-and-swap matched.
func (t *Table) applyUpdatesPG(ctx context.Context, tx *sql.Tx, updates []core.RowUpdate) ([]bool, error) {
	out := make([]bool, len(updates))
	groups := map[uint32][]int{}
	var order []uint32
	for i, u := range updates {
		var sig uint32
		for _, s := range u.Set {
			sig |= 1 << uint(s.Column)
		}
		if _, ok := groups[sig]; !ok {
			order = append(order, sig)
		}
		groups[sig] = append(groups[sig], i)
	}
	for _, sig := range order {
		idx := groups[sig]
		first := updates[idx[0]]
		keys := make([]int64, len(idx))
		pos := make(map[int64]int, len(idx))
		args := []any{keys}
		var set, where, unnest, names []string
		unnest = append(unnest, "$1::bigint[]")
		names = append(names, "k")
		where = append(where, "t."+quote(t.spec.Key)+" = v.k")
		for j, s := range first.Set {
			col := t.spec.Columns[s.Column]
			ty := t.pgType[s.Column]
			var nv, ov any
			if ty == "text" {
				n, o := make([]string, len(idx)), make([]string, len(idx))
				for r, i := range idx {
					n[r], o[r] = string(updates[i].Set[j].New.Data), string(updates[i].Set[j].Old.Data)
				}
				nv, ov = n, o
			} else {
				n, o := make([][]byte, len(idx)), make([][]byte, len(idx))
				for r, i := range idx {
					n[r], o[r] = updates[i].Set[j].New.Data, updates[i].Set[j].Old.Data
				}
				nv, ov = n, o
			}
			args = append(args, nv, ov)
			unnest = append(unnest, fmt.Sprintf("$%d::%s[]", len(args)-1, ty), fmt.Sprintf("$%d::%s[]", len(args), ty))
			names = append(names, fmt.Sprintf("n%d", j), fmt.Sprintf("o%d", j))
			set = append(set, fmt.Sprintf("%s = v.n%d", quote(col), j))
			where = append(where, fmt.Sprintf("t.%s = v.o%d", quote(col), j))
		}
		for r, i := range idx {
			keys[r] = updates[i].Key
			pos[updates[i].Key] = i
		}
		q := "UPDATE " + quote(t.spec.Table) + " AS t SET " + strings.Join(set, ", ") +
			" FROM unnest(" + strings.Join(unnest, ", ") + ") AS v(" + strings.Join(names, ", ") + ")" +
			" WHERE " + strings.Join(where, " AND ") + " RETURNING t." + quote(t.spec.Key)
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: updating %d rows: %w", t.db.where, t.spec.Table, len(idx), err)
		}
		for rows.Next() {
			var k int64
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return nil, fmt.Errorf("%s: table %s: %w", t.db.where, t.spec.Table, err)
			}
			if i, ok := pos[k]; ok {
				out[i] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("%s: table %s: updating %d rows: %w", t.db.where, t.spec.Table, len(idx), err)
		}
	}
	return out, nil
}
