package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store/sqlstore"
	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Default keyset names, as stored by store/sqlstore in the service's
// database.
const (
	DefaultEmailKeyset = "users-email"
	DefaultIndexKeyset = "users-email-index"
)

// The blind-index column names. A rotation fills the one that is not in
// use, then switches to it and drops the other, so the two names alternate.
var indexColumns = []string{"email_idx", "email_idx2"}

// Blind-index column states, as recorded in table users_blind_index.
const (
	// IndexActive: lookups read this column; inserts write it. Exactly one
	// column is active.
	IndexActive = "active"
	// IndexFilling: a rotation added this column; inserts write it, the
	// backfill fills the older rows, lookups do not read it yet.
	IndexFilling = "filling"
	// IndexRetiring: the column the rotation switched away from; inserts
	// still write it (for instances not yet reloaded, which still read it)
	// until the rotation finishes and drops it.
	IndexRetiring = "retiring"
)

// Errors of the service.
var (
	// ErrDuplicate reports an e-mail address that is already stored.
	ErrDuplicate = errors.New("e-mail address already registered")
	// ErrNotFound reports a user id or e-mail address that is not stored.
	ErrNotFound = errors.New("user not found")
	// ErrReloadNeeded reports that the blind-index configuration in the
	// database changed (a rotation step ran) and this instance has not
	// loaded it yet: it refuses to write rather than leave the active
	// column empty. Reload (SIGHUP) fixes it.
	ErrReloadNeeded = errors.New("blind-index configuration changed; reload this instance")
	// ErrIndexMismatch reports a row whose blind index does not match its
	// decrypted e-mail: the index column was altered (the index, unlike the
	// e-mail ciphertext, is not authenticated).
	ErrIndexMismatch = errors.New("blind index does not match the stored e-mail")
)

// Config says where the service keeps its data and which vault opens its
// keys.
type Config struct {
	// DBPath is the SQLite database holding the users table and both
	// keysets.
	DBPath string
	// Ring opens the keysets' wrapped DEKs. Open calls it once per DEK
	// (and Reload again); requests never do.
	Ring *core.Keyring
	// EmailKeyset names the keyset of the e-mail DEKs; DefaultEmailKeyset
	// if empty.
	EmailKeyset string
	// IndexKeyset names the keyset of the blind-index keys;
	// DefaultIndexKeyset if empty. It must differ from EmailKeyset.
	IndexKeyset string
	// Logger receives the service's log; nil discards it. No e-mail
	// address, DEK or key is ever logged.
	Logger *slog.Logger
}

func (c *Config) fill() error {
	if c.DBPath == "" || strings.ContainsAny(c.DBPath, "?#") {
		return fmt.Errorf("database path %q: empty or contains '?' or '#'", c.DBPath)
	}
	if c.Ring == nil {
		return errors.New("no keyring")
	}
	if c.EmailKeyset == "" {
		c.EmailKeyset = DefaultEmailKeyset
	}
	if c.IndexKeyset == "" {
		c.IndexKeyset = DefaultIndexKeyset
	}
	if c.EmailKeyset == c.IndexKeyset {
		return fmt.Errorf("the e-mail and blind-index keysets must differ (both %q)", c.EmailKeyset)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Service stores users' e-mail addresses encrypted, field by field, with
// DEKs unwrapped once when it opens. It is safe for concurrent use.
type Service struct {
	cfg        Config
	db         *sql.DB
	emailStore *sqlstore.SQLStore
	indexStore *sqlstore.SQLStore
	log        *slog.Logger
	keys       atomic.Pointer[keys]

	// Test hooks (nil outside tests): between FinishIndexRotation's
	// commit and its keyset update; after BeginIndexRotation added its DEK.
	hookFinishCommitted, hookBeginDEKAdded func()
}

// keys is what one (re)load unwrapped: immutable once stored.
type keys struct {
	fields *core.FieldCipher
	index  map[string]*IndexKey // by column name
	active string               // the column lookups read
}

// schema is the users table and the table that records which index DEK
// each blind-index column is computed under. AUTOINCREMENT: ids are never
// reused, so a deleted user's ciphertext (bound to its id) can never decrypt
// as a later user's.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS users (
		id        INTEGER PRIMARY KEY AUTOINCREMENT,
		email     BLOB NOT NULL,
		email_idx BLOB,
		created   TEXT NOT NULL
	)`,
	`CREATE UNIQUE INDEX IF NOT EXISTS users_email_idx_key ON users (email_idx)`,
	`CREATE TABLE IF NOT EXISTS users_blind_index (
		name   TEXT    NOT NULL PRIMARY KEY,
		dek_id INTEGER NOT NULL,
		state  TEXT    NOT NULL CHECK (state IN ('active', 'filling', 'retiring'))
	)`,
}

func openDB(path string) (*sql.DB, error) {
	dsn := "file:" + path + "?_txlock=immediate&_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return db, nil
}

// Init prepares a database: it creates each keyset's first DEK (wrapped by
// cfg.Ring's primary provider) if the keyset is empty, the users table, and
// records the index keyset's primary DEK as the key of column email_idx.
// Running it again changes nothing.
func Init(ctx context.Context, cfg Config) error {
	if err := cfg.fill(); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for _, name := range []string{cfg.EmailKeyset, cfg.IndexKeyset} {
		st, err := sqlstore.OpenSQLite(ctx, cfg.DBPath, sqlstore.Options{Keyset: name})
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		err = st.Update(ctx, func(ks *core.Keyset) error {
			if len(ks.DEKs) > 0 {
				return nil
			}
			_, err := ks.AddDEK(ctx, cfg.Ring, time.Now())
			return err
		})
		st.Close()
		if err != nil {
			return fmt.Errorf("init: keyset %q: %w", name, err)
		}
	}
	idx, err := sqlstore.OpenSQLite(ctx, cfg.DBPath, sqlstore.Options{Keyset: cfg.IndexKeyset})
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer idx.Close()
	iks, err := idx.Load(ctx)
	if err != nil {
		return fmt.Errorf("init: keyset %q: %w", cfg.IndexKeyset, err)
	}
	primary, err := iks.Primary()
	if err != nil {
		return fmt.Errorf("init: keyset %q: %w", cfg.IndexKeyset, err)
	}
	db, err := openDB(cfg.DBPath)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer tx.Rollback()
	for _, q := range schema {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("init: create schema: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO users_blind_index (name, dek_id, state)
		SELECT 'email_idx', ?, 'active' WHERE NOT EXISTS (SELECT 1 FROM users_blind_index)`, int64(primary.ID)); err != nil {
		return fmt.Errorf("init: record the blind-index key: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return nil
}

// Open opens an initialised database (see Init) and loads the keys: one
// unwrap per live e-mail DEK and one per blind-index column. After that no
// request calls the vault.
func Open(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.fill(); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	s := &Service{cfg: cfg, log: cfg.Logger}
	var err error
	if s.emailStore, err = sqlstore.OpenSQLite(ctx, cfg.DBPath, sqlstore.Options{Keyset: cfg.EmailKeyset}); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	if s.indexStore, err = sqlstore.OpenSQLite(ctx, cfg.DBPath, sqlstore.Options{Keyset: cfg.IndexKeyset}); err != nil {
		s.Close()
		return nil, fmt.Errorf("open: %w", err)
	}
	if s.db, err = openDB(cfg.DBPath); err != nil {
		s.Close()
		return nil, fmt.Errorf("open: %w", err)
	}
	if err := s.Reload(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open: %w", err)
	}
	return s, nil
}

// Close closes the database and zeroes the blind-index keys. Call it after
// the HTTP server has shut down.
func (s *Service) Close() error {
	var errs []error
	if s.db != nil {
		errs = append(errs, s.db.Close())
	}
	for _, st := range []*sqlstore.SQLStore{s.emailStore, s.indexStore} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if k := s.keys.Swap(nil); k != nil {
		for _, ik := range k.index {
			ik.zero()
		}
	}
	return errors.Join(errs...)
}

// indexColumn is one row of users_blind_index.
type indexColumn struct {
	name  string
	dekID uint32
	state string
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// readIndexColumns reads users_blind_index and checks it: known column
// names, known states, exactly one active column.
func readIndexColumns(ctx context.Context, q querier) ([]indexColumn, error) {
	rows, err := q.QueryContext(ctx, `SELECT name, dek_id, state FROM users_blind_index ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("read blind-index columns (was the database initialised with -init?): %w", err)
	}
	defer rows.Close()
	var out []indexColumn
	active := 0
	for rows.Next() {
		var c indexColumn
		var id int64
		if err := rows.Scan(&c.name, &id, &c.state); err != nil {
			return nil, fmt.Errorf("read blind-index columns: %w", err)
		}
		if !slices.Contains(indexColumns, c.name) {
			return nil, fmt.Errorf("blind-index column %q is not one of %v", c.name, indexColumns)
		}
		if id <= 0 || id > 1<<32-1 {
			return nil, fmt.Errorf("blind-index column %s: DEK id %d out of range", c.name, id)
		}
		c.dekID = uint32(id)
		switch c.state {
		case IndexActive:
			active++
		case IndexFilling, IndexRetiring:
		default:
			return nil, fmt.Errorf("blind-index column %s: unknown state %q", c.name, c.state)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read blind-index columns: %w", err)
	}
	if active != 1 {
		return nil, fmt.Errorf("blind-index columns: %d active, want exactly 1 (was the database initialised with -init?)", active)
	}
	return out, nil
}

// Reload reads both keysets and the blind-index configuration again and
// unwraps their keys: one vault call per live e-mail DEK and one per
// blind-index column. Run it on every instance after each step of a
// blind-index rotation, and after an e-mail DEK rotation. Requests in flight
// finish with the keys they started with.
func (s *Service) Reload(ctx context.Context) error {
	eks, err := s.emailStore.Load(ctx)
	if err != nil {
		return fmt.Errorf("load keyset %q: %w", s.cfg.EmailKeyset, err)
	}
	if len(eks.DEKs) == 0 {
		return fmt.Errorf("keyset %q is empty (was the database initialised with -init?): %w", s.cfg.EmailKeyset, core.ErrKeyNotFound)
	}
	fields, err := eks.OpenFieldCipher(ctx, s.cfg.Ring)
	if err != nil {
		return fmt.Errorf("keyset %q: %w", s.cfg.EmailKeyset, err)
	}
	for id, err := range fields.Unavailable() {
		s.log.Warn("e-mail DEK could not be unwrapped; values under it will not decrypt", "keyset", s.cfg.EmailKeyset, "dek", fmt.Sprintf("%08x", id), "err", err)
	}
	iks, err := s.indexStore.Load(ctx)
	if err != nil {
		return fmt.Errorf("load keyset %q: %w", s.cfg.IndexKeyset, err)
	}
	cols, err := readIndexColumns(ctx, s.db)
	if err != nil {
		return err
	}
	k := &keys{fields: fields, index: map[string]*IndexKey{}}
	var desc []string
	for _, c := range cols {
		desc = append(desc, fmt.Sprintf("%s:%s:%08x", c.name, c.state, c.dekID))
		ik, err := unwrapIndexKey(ctx, s.cfg.Ring, iks, c.dekID)
		if err != nil {
			for _, o := range k.index {
				o.zero()
			}
			return fmt.Errorf("keyset %q: blind-index column %s: %w", s.cfg.IndexKeyset, c.name, err)
		}
		k.index[c.name] = ik
		if c.state == IndexActive {
			k.active = c.name
		}
	}
	s.keys.Store(k) // the old keys are left to the GC: requests may still use them
	s.log.Info("keys loaded", "email_keyset", s.cfg.EmailKeyset, "email_primary_dek", fmt.Sprintf("%08x", fields.PrimaryID()),
		"index_keyset", s.cfg.IndexKeyset, "index_columns", strings.Join(desc, ","))
	return nil
}

// unwrapIndexKey unwraps DEK id of the index keyset once and derives its
// HMAC key; the DEK is zeroed before it returns.
func unwrapIndexKey(ctx context.Context, ring *core.Keyring, ks *core.Keyset, id uint32) (*IndexKey, error) {
	e, err := ks.Entry(id)
	if err != nil {
		return nil, err
	}
	if e.State == core.StateRetired {
		return nil, fmt.Errorf("DEK %08x is retired: %w", id, core.ErrKeyDisabled)
	}
	dek, err := ring.Unwrap(ctx, e.Wrapped, e.Context())
	if err != nil {
		return nil, fmt.Errorf("DEK %08x: %w", id, err)
	}
	defer dek.Zero()
	return deriveIndexKey(id, dek)
}

// emailAD is the associated data bound to the ciphertext in users.email of
// row id: core.FieldAD, "users.email:<id in decimal>". The table and column
// names are constant identifiers and the id is decimal, so the encoding is
// unambiguous; a ciphertext moved to another row or column does not
// decrypt. It is core.DefaultADFormat, the format the re-encryption engine
// uses unless told otherwise.
func emailAD(id int64) []byte { return core.FieldAD("users", "email", id) }

// User is one stored user, decrypted.
type User struct {
	ID    int64  `json:"id"`
	Email string `json:"email"`
}

// Create stores a new user. email is validated and trimmed; the trimmed
// address (case kept) is encrypted, and the blind index of its normalised
// form is written to every index column this instance has a key for. The
// row is inserted and then updated with the ciphertext in one transaction,
// so the ciphertext can be bound to the row id and no reader ever sees the
// placeholder. Errors wrap ErrBadEmail, ErrDuplicate or ErrReloadNeeded.
func (s *Service) Create(ctx context.Context, email string) (int64, error) {
	trimmed, err := trimEmail(email)
	if err != nil {
		return 0, err
	}
	norm, _ := NormalizeEmail(trimmed)
	k := s.keys.Load()
	if k == nil {
		return 0, errors.New("service closed")
	}
	sums := make(map[string][]byte, len(k.index))
	for name, ik := range k.index {
		sums[name] = ik.Sum(norm)
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("create user: %w", err)
	}
	defer tx.Rollback()
	// Read the index configuration inside the write transaction, so that
	// a rotation step cannot slip in between (it needs the same lock).
	cols, err := readIndexColumns(ctx, tx)
	if err != nil {
		return 0, fmt.Errorf("create user: %w", err)
	}
	names := []string{"email", "created"}
	args := []any{[]byte{}, time.Now().UTC().Format(time.RFC3339)}
	for _, c := range cols {
		ik := k.index[c.name]
		if ik == nil || ik.dekID != c.dekID {
			if c.state == IndexActive {
				return 0, fmt.Errorf("create user: column %s: %w", c.name, ErrReloadNeeded)
			}
			continue // a filling column: the backfill fills it
		}
		names = append(names, c.name) // from the allow-list indexColumns
		args = append(args, sums[c.name])
	}
	q := "INSERT INTO users (" + strings.Join(names, ", ") + ") VALUES (?" + strings.Repeat(", ?", len(names)-1) + ")"
	res, err := tx.ExecContext(ctx, q, args...)
	if err != nil {
		if uniqueViolation(err) {
			return 0, ErrDuplicate
		}
		return 0, fmt.Errorf("create user: insert: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("create user: %w", err)
	}
	ct, err := k.fields.Encrypt([]byte(trimmed), emailAD(id))
	if err != nil {
		return 0, fmt.Errorf("create user %d: %w", id, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE users SET email = ? WHERE id = ?`, ct, id); err != nil {
		return 0, fmt.Errorf("create user %d: store e-mail: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("create user %d: commit: %w", id, err)
	}
	return id, nil
}

func uniqueViolation(err error) bool {
	var se *msqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
}

// Get returns user id, decrypted. Errors wrap ErrNotFound, or the core
// error of a ciphertext that does not decrypt (core.ErrDecryptFailed for one
// moved from another row).
func (s *Service) Get(ctx context.Context, id int64) (User, error) {
	var ct []byte
	err := s.db.QueryRowContext(ctx, `SELECT email FROM users WHERE id = ?`, id).Scan(&ct)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrNotFound
	}
	if err != nil {
		return User{}, fmt.Errorf("get user %d: %w", id, err)
	}
	return s.decrypt(id, ct)
}

func (s *Service) decrypt(id int64, ct []byte) (User, error) {
	k := s.keys.Load()
	if k == nil {
		return User{}, errors.New("service closed")
	}
	pt, err := k.fields.Decrypt(ct, emailAD(id))
	if err != nil {
		return User{}, fmt.Errorf("user %d: e-mail: %w", id, err)
	}
	return User{ID: id, Email: string(pt)}, nil
}

// Lookup finds the user whose e-mail normalises to the same address as
// email, through the active blind-index column: one indexed equality query,
// no decryption of other rows. The row found is decrypted and checked
// against the query, so an altered index column gives ErrIndexMismatch, not
// another user. Errors wrap ErrBadEmail, ErrNotFound or ErrIndexMismatch.
func (s *Service) Lookup(ctx context.Context, email string) (User, error) {
	norm, err := NormalizeEmail(email)
	if err != nil {
		return User{}, err
	}
	k := s.keys.Load()
	if k == nil {
		return User{}, errors.New("service closed")
	}
	var (
		id int64
		ct []byte
	)
	// k.active is one of indexColumns (checked by readIndexColumns).
	err = s.db.QueryRowContext(ctx, `SELECT id, email FROM users WHERE `+k.active+` = ?`, k.index[k.active].Sum(norm)).Scan(&id, &ct)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrNotFound
	}
	if err != nil {
		return User{}, fmt.Errorf("lookup by %s: %w", k.active, err)
	}
	u, err := s.decrypt(id, ct)
	if err != nil {
		return User{}, err
	}
	if got, err := NormalizeEmail(u.Email); err != nil || got != norm {
		return User{}, fmt.Errorf("user %d, column %s: %w", id, k.active, ErrIndexMismatch)
	}
	return u, nil
}
