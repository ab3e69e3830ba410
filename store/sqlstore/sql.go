package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/sqlitex"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// dialect is what differs between SQLite and PostgreSQL.
type dialect int

const (
	sqlite dialect = iota
	postgres
)

func (d dialect) String() string {
	if d == postgres {
		return "postgres"
	}
	return "sqlite"
}

// DefaultKeyset is the keyset name used when Options.Keyset is empty.
const DefaultKeyset = "default"

// Options configure a SQL store.
type Options struct {
	// Keyset names the keyset within the database (one database can hold
	// several); DefaultKeyset if empty.
	Keyset string
}

// SQLStore keeps keysets in a SQLite or PostgreSQL database: one row per
// DEK in keyctl_deks, one row per keyset in keyctl_keysets. Opening it
// creates or migrates the schema (see migrations). Update runs in one
// transaction that holds the keyset row's lock (PostgreSQL: SELECT ... FOR
// UPDATE; SQLite: BEGIN IMMEDIATE, the database's write lock); SwapWrapped
// is one conditional UPDATE of one row.
type SQLStore struct {
	db     *sql.DB
	d      dialect
	keyset string
	where  string // for errors: "sqlite <path>" or "postgres"
}

var _ core.KeysetStore = (*SQLStore)(nil)

// OpenSQLite opens (creating if needed) the SQLite database file at path and
// migrates its schema. It uses WAL, a 30 s busy timeout and immediate
// (write-locking) transactions.
func OpenSQLite(ctx context.Context, path string, o Options) (*SQLStore, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("keyset store sqlite: path %q: %w", path, core.ErrMalformed)
	}
	if err := checkSQLiteFile(path); err != nil {
		return nil, err
	}
	dsn := "file:" + path + "?_txlock=immediate&_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=cache_size(-65536)"
	// Several processes opening a new database at once can see
	// SQLITE_BUSY without the busy timeout applying (the switch to WAL
	// needs an exclusive lock): try again, for as long as the busy timeout.
	deadline := time.Now().Add(30 * time.Second)
	delay := 5 * time.Millisecond
	for {
		db, err := sql.Open("sqlite", dsn)
		if err != nil {
			return nil, fmt.Errorf("keyset store sqlite %s: %w", path, err)
		}
		s, err := open(ctx, db, sqlite, "sqlite "+path, o)
		// The migration's errors may carry the driver's only as text.
		busy := err != nil && (sqlitex.Busy(err, false) || strings.Contains(err.Error(), "SQLITE_BUSY"))
		if !busy || time.Now().Add(delay).After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("keyset store sqlite %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// checkSQLiteFile creates a missing database file with mode 0600 (SQLite
// gives its -wal and -shm files the same mode) and refuses one that group or
// others can write: whoever can write the keyset can swap a DEK's wrap for
// one of a DEK they know, or delete DEKs. The file store refuses the same.
func checkSQLiteFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("keyset store sqlite %s: %w", path, err)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return fmt.Errorf("keyset store sqlite %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("keyset store sqlite %s: not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("keyset store sqlite %s has mode %04o: it is writable by group or others (chmod 600): %w", path, fi.Mode().Perm(), core.ErrPermission)
	}
	return nil
}

// OpenPostgres connects to the PostgreSQL database at url (a libpq URL or
// key=value string, as pgx accepts) and migrates its schema.
func OpenPostgres(ctx context.Context, url string, o Options) (*SQLStore, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("keyset store postgres: %w", err) // pgx does not echo the password
	}
	return open(ctx, db, postgres, "postgres", o)
}

func open(ctx context.Context, db *sql.DB, d dialect, where string, o Options) (*SQLStore, error) {
	s := &SQLStore{db: db, d: d, keyset: o.Keyset, where: where}
	if s.keyset == "" {
		s.keyset = DefaultKeyset
	}
	if len(s.keyset) > 200 {
		_ = db.Close()
		return nil, fmt.Errorf("keyset store %s: keyset name longer than 200 bytes: %w", where, core.ErrMalformed)
	}
	if err := s.migrate(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database handle.
func (s *SQLStore) Close() error { return s.db.Close() }

// SchemaVersion returns the schema version the database is at.
func (s *SQLStore) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(version) FROM keyctl_schema_version`).Scan(&v); err != nil {
		return 0, s.errf("schema version", err)
	}
	return int(v.Int64), nil
}

// migrations are the schema changes, in order; migrations[i] brings the
// schema to version i+1. Append only: never edit a released one.
var migrations = []migration{
	// 1: keysets and their DEKs.
	{all: `CREATE TABLE keyctl_keysets (
		name    TEXT    NOT NULL PRIMARY KEY,
		format  INTEGER NOT NULL
	);
	CREATE TABLE keyctl_deks (
		keyset  TEXT    NOT NULL REFERENCES keyctl_keysets(name),
		id      BIGINT  NOT NULL,
		seq     BIGINT  NOT NULL,
		state   TEXT    NOT NULL,
		created TEXT    NOT NULL,
		wrapped TEXT    NOT NULL,
		PRIMARY KEY (keyset, id)
	)`},
	// 2: SQLite keeps the DEK rows in (keyset, id) order (WITHOUT ROWID).
	// DEK ids are random, so in a rowid table a batch of consecutive ids
	// touched a page per row: a bulk rewrap of 300,000 DEKs wrote about
	// four times the pages. PostgreSQL: nothing to do.
	{sqlite: `CREATE TABLE keyctl_deks_v2 (
		keyset  TEXT    NOT NULL REFERENCES keyctl_keysets(name),
		id      BIGINT  NOT NULL,
		seq     BIGINT  NOT NULL,
		state   TEXT    NOT NULL,
		created TEXT    NOT NULL,
		wrapped TEXT    NOT NULL,
		PRIMARY KEY (keyset, id)
	) WITHOUT ROWID;
	INSERT INTO keyctl_deks_v2 (keyset, id, seq, state, created, wrapped)
		SELECT keyset, id, seq, state, created, wrapped FROM keyctl_deks;
	DROP TABLE keyctl_deks;
	ALTER TABLE keyctl_deks_v2 RENAME TO keyctl_deks`},
}

// migration is one schema step: all for both databases, or sqlite and
// postgres each (an empty one does nothing there).
type migration struct {
	all, sqlite, postgres string
}

// sql returns the statements of m for dialect d.
func (m migration) sql(d dialect) string {
	switch {
	case m.all != "":
		return m.all
	case d == postgres:
		return m.postgres
	default:
		return m.sqlite
	}
}

// migrate creates keyctl_schema_version if needed and applies the missing
// migrations in one transaction, serialised against other processes
// (PostgreSQL: an advisory transaction lock; SQLite: the write lock).
func (s *SQLStore) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.errf("migrate", err)
	}
	defer tx.Rollback()
	if s.d == postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7306010361)`); err != nil {
			return s.errf("migrate: lock", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS keyctl_schema_version (version INTEGER NOT NULL PRIMARY KEY, applied TEXT NOT NULL)`); err != nil {
		return s.errf("migrate", err)
	}
	var cur sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(version) FROM keyctl_schema_version`).Scan(&cur); err != nil {
		return s.errf("migrate", err)
	}
	v := int(cur.Int64)
	if v > len(migrations) {
		return fmt.Errorf("keyset store %s: schema version %d is newer than this build's %d: %w", s.where, v, len(migrations), core.ErrUnsupportedVersion)
	}
	for i := v; i < len(migrations); i++ {
		for _, stmt := range strings.Split(migrations[i].sql(s.d), ";\n") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return s.errf(fmt.Sprintf("migration %d", i+1), err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO keyctl_schema_version (version, applied) VALUES (?, ?)`), i+1, time.Now().UTC().Format(time.RFC3339)); err != nil {
			return s.errf(fmt.Sprintf("migration %d", i+1), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.errf("migrate", err)
	}
	return nil
}

// q rewrites ? placeholders to PostgreSQL's $n.
func (s *SQLStore) q(query string) string {
	if s.d != postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (s *SQLStore) errf(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("keyset store %s: %s: %w", s.where, what, err)
	}
	return fmt.Errorf("keyset store %s: %s: %v: %w", s.where, what, err, core.ErrUnavailable)
}

func (s *SQLStore) malformed(format string, args ...any) error {
	return fmt.Errorf("keyset store %s: keyset %q: %s: %w", s.where, s.keyset, fmt.Sprintf(format, args...), core.ErrMalformed)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Load reads the keyset and validates it as core.ParseKeyset does.
func (s *SQLStore) Load(ctx context.Context) (*core.Keyset, error) {
	return s.load(ctx, s.db)
}

func (s *SQLStore) load(ctx context.Context, q querier) (*core.Keyset, error) {
	var format int64
	err := q.QueryRowContext(ctx, s.q(`SELECT format FROM keyctl_keysets WHERE name = ?`), s.keyset).Scan(&format)
	if errors.Is(err, sql.ErrNoRows) {
		return core.NewKeyset(), nil
	}
	if err != nil {
		return nil, s.errf("load", err)
	}
	if format != core.KeysetFormatV1 {
		return nil, fmt.Errorf("keyset store %s: keyset %q: format %d (this build reads %d): %w", s.where, s.keyset, format, core.KeysetFormatV1, core.ErrUnsupportedVersion)
	}
	ks := core.NewKeyset()
	ks.DEKs, err = s.entries(ctx, q, `SELECT id, state, created, wrapped FROM keyctl_deks WHERE keyset = ? ORDER BY seq, id`, s.keyset)
	if err != nil {
		return nil, err
	}
	if err := ks.Validate(); err != nil {
		return nil, fmt.Errorf("keyset store %s: keyset %q: %w", s.where, s.keyset, err)
	}
	return ks, nil
}

func (s *SQLStore) entries(ctx context.Context, q querier, query string, args ...any) ([]core.KeysetEntry, error) {
	rows, err := q.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, s.errf("load", err)
	}
	defer rows.Close()
	var out []core.KeysetEntry
	for rows.Next() {
		if len(out) >= core.MaxKeysetDEKs {
			return nil, s.malformed("more than %d DEKs", core.MaxKeysetDEKs)
		}
		var (
			id                      int64
			state, created, wrapped string
		)
		if err := rows.Scan(&id, &state, &created, &wrapped); err != nil {
			return nil, s.malformed("%v", err)
		}
		e, err := s.entry(id, state, created, wrapped)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.errf("load", err)
	}
	return out, nil
}

func (s *SQLStore) entry(id int64, state, created, wrapped string) (core.KeysetEntry, error) {
	if id <= 0 || id > math.MaxUint32 {
		return core.KeysetEntry{}, s.malformed("DEK id %d out of range", id)
	}
	e := core.KeysetEntry{ID: uint32(id), State: core.DEKState(state)}
	if !e.State.Valid() {
		return core.KeysetEntry{}, s.malformed("DEK %08x: unknown state %q", id, state)
	}
	t, err := time.Parse(time.RFC3339Nano, created)
	if err != nil {
		return core.KeysetEntry{}, s.malformed("DEK %08x: creation time %q", id, created)
	}
	e.Created = t
	wk := new(core.WrappedKey)
	if err := wk.UnmarshalText([]byte(wrapped)); err != nil {
		return core.KeysetEntry{}, fmt.Errorf("keyset store %s: keyset %q: DEK %08x: %w", s.where, s.keyset, id, err)
	}
	e.Wrapped = wk
	return e, nil
}

// lockKeyset, inside tx, makes sure the keyset row exists and locks it:
// exclusively for Update, shared for SwapWrapped (PostgreSQL; SQLite's
// immediate transaction already holds the database's write lock).
func (s *SQLStore) lockKeyset(ctx context.Context, tx *sql.Tx, exclusive bool) (exists bool, err error) {
	lock := ""
	if s.d == postgres {
		lock = " FOR SHARE"
		if exclusive {
			lock = " FOR UPDATE"
		}
	}
	var format int64
	err = tx.QueryRowContext(ctx, s.q(`SELECT format FROM keyctl_keysets WHERE name = ?`+lock), s.keyset).Scan(&format)
	if errors.Is(err, sql.ErrNoRows) {
		if !exclusive {
			return false, nil
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO keyctl_keysets (name, format) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`), s.keyset, core.KeysetFormatV1); err != nil {
			return false, s.errf("update", err)
		}
		err = tx.QueryRowContext(ctx, s.q(`SELECT format FROM keyctl_keysets WHERE name = ?`+lock), s.keyset).Scan(&format)
	}
	if err != nil {
		return false, s.errf("update: lock", err)
	}
	return true, nil
}

// Update runs fn on the keyset inside one transaction holding the keyset's
// exclusive lock, and writes back the rows that changed.
func (s *SQLStore) Update(ctx context.Context, fn func(*core.Keyset) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.errf("update", err)
	}
	defer tx.Rollback()
	if _, err := s.lockKeyset(ctx, tx, true); err != nil {
		return err
	}
	ks, err := s.load(ctx, tx)
	if err != nil {
		return err
	}
	old := make(map[uint32]core.KeysetEntry, len(ks.DEKs))
	for _, e := range ks.DEKs {
		e.Wrapped = e.Wrapped.Clone()
		old[e.ID] = e
	}
	if err := fn(ks); err != nil {
		return err
	}
	if ks.Format != core.KeysetFormatV1 {
		return fmt.Errorf("keyset store %s: format %d: %w", s.where, ks.Format, core.ErrUnsupportedVersion)
	}
	if err := ks.Validate(); err != nil {
		return err
	}
	for i, e := range ks.DEKs {
		wrapped, err := e.Wrapped.MarshalText()
		if err != nil {
			return err
		}
		created := e.Created.UTC().Format(time.RFC3339Nano)
		o, had := old[e.ID]
		delete(old, e.ID)
		if had && o.State == e.State && o.Created.Equal(e.Created) && core.SameWrappedKey(o.Wrapped, e.Wrapped) {
			// seq may still have changed if fn reordered; keep it current.
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE keyctl_deks SET seq = ? WHERE keyset = ? AND id = ? AND seq <> ?`), i, s.keyset, int64(e.ID), i); err != nil {
				return s.errf("update", err)
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO keyctl_deks (keyset, id, seq, state, created, wrapped) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (keyset, id) DO UPDATE SET seq = excluded.seq, state = excluded.state, created = excluded.created, wrapped = excluded.wrapped`),
			s.keyset, int64(e.ID), i, string(e.State), created, string(wrapped)); err != nil {
			return s.errf(fmt.Sprintf("update DEK %08x", e.ID), err)
		}
	}
	for id := range old {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM keyctl_deks WHERE keyset = ? AND id = ?`), s.keyset, int64(id)); err != nil {
			return s.errf(fmt.Sprintf("delete DEK %08x", id), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return s.errf("update: commit", err)
	}
	return nil
}

// Entries returns a page of entries in ascending id order, each validated.
func (s *SQLStore) Entries(ctx context.Context, after uint32, limit int) ([]core.KeysetEntry, error) {
	if limit <= 0 || limit > core.MaxKeysetDEKs {
		limit = core.MaxKeysetDEKs
	}
	return s.entries(ctx, s.db, `SELECT id, state, created, wrapped FROM keyctl_deks WHERE keyset = ? AND id > ? ORDER BY id LIMIT ?`, s.keyset, int64(after), limit)
}

// CountEntries returns the number of DEKs in the keyset (core.EntryCounter).
func (s *SQLStore) CountEntries(ctx context.Context) (int, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT count(*) FROM keyctl_deks WHERE keyset = ?`), s.keyset).Scan(&n); err != nil {
		return 0, s.errf("count", err)
	}
	return int(n), nil
}

// SwapWrapped is one conditional UPDATE of DEK id's row, in a transaction
// that holds the keyset row's shared lock (so it does not interleave with an
// Update).
func (s *SQLStore) SwapWrapped(ctx context.Context, id uint32, prev, next *core.WrappedKey) error {
	res, err := s.SwapAll(ctx, []core.WrappedSwap{{ID: id, Prev: prev, Next: next}})
	if err != nil {
		return err
	}
	return res[0]
}

// SwapAll runs one conditional UPDATE per swap in one transaction that holds
// the keyset row's shared lock.
func (s *SQLStore) SwapAll(ctx context.Context, swaps []core.WrappedSwap) ([]error, error) {
	results := make([]error, len(swaps))
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, s.errf("swap", err)
	}
	defer tx.Rollback()
	exists, err := s.lockKeyset(ctx, tx, false)
	if err != nil {
		return nil, err
	}
	upd, err := tx.PrepareContext(ctx, s.q(`UPDATE keyctl_deks SET wrapped = ? WHERE keyset = ? AND id = ? AND wrapped = ?`))
	if err != nil {
		return nil, s.errf("swap", err)
	}
	defer upd.Close()
	// PostgreSQL: one statement for the whole batch (a round trip per row
	// would dominate); the rows it did not swap are checked one by one
	// below, to tell a changed DEK from a missing one.
	var done, tried map[int]bool
	if s.d == postgres && exists {
		if done, tried, err = s.swapBatchPostgres(ctx, tx, swaps); err != nil {
			return nil, err
		}
	}
	for i, w := range swaps {
		if done[i] {
			continue
		}
		// A swap the batch tried and did not make needs only the check.
		results[i], err = s.swapOne(ctx, tx, upd, exists && !tried[i], w)
		if err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, s.errf("swap: commit", err)
	}
	return results, nil
}

// swapBatchPostgres swaps, in one UPDATE ... FROM unnest(...), every swap of
// the batch whose DEK still holds Prev, and returns the indexes it swapped.
// Swaps it cannot marshal, and an id's second swap in the batch, are left
// to swapOne; tried holds the indexes the statement tried.
func (s *SQLStore) swapBatchPostgres(ctx context.Context, tx *sql.Tx, swaps []core.WrappedSwap) (done, tried map[int]bool, err error) {
	tried = make(map[int]bool, len(swaps))
	ids := make([]int64, 0, len(swaps))
	prevs := make([]string, 0, len(swaps))
	nexts := make([]string, 0, len(swaps))
	index := make(map[int64]int, len(swaps))
	for i, w := range swaps {
		if w.Prev == nil || w.Next == nil {
			continue
		}
		if _, dup := index[int64(w.ID)]; dup {
			continue
		}
		pt, err1 := w.Prev.MarshalText()
		nt, err2 := w.Next.MarshalText()
		if err1 != nil || err2 != nil {
			continue
		}
		index[int64(w.ID)] = i
		tried[i] = true
		ids = append(ids, int64(w.ID))
		prevs = append(prevs, string(pt))
		nexts = append(nexts, string(nt))
	}
	done = make(map[int]bool, len(ids))
	if len(ids) == 0 {
		return done, tried, nil
	}
	rows, err := tx.QueryContext(ctx, `UPDATE keyctl_deks AS d SET wrapped = u.next
		FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, prev, next)
		WHERE d.keyset = $4 AND d.id = u.id AND d.wrapped = u.prev
		RETURNING d.id`, ids, prevs, nexts, s.keyset)
	if err != nil {
		return nil, nil, s.errf("swap", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, nil, s.errf("swap", err)
		}
		if i, ok := index[id]; ok {
			done[i] = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, s.errf("swap", err)
	}
	return done, tried, nil
}

// swapOne returns the swap's own outcome, or err if the store failed.
func (s *SQLStore) swapOne(ctx context.Context, tx *sql.Tx, upd *sql.Stmt, exists bool, w core.WrappedSwap) (result, err error) {
	id := w.ID
	if w.Next == nil {
		return fmt.Errorf("keyset: DEK %08x: no new wrapped key: %w", id, core.ErrMalformed), nil
	}
	nt, err := w.Next.MarshalText()
	if err != nil {
		return fmt.Errorf("keyset: DEK %08x: new wrapped key: %w", id, err), nil
	}
	var pt []byte
	if w.Prev != nil {
		if pt, err = w.Prev.MarshalText(); err != nil {
			return fmt.Errorf("keyset: DEK %08x: previous wrapped key: %w", id, err), nil
		}
	}
	if exists && pt != nil {
		res, err := upd.ExecContext(ctx, string(nt), s.keyset, int64(id), string(pt))
		if err != nil {
			return nil, s.errf(fmt.Sprintf("swap DEK %08x", id), err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, s.errf(fmt.Sprintf("swap DEK %08x", id), err)
		}
		if n == 1 {
			return nil, nil
		}
	}
	var one int
	err = tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM keyctl_deks WHERE keyset = ? AND id = ?`), s.keyset, int64(id)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("keyset: no DEK %08x: %w", id, core.ErrKeyNotFound), nil
	}
	if err != nil {
		return nil, s.errf(fmt.Sprintf("swap DEK %08x", id), err)
	}
	return fmt.Errorf("keyset: DEK %08x: its wrapped key is no longer the one read: %w", id, core.ErrConflict), nil
}
