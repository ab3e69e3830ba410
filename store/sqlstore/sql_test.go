package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store/sqlstore"
	"github.com/keyctl/keyctl/store/storetest"
)

// sqlCorrupt returns a Backend.Corrupt that edits the rows through db.
func sqlCorrupt(db func(t *testing.T) *sql.DB) func(t *testing.T, kind string) {
	return func(t *testing.T, kind string) {
		q := map[string]string{
			"garbage-wrapped": `UPDATE keyctl_deks SET wrapped = 'keyctl-wk1:!!!'`,
			"two-primaries":   `UPDATE keyctl_deks SET state = 'primary'`,
			"bad-state":       `UPDATE keyctl_deks SET state = 'bogus'`,
			"zero-id":         `UPDATE keyctl_deks SET id = 0 WHERE state = 'primary'`,
		}[kind]
		if q == "" {
			t.Fatalf("unknown corruption %q", kind)
		}
		if _, err := db(t).ExecContext(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		path := filepath.Join(t.TempDir(), "keyset.db")
		return storetest.Backend{
			Open: func(t *testing.T) core.KeysetStore {
				s, err := sqlstore.OpenSQLite(t.Context(), path, sqlstore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			},
			Corrupt: sqlCorrupt(func(t *testing.T) *sql.DB { return rawSQLite(t, path) }),
		}
	})
}

func rawSQLite(t *testing.T, path string) *sql.DB {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(30000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestSQLiteMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyset.db")
	testMigrations(t, func(ctx context.Context) (*sqlstore.SQLStore, error) {
		return sqlstore.OpenSQLite(ctx, path, sqlstore.Options{})
	}, rawSQLite(t, path))
}

func TestSQLiteNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyset.db")
	if err := os.WriteFile(path, []byte("this is not a SQLite database, it is a text file of some length\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := sqlstore.OpenSQLite(t.Context(), path, sqlstore.Options{}); err == nil {
		s.Close()
		t.Fatal("opened a text file as a SQLite store")
	}
}

// testMigrations: migration from empty, re-run idempotent (also from
// concurrent openers), and a newer schema refused.
func testMigrations(t *testing.T, open func(ctx context.Context) (*sqlstore.SQLStore, error), raw *sql.DB) {
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 4 {
		wg.Go(func() {
			s, err := open(t.Context())
			if err != nil {
				failed.Store(err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("concurrent first opens: %v", err)
	}
	for range 2 {
		s, err := open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.SchemaVersion(t.Context())
		s.Close()
		if err != nil || v != 2 {
			t.Fatalf("schema version %d, %v; want 2", v, err)
		}
	}
	var rows int
	if err := raw.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM keyctl_schema_version`).Scan(&rows); err != nil || rows != 2 {
		t.Fatalf("%d schema_version rows (%v), want 2", rows, err)
	}
	if _, err := raw.ExecContext(t.Context(), `INSERT INTO keyctl_schema_version (version, applied) VALUES (99, 'future')`); err != nil {
		t.Fatal(err)
	}
	if s, err := open(t.Context()); !errors.Is(err, core.ErrUnsupportedVersion) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("open of a newer schema: %v, want ErrUnsupportedVersion", err)
	}
}

func TestPostgres(t *testing.T) {
	base := startPostgres(t)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	var n atomic.Int64
	// Each backend is a fresh schema, named in the connection's search_path.
	fresh := func(t *testing.T) string {
		schema := fmt.Sprintf("keyctl_test_%d_%d", os.Getpid(), n.Add(1))
		if _, err := admin.ExecContext(t.Context(), `CREATE SCHEMA `+schema); err != nil {
			t.Fatal(err)
		}
		return withParam(base, "search_path", schema)
	}
	rawDB := func(t *testing.T, url string) *sql.DB {
		db, err := sql.Open("pgx", url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) storetest.Backend {
			url := fresh(t)
			return storetest.Backend{
				Open: func(t *testing.T) core.KeysetStore {
					s, err := sqlstore.OpenPostgres(t.Context(), url, sqlstore.Options{})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { s.Close() })
					return s
				},
				Corrupt: sqlCorrupt(func(t *testing.T) *sql.DB { return rawDB(t, url) }),
			}
		})
	})
	t.Run("Migrations", func(t *testing.T) {
		url := fresh(t)
		testMigrations(t, func(ctx context.Context) (*sqlstore.SQLStore, error) {
			return sqlstore.OpenPostgres(ctx, url, sqlstore.Options{})
		}, rawDB(t, url))
	})
	t.Run("TwoKeysetsOneDatabase", func(t *testing.T) {
		url := fresh(t)
		a, err := sqlstore.OpenPostgres(t.Context(), url, sqlstore.Options{Keyset: "a"})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := sqlstore.OpenPostgres(t.Context(), url, sqlstore.Options{Keyset: "b"})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if err := a.Update(t.Context(), func(ks *core.Keyset) error {
			ks.DEKs = []core.KeysetEntry{{ID: 1, State: core.StatePrimary, Wrapped: &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "k", Algorithm: core.AlgAES256GCM, Data: []byte("x")}}}}}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		ks, err := b.Load(t.Context())
		if err != nil || len(ks.DEKs) != 0 {
			t.Fatalf("keyset b sees %v, %v", ks, err)
		}
	})
}

func TestSQLiteFileMode(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "new.db")
	s, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new database mode %04o, want 0600", fi.Mode().Perm())
	}
	if err := os.Chmod(path, 0o664); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Options{}); !errors.Is(err, core.ErrPermission) {
		t.Errorf("group-writable database: %v, want ErrPermission", err)
	}
	if _, err := sqlstore.OpenSQLite(ctx, dir, sqlstore.Options{}); err == nil {
		t.Error("a directory opened as a database")
	}
}

// TestSQLiteMigrationFromV1: a database written by schema 1 (DEK rows in a
// rowid table) opens at schema 2 with every DEK unchanged, in a WITHOUT
// ROWID table.
func TestSQLiteMigrationFromV1(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "v1.db")
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	ks := core.NewKeyset()
	for i := range 5 {
		wk := &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "mem", KeyID: "k", KeyVersion: fmt.Sprint(i), Algorithm: core.Algorithm(1), Data: []byte{byte(i), 1, 2, 3}}}}
		state := core.StateDecryptOnly
		if i == 4 {
			state = core.StatePrimary
		}
		ks.DEKs = append(ks.DEKs, core.KeysetEntry{ID: uint32(1000 - i), State: state, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Wrapped: wk})
	}
	for _, stmt := range []string{
		`CREATE TABLE keyctl_schema_version (version INTEGER NOT NULL PRIMARY KEY, applied TEXT NOT NULL)`,
		`INSERT INTO keyctl_schema_version VALUES (1, '2026-01-01T00:00:00Z')`,
		`CREATE TABLE keyctl_keysets (name TEXT NOT NULL PRIMARY KEY, format INTEGER NOT NULL)`,
		`CREATE TABLE keyctl_deks (keyset TEXT NOT NULL REFERENCES keyctl_keysets(name), id BIGINT NOT NULL, seq BIGINT NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL, wrapped TEXT NOT NULL, PRIMARY KEY (keyset, id))`,
		`INSERT INTO keyctl_keysets VALUES ('default', 1)`,
	} {
		if _, err := raw.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	for i, e := range ks.DEKs {
		text, _ := e.Wrapped.MarshalText()
		if _, err := raw.ExecContext(ctx, `INSERT INTO keyctl_deks VALUES ('default', ?, ?, ?, ?, ?)`,
			int64(e.ID), i, string(e.State), e.Created.Format(time.RFC3339Nano), string(text)); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}

	s, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v != 2 {
		t.Fatalf("schema version %d, %v; want 2", v, err)
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.DEKs) != len(ks.DEKs) {
		t.Fatalf("%d DEKs after migration, want %d", len(got.DEKs), len(ks.DEKs))
	}
	for i, e := range ks.DEKs {
		g := got.DEKs[i]
		if g.ID != e.ID || g.State != e.State || !g.Created.Equal(e.Created) || !core.SameWrappedKey(g.Wrapped, e.Wrapped) {
			t.Fatalf("DEK %d changed in the migration: %+v, want %+v", i, g, e)
		}
	}
	raw, err = sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var ddl string
	if err := raw.QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE name = 'keyctl_deks'`).Scan(&ddl); err != nil || !strings.Contains(ddl, "WITHOUT ROWID") {
		t.Fatalf("keyctl_deks after migration: %q, %v", ddl, err)
	}
}
