package sqltable_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/pgtest"
	"github.com/keyctl/keyctl/store/sqltable"
)

// openKind opens an empty database of kind: a SQLite file, or a fresh
// PostgreSQL cluster.
func openKind(t *testing.T, kind string) *sqltable.DB {
	t.Helper()
	var db *sqltable.DB
	var err error
	switch kind {
	case "sqlite":
		path := filepath.Join(t.TempDir(), "app.db")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err = sqltable.OpenSQLite(t.Context(), path)
	case "postgres":
		db, err = sqltable.OpenPostgres(t.Context(), pgtest.Start(t))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

var kinds = []string{"sqlite", "postgres"}

// keys is a test keyset of two DEKs as ciphers: old (primary of oldFC) and
// new (primary of newFC, which also opens old).
type keys struct {
	oldFC, newFC *core.FieldCipher
	back         *core.FieldCipher // both DEKs, old primary
	oldID, newID uint32
	ad           *core.ADTemplate
}

func newKeys(t testing.TB, table string) *keys {
	t.Helper()
	a, _ := core.NewDEK()
	b, _ := core.NewDEK()
	k := &keys{oldID: 0xaaaa0001, newID: 0xbbbb0002}
	var err error
	if k.oldFC, err = core.NewFieldCipher(k.oldID, map[uint32]core.DEK{k.oldID: a}); err != nil {
		t.Fatal(err)
	}
	if k.newFC, err = core.NewFieldCipher(k.newID, map[uint32]core.DEK{k.oldID: a, k.newID: b}); err != nil {
		t.Fatal(err)
	}
	if k.back, err = core.NewFieldCipher(k.oldID, map[uint32]core.DEK{k.oldID: a, k.newID: b}); err != nil {
		t.Fatal(err)
	}
	if k.ad, err = core.ParseADTemplate(core.DefaultADFormat, table); err != nil {
		t.Fatal(err)
	}
	return k
}

// fill creates table users (id, email binary, name text) with n rows
// encrypted under fc; every 5th name is NULL.
func fill(t testing.TB, db *sqltable.DB, k *keys, n int) map[int64][2]string {
	t.Helper()
	ctx := context.Background()
	ddl := `CREATE TABLE users (id INTEGER PRIMARY KEY, email BLOB, name TEXT)`
	if db.Postgres() {
		ddl = `CREATE TABLE users (id BIGINT PRIMARY KEY, email BYTEA, name TEXT)`
	}
	if _, err := db.SQL().ExecContext(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	tx, err := db.SQL().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := `INSERT INTO users (id, email, name) VALUES (?1, ?2, ?3)`
	if db.Postgres() {
		q = `INSERT INTO users (id, email, name) VALUES ($1, $2, $3)`
	}
	plain := map[int64][2]string{}
	for i := range n {
		id := int64(i*7 + 1)
		email := fmt.Sprintf("user%d@example.com", i)
		ct, _ := k.oldFC.Encrypt([]byte(email), k.ad.Append(nil, "email", id))
		var name any
		p := [2]string{email, ""}
		if i%5 != 0 {
			p[1] = fmt.Sprintf("Name %d", i)
			nct, _ := k.oldFC.Encrypt([]byte(p[1]), k.ad.Append(nil, "name", id))
			name = core.EncodeFieldText(nct)
		}
		if _, err := tx.ExecContext(ctx, q, id, ct, name); err != nil {
			t.Fatal(err)
		}
		plain[id] = p
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return plain
}

var spec = sqltable.Spec{Table: "users", Key: "id", Columns: []string{"email", "name"}}

// checkAll asserts that every row decrypts to plain and, if want != 0, is
// under want.
func checkAll(t testing.TB, db *sqltable.DB, k *keys, plain map[int64][2]string, want uint32) {
	t.Helper()
	rows, err := db.SQL().Query(`SELECT id, email, name FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id int64
		var email []byte
		var name *string
		if err := rows.Scan(&id, &email, &name); err != nil {
			t.Fatal(err)
		}
		n++
		pt, err := k.newFC.Decrypt(email, k.ad.Append(nil, "email", id))
		if err != nil || string(pt) != plain[id][0] {
			t.Fatalf("row %d email: %q, %v", id, pt, err)
		}
		if got, _ := core.DEKID(email); want != 0 && got != want {
			t.Fatalf("row %d email under %08x", id, got)
		}
		if name == nil {
			if plain[id][1] != "" {
				t.Fatalf("row %d: name NULL", id)
			}
			continue
		}
		ct, err := core.DecodeFieldText(*name)
		if err != nil {
			t.Fatal(err)
		}
		pt, err = k.newFC.Decrypt(ct, k.ad.Append(nil, "name", id))
		if err != nil || string(pt) != plain[id][1] {
			t.Fatalf("row %d name: %q, %v", id, pt, err)
		}
		if got, _ := core.DEKID(ct); want != 0 && got != want {
			t.Fatalf("row %d name under %08x", id, got)
		}
	}
	if n != len(plain) {
		t.Fatalf("%d rows, want %d", n, len(plain))
	}
}

func TestReencryptJob(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			k := newKeys(t, "users")
			plain := fill(t, db, k, 1000)
			tbl, err := db.Table(t.Context(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tbl.OpenJob(t.Context()); !errors.Is(err, sqltable.ErrNoJob) {
				t.Fatalf("OpenJob before any: %v", err)
			}
			job, created, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: k.oldID, ChunkKeys: 3000})
			if err != nil || !created || job.State != sqltable.JobNewDEK {
				t.Fatalf("CreateJob: %+v %v %v", job, created, err)
			}
			again, created, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: k.oldID})
			if err != nil || created || again.ID != job.ID {
				t.Fatalf("second CreateJob: %+v %v %v", again, created, err)
			}
			other := spec
			other.Columns = []string{"email"}
			ot, _ := db.Table(t.Context(), other)
			if _, err := ot.OpenJob(t.Context()); !errors.Is(err, core.ErrFailedPrecondition) {
				t.Fatalf("job on other columns: %v", err)
			}
			if err := job.SetTarget(t.Context(), k.newID); err != nil {
				t.Fatal(err)
			}
			if err := job.SetTarget(t.Context(), k.newID); err != nil {
				t.Fatalf("SetTarget again: %v", err)
			}
			if err := job.SetTarget(t.Context(), 77); !errors.Is(err, core.ErrConflict) {
				t.Fatalf("SetTarget other: %v", err)
			}
			c, err := job.Counts(t.Context())
			if err != nil || c.Total != 3 || c.Pending != 3 {
				t.Fatalf("counts %+v %v", c, err)
			}

			// Dry run and verify before.
			dry, _ := core.NewReencrypter(core.ReencryptOptions{AD: k.ad.Func(), DryRun: true, DryRunTarget: k.newID})
			st, err := dry.Run(t.Context(), tbl.Reader(), core.Cursor{}, nil)
			if err != nil || st.ByDEK["email"][k.oldID] != 1000 || st.ByDEK["name"][k.oldID] != 800 {
				t.Fatalf("dry run %+v %v", st, err)
			}

			// A run interrupted after 3 batches, then resumed by the same owner.
			ctx, cancel := context.WithCancel(t.Context())
			batches := 0
			r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: k.newFC, AD: k.ad.Func(), Batch: 64,
				Progress: func(*core.ReencryptStats, core.Cursor) {
					if batches++; batches == 3 {
						cancel()
					}
				}})
			_, err = job.Process(ctx, r, sqltable.ProcessOptions{Owner: "single"}, nil)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted: %v", err)
			}
			v, _ := core.Verify(t.Context(), tbl.Reader(), 100, nil)
			if v.ByDEK["email"][k.newID] != 192 {
				t.Fatalf("after 3 batches of 64: %v", v.ByDEK)
			}
			if n, err := job.RowsDone(t.Context()); err != nil || n != 192 {
				t.Errorf("RowsDone after 3 batches of 64: %d, %v", n, err)
			}
			if n, err := tbl.Count(t.Context()); err != nil || n != 1000 {
				t.Errorf("Count: %d, %v", n, err)
			}
			checkAll(t, db, k, plain, 0)
			r, _ = core.NewReencrypter(core.ReencryptOptions{Cipher: k.newFC, AD: k.ad.Func(), Batch: 64})
			st, err = job.Process(t.Context(), r, sqltable.ProcessOptions{Owner: "single"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Rows != 1000-192 || st.Failed != 0 || st.Conflicts != 0 {
				t.Errorf("resumed stats %+v", st)
			}
			checkAll(t, db, k, plain, k.newID)
			v, _ = core.Verify(t.Context(), tbl.Reader(), 100, nil)
			if v.OldValues(k.newID) != 0 {
				t.Fatalf("verify %v", v.ByDEK)
			}
			if n, err := job.RowsDone(t.Context()); err != nil || n != 1000 {
				t.Errorf("RowsDone at the end: %d, %v", n, err)
			}
			if j, err := tbl.LastJob(t.Context()); err != nil || j.State != sqltable.JobDone || j.TargetDEK != k.newID {
				t.Fatalf("last job %+v %v", j, err)
			}
			if _, err := tbl.OpenJob(t.Context()); !errors.Is(err, sqltable.ErrNoJob) {
				t.Fatalf("open job after done: %v", err)
			}
		})
	}
}

// Two workers: one claims a chunk, commits a batch and dies; the other
// finishes the rest, waits for the lease to expire and takes the dead
// worker's chunk over from its checkpoint; the dead worker's late batch is
// refused.
func TestWorkersLease(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			k := newKeys(t, "users")
			plain := fill(t, db, k, 500)
			tbl, _ := db.Table(t.Context(), spec)
			job, _, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: k.oldID, TargetDEK: k.newID, ChunkKeys: 700})
			if err != nil {
				t.Fatal(err)
			}
			const lease = 1500 * time.Millisecond
			dead, err := job.Claim(t.Context(), "worker-a", lease)
			if err != nil {
				t.Fatal(err)
			}
			if dead.Lo != math.MinInt64 {
				t.Errorf("first chunk starts at %d", dead.Lo)
			}
			r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: k.newFC, AD: k.ad.Func(), Batch: 20})
			rows, _ := dead.Scan(t.Context(), core.Cursor{}, 20)
			if _, err := dead.Apply(t.Context(), nil, core.Cursor{Set: true, Key: rows[len(rows)-1].Key}); err != nil {
				t.Fatal(err)
			}
			claimed := map[int]int{}
			start := time.Now()
			st, err := job.Process(t.Context(), r, sqltable.ProcessOptions{Owner: "worker-b", Lease: lease, Poll: 100 * time.Millisecond,
				OnChunk: func(c *sqltable.Chunk) {
					claimed[c.N]++
					if c.N == dead.N && (!c.Checkpoint.Set || c.Checkpoint.Key != rows[len(rows)-1].Key) {
						t.Errorf("taken-over chunk resumes at %v", c.Checkpoint)
					}
				}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if claimed[dead.N] != 1 || len(claimed) != 5 {
				t.Errorf("claimed %v", claimed)
			}
			if time.Since(start) < lease/2 {
				t.Errorf("dead worker's chunk taken over after %v, before its lease expired", time.Since(start))
			}
			if st.Rows != 500-20 {
				t.Errorf("rows %d", st.Rows)
			}
			// The dead worker wakes up: its batch is refused, nothing stored.
			if _, err := dead.Apply(t.Context(), nil, core.Cursor{Set: true, Key: 1 << 40}); !errors.Is(err, core.ErrLeaseLost) {
				t.Fatalf("late apply: %v", err)
			}
			// The first 20 rows of the dead worker's chunk were "checkpointed"
			// without being re-encrypted (the test skipped them): they are
			// still old, and found by verify.
			v, _ := core.Verify(t.Context(), tbl.Reader(), 100, nil)
			if v.ByDEK["email"][k.oldID] != 20 {
				t.Fatalf("verify %v", v.ByDEK)
			}
			checkAll(t, db, k, plain, 0)
		})
	}
}

// A compare-and-swap against a value that changed is not applied.
func TestApplyCAS(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			k := newKeys(t, "users")
			fill(t, db, k, 10)
			tbl, _ := db.Table(t.Context(), spec)
			job, _, _ := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, TargetDEK: k.newID})
			c, err := job.Claim(t.Context(), "x", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			rows, _ := c.Scan(t.Context(), core.Cursor{}, 2)
			stale := core.FieldValue{Data: []byte("not what is stored")}
			fresh := core.FieldValue{Data: []byte("new")}
			swapped, err := c.Apply(t.Context(), []core.RowUpdate{
				{Key: rows[0].Key, Set: []core.ColumnUpdate{{Column: 0, Old: stale, New: fresh}}},
				{Key: rows[1].Key, Set: []core.ColumnUpdate{{Column: 0, Old: rows[1].Values[0], New: fresh}, {Column: 1, Old: stale, New: fresh}}},
				{Key: rows[1].Key, Set: []core.ColumnUpdate{{Column: 0, Old: rows[1].Values[0], New: fresh}}},
				{Key: 999999, Set: []core.ColumnUpdate{{Column: 0, Old: rows[1].Values[0], New: fresh}}},
			}, core.Cursor{Set: true, Key: rows[1].Key})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(swapped) != "[false false true false]" {
				t.Fatalf("swapped %v", swapped)
			}
			again, _ := c.Reread(t.Context(), []int64{rows[0].Key, rows[1].Key, 424242})
			if len(again) != 2 {
				t.Fatalf("reread %d rows", len(again))
			}
			for _, r := range again {
				if r.Key == rows[1].Key && string(r.Values[0].Data) != "new" {
					t.Errorf("row 1 not swapped")
				}
				if r.Key == rows[0].Key && string(r.Values[0].Data) == "new" {
					t.Errorf("row 0 overwritten")
				}
			}
		})
	}
}

func TestTableChecks(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			ddl := []string{
				`CREATE TABLE t_text_key (k TEXT PRIMARY KEY, v BLOB)`,
				`CREATE TABLE t_ok (k INTEGER PRIMARY KEY, v BLOB, n INTEGER)`,
			}
			if db.Postgres() {
				ddl = []string{
					`CREATE TABLE t_text_key (k TEXT PRIMARY KEY, v BYTEA)`,
					`CREATE TABLE t_ok (k BIGINT PRIMARY KEY, v BYTEA, n INTEGER)`,
				}
			}
			for _, q := range ddl {
				if _, err := db.SQL().Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			for _, tc := range []struct {
				spec sqltable.Spec
				want error
			}{
				{sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"v"}}, nil},
				{sqltable.Spec{Table: "t_text_key", Key: "k", Columns: []string{"v"}}, sqltable.ErrNotInteger},
				{sqltable.Spec{Table: "nope", Key: "k", Columns: []string{"v"}}, core.ErrMalformed},
				{sqltable.Spec{Table: "t_ok", Key: "nope", Columns: []string{"v"}}, core.ErrMalformed},
				{sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"nope"}}, core.ErrMalformed},
				{sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"v", "v"}}, core.ErrMalformed},
				{sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"k"}}, core.ErrMalformed},
				{sqltable.Spec{Table: "t_ok", Key: "k"}, core.ErrMalformed},
				{sqltable.Spec{Table: `t_ok"; DROP TABLE t_ok; --`, Key: "k", Columns: []string{"v"}}, core.ErrMalformed},
				{sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"v x"}}, core.ErrMalformed},
			} {
				_, err := db.Table(t.Context(), tc.spec)
				if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("%+v: %v, want %v", tc.spec, err, tc.want)
				}
			}
			if db.Postgres() {
				if _, err := db.Table(t.Context(), sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"n"}}); !errors.Is(err, core.ErrMalformed) {
					t.Errorf("integer column accepted as encrypted: %v", err)
				}
			}
			// A non-bytes value in an encrypted column is a clear error.
			if _, err := db.SQL().Exec(`INSERT INTO t_ok (k, v, n) VALUES (1, NULL, 5)`); err != nil {
				t.Fatal(err)
			}
			if !db.Postgres() {
				tbl, _ := db.Table(t.Context(), sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"n"}})
				if _, err := core.Verify(t.Context(), tbl.Reader(), 10, nil); !errors.Is(err, core.ErrMalformed) {
					t.Errorf("integer value: %v", err)
				}
			}
			tbl, _ := db.Table(t.Context(), sqltable.Spec{Table: "t_ok", Key: "k", Columns: []string{"v"}})
			defer sqltable.SetLockWait(200 * time.Millisecond)()
			unlock, err := tbl.LockSingle(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tbl.LockSingle(t.Context()); !errors.Is(err, sqltable.ErrBusy) {
				t.Errorf("second lock: %v", err)
			}
			unlock()
			unlock2, err := tbl.LockSingle(t.Context())
			if err != nil {
				t.Fatalf("lock after unlock: %v", err)
			}
			unlock2()
		})
	}
}

// The key column must be the primary key (or, in PostgreSQL, a NOT NULL
// column with a unique index): paging with key > last skips duplicate keys
// at batch edges and never reaches NULL keys, so a verify pass would miss
// rows and --retire-old could retire a DEK they use.
func TestKeyMustBeUnique(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			blob := "BLOB"
			if db.Postgres() {
				blob = "BYTEA"
			}
			for _, q := range []string{
				`CREATE TABLE addr (user_id INTEGER, v ` + blob + `)`,
				`CREATE TABLE two (a INTEGER, b INTEGER, v ` + blob + `, PRIMARY KEY (a, b))`,
				`CREATE TABLE uniq_null (k BIGINT UNIQUE, v ` + blob + `)`,
				`CREATE TABLE uniq (id INTEGER PRIMARY KEY, k BIGINT NOT NULL UNIQUE, v ` + blob + `)`,
				`CREATE TABLE bigpk (k BIGINT PRIMARY KEY, v ` + blob + `)`,
			} {
				if _, err := db.SQL().Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			cases := []struct {
				table, key string
				want       error
			}{
				{"addr", "user_id", sqltable.ErrNotKey},
				{"two", "a", sqltable.ErrNotKey},
				{"uniq_null", "k", sqltable.ErrNotKey},
				{"uniq", "id", nil},
				{"bigpk", "k", nil},
			}
			// SQLite: a UNIQUE column may hold NULLs and text; only the
			// primary key is accepted. PostgreSQL: a unique NOT NULL column
			// will do.
			if db.Postgres() {
				cases = append(cases, struct {
					table, key string
					want       error
				}{"uniq", "k", nil})
			} else {
				cases = append(cases, struct {
					table, key string
					want       error
				}{"uniq", "k", sqltable.ErrNotKey})
			}
			for _, tc := range cases {
				_, err := db.Table(t.Context(), sqltable.Spec{Table: tc.table, Key: tc.key, Columns: []string{"v"}})
				if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("%s.%s: %v, want %v", tc.table, tc.key, err, tc.want)
				}
			}
			if db.Postgres() {
				return
			}
			// SQLite: the table name must be given as spelled (pragma
			// table_info would find USERS for users, and the job tables
			// would then know the table under two names).
			if _, err := db.Table(t.Context(), sqltable.Spec{Table: "BIGPK", Key: "k", Columns: []string{"v"}}); !errors.Is(err, core.ErrMalformed) {
				t.Errorf("table name in another case: %v", err)
			}
			// A non-rowid INTEGER primary key in SQLite may hold NULL and
			// text: such rows are never scanned, and CheckVerified says so.
			if _, err := db.SQL().Exec(`INSERT INTO bigpk (k, v) VALUES (1, x'00'), (2, x'00'), (NULL, x'00'), ('abc', x'00'), (3, x'00')`); err != nil {
				t.Fatal(err)
			}
			tbl, err := db.Table(t.Context(), sqltable.Spec{Table: "bigpk", Key: "k", Columns: []string{"v"}})
			if err != nil {
				t.Fatal(err)
			}
			v, _ := core.Verify(t.Context(), tbl.Reader(), 2, nil)
			if v.Rows != 3 {
				t.Fatalf("verify read %d rows, want the 3 with integer keys", v.Rows)
			}
			if err := tbl.CheckVerified(t.Context(), v.Rows); !errors.Is(err, sqltable.ErrIncomplete) || !errors.Is(err, core.ErrFailedPrecondition) {
				t.Errorf("CheckVerified with NULL and text keys: %v", err)
			}
			if _, err := db.SQL().Exec(`DELETE FROM bigpk WHERE typeof(k) <> 'integer'`); err != nil {
				t.Fatal(err)
			}
			if err := tbl.CheckVerified(t.Context(), v.Rows); err != nil {
				t.Errorf("CheckVerified: %v", err)
			}
			if err := tbl.CheckVerified(t.Context(), v.Rows-1); !errors.Is(err, sqltable.ErrIncomplete) {
				t.Errorf("CheckVerified with a row count that differs: %v", err)
			}
		})
	}
}

// Abandon frees the table for a new job and stops the job's workers;
// ReplacedDEKs names the previous DEK and the DEKs a finished job moved
// values from, never its target, and nothing of an abandoned job.
func TestAbandonAndReplaced(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			k := newKeys(t, "users")
			fill(t, db, k, 100)
			tbl, _ := db.Table(t.Context(), spec)
			stuck, _, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: 0x77, TargetDEK: 0x99})
			if err != nil {
				t.Fatal(err)
			}
			if err := stuck.Abandon(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := stuck.Abandon(t.Context()); !errors.Is(err, sqltable.ErrNoJob) {
				t.Errorf("abandon twice: %v", err)
			}
			if _, err := stuck.Claim(t.Context(), "w", time.Minute); !errors.Is(err, core.ErrFailedPrecondition) {
				t.Errorf("claim on an abandoned job: %v", err)
			}
			if _, err := tbl.OpenJob(t.Context()); !errors.Is(err, sqltable.ErrNoJob) {
				t.Fatalf("open job after abandon: %v", err)
			}
			job, created, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: 0x55, TargetDEK: k.newID})
			if err != nil || !created {
				t.Fatalf("new job after abandon: %v %v", created, err)
			}
			r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: k.newFC, AD: k.ad.Func(), Batch: 30})
			st, err := job.Process(t.Context(), r, sqltable.ProcessOptions{Owner: "single"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if st.Moved[k.oldID] != 180 {
				t.Errorf("moved %v, want 180 values from the old DEK", st.Moved)
			}
			got, err := tbl.ReplacedDEKs(t.Context(), k.newID)
			if err != nil || fmt.Sprint(got) != fmt.Sprint([]uint32{0x55, k.oldID}) {
				t.Errorf("ReplacedDEKs = %x, %v; want [55 %x]", got, err, k.oldID)
			}
			if got, _ := tbl.ReplacedDEKs(t.Context(), 0x99); len(got) != 0 {
				t.Errorf("ReplacedDEKs of the abandoned job's target = %x", got)
			}
		})
	}
}

// A database whose job tables were created by schema 1 (no moved column,
// index keyctl_reencrypt_jobs_open on state <> 'done') is migrated.
func TestJobSchemaMigration(t *testing.T) {
	db := openKind(t, "sqlite")
	for _, q := range []string{
		`CREATE TABLE keyctl_reencrypt_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, key_col TEXT NOT NULL, cols TEXT NOT NULL, aad TEXT NOT NULL,
			prev_dek BIGINT NOT NULL, target_dek BIGINT, state TEXT NOT NULL, created BIGINT NOT NULL, finished BIGINT)`,
		`CREATE UNIQUE INDEX keyctl_reencrypt_jobs_open ON keyctl_reencrypt_jobs (tbl) WHERE state <> 'done'`,
		`INSERT INTO keyctl_reencrypt_jobs (tbl, key_col, cols, aad, prev_dek, target_dek, state, created) VALUES ('users', 'id', 'email,name', '', 1, 2, 'done', 0)`,
	} {
		if _, err := db.SQL().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	k := newKeys(t, "users")
	fill(t, db, k, 10)
	tbl, _ := db.Table(t.Context(), spec)
	got, err := tbl.ReplacedDEKs(t.Context(), 2)
	if err != nil || fmt.Sprint(got) != "[1]" {
		t.Fatalf("ReplacedDEKs after migration: %v %v", got, err)
	}
	j, _, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: 2, TargetDEK: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Abandon(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, created, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: 2, TargetDEK: 3}); err != nil || !created {
		t.Fatalf("a job after an abandoned one, on a migrated schema: %v %v", created, err)
	}
}

// A worker whose lease expired sends its batch while worker B holds the
// chunk (running, B's lease live): only the lease_owner condition tells
// the two apart, and it refuses A's batch; nothing of it is stored.
func TestLateBatchWhileTakenOver(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			db := openKind(t, kind)
			k := newKeys(t, "users")
			plain := fill(t, db, k, 50)
			tbl, _ := db.Table(t.Context(), spec)
			job, _, err := tbl.CreateJob(t.Context(), sqltable.JobOptions{AAD: core.DefaultADFormat, PrevDEK: k.oldID, TargetDEK: k.newID, ChunkKeys: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			a, err := job.Claim(t.Context(), "worker-a", 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			rows, _ := a.Scan(t.Context(), core.Cursor{}, 10)
			r, _ := core.NewReencrypter(core.ReencryptOptions{Cipher: k.newFC, AD: k.ad.Func(), Batch: 10})
			// A prepares its batch, then stalls past its lease.
			var updates []core.RowUpdate
			for _, row := range rows {
				ct, _ := k.newFC.Encrypt([]byte("stale"), k.ad.Append(nil, "email", row.Key))
				updates = append(updates, core.RowUpdate{Key: row.Key, Set: []core.ColumnUpdate{{Column: 0, Old: row.Values[0], New: core.FieldValue{Data: ct}}}})
			}
			time.Sleep(300 * time.Millisecond)
			b, err := job.Claim(t.Context(), "worker-b", time.Minute)
			if err != nil || b.N != a.N {
				t.Fatalf("B claims A's expired chunk: %+v %v", b, err)
			}
			c, _ := job.Counts(t.Context())
			if c.Running != 1 || c.Live != 1 {
				t.Fatalf("counts while B holds the chunk: %+v", c)
			}
			if _, err := a.Apply(t.Context(), updates, core.Cursor{Set: true, Key: rows[len(rows)-1].Key}); !errors.Is(err, core.ErrLeaseLost) {
				t.Fatalf("A's late batch while B holds the chunk: %v", err)
			}
			if err := a.Done(t.Context()); !errors.Is(err, core.ErrLeaseLost) {
				t.Fatalf("A marks B's chunk done: %v", err)
			}
			checkAll(t, db, k, plain, 0) // nothing of A's batch is stored
			again, _ := job.Claim(t.Context(), "worker-b", time.Minute)
			if again.Checkpoint.Set {
				t.Fatalf("checkpoint moved by A's refused batch: %v", again.Checkpoint)
			}
			if _, err := r.Run(t.Context(), b, b.Checkpoint, nil); err != nil {
				t.Fatal(err)
			}
			checkAll(t, db, k, plain, k.newID)
		})
	}
}

// Deadlocks, serialization failures and a busy SQLite database are
// retried; other errors are not.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("batch: %w", &pgconn.PgError{Code: "40P01"}), true},
		{&pgconn.PgError{Code: "40001"}, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{errors.New("database is locked (SQLITE_BUSY)"), false}, // only the driver's typed error counts
		{context.Canceled, false},
	} {
		if got := sqltable.Retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v", tc.err, got)
		}
	}
	// A real SQLITE_BUSY: a second connection writing while the first
	// holds the write lock, with no busy timeout.
	path := filepath.Join(t.TempDir(), "busy.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sqltable.OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.SQL().Exec(`CREATE TABLE x (k INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	tx, err := db.SQL().Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(0)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	_, err = other.Exec(`INSERT INTO x (k) VALUES (1)`)
	if err == nil || !sqltable.Retryable(err) {
		t.Errorf("write to a locked SQLite database: %v, retryable %v", err, sqltable.Retryable(err))
	}
}

// A PostgreSQL URL that does not parse is bad input (core.ErrMalformed,
// not ErrUnavailable), and the error quotes none of it.
func TestOpenPostgresMalformed(t *testing.T) {
	for _, url := range []string{
		"postgres://app:s3cret@db.internal:notaport/appdb",
		"postgres://app:s3cret@%zz/appdb",
		"host=db.internal user=app password=s3cret dbname=appdb sslmode=bogus",
	} {
		_, err := sqltable.OpenPostgres(t.Context(), url)
		if !errors.Is(err, core.ErrMalformed) || errors.Is(err, core.ErrUnavailable) {
			t.Errorf("%q: %v", url, err)
			continue
		}
		for _, part := range []string{"s3cret", "db.internal", "app", "notaport"} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("%q: the error quotes %q: %v", url, part, err)
			}
		}
	}
}
