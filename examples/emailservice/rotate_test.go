package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store/sqlstore"
)

func columns(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM pragma_table_info('users') ORDER BY cid`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

func countNull(t *testing.T, db *sql.DB, col string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM users WHERE ` + col + ` IS NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func indexKeyset(t *testing.T, e *testEnv) *core.Keyset {
	t.Helper()
	st, err := sqlstore.OpenSQLite(t.Context(), e.db, sqlstore.Options{Keyset: DefaultIndexKeyset})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks, err := st.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// TestBlindIndexRotation runs the documented procedure with a serving
// instance (A) and an admin instance (B) on the same database, reloading A
// late at every step, as a rolling deployment would.
func TestBlindIndexRotation(t *testing.T) {
	e := newEnv(t)
	a, _ := e.open(t)
	c := serveHTTP(t, a)
	b, _ := e.open(t)
	db := e.raw(t)
	ctx := t.Context()

	ids := map[string]int64{}
	mustAll := func(step string) {
		t.Helper()
		for em, id := range ids {
			c.mustFind(strings.ToUpper(em), id, em)
			if r := c.create(em); r.Status != http.StatusConflict {
				t.Fatalf("%s: duplicate of %s: %d %s", step, em, r.Status, r.Body)
			}
		}
	}
	for _, em := range []string{"alice@example.com", "bob@example.com"} {
		ids[em] = c.mustCreate(em)
	}
	oldKey := a.keys.Load().index["email_idx"]

	// Out of order: nothing to switch or finish yet.
	if err := b.SwitchIndex(ctx); !errors.Is(err, ErrRotationState) {
		t.Fatalf("switch before begin: %v", err)
	}

	// 1. Begin: a new key and an empty column.
	col, err := b.BeginIndexRotation(ctx)
	if err != nil || col != "email_idx2" {
		t.Fatalf("begin: %q, %v", col, err)
	}
	if _, err := b.BeginIndexRotation(ctx); !errors.Is(err, ErrRotationState) {
		t.Fatalf("begin twice: %v", err)
	}
	newKey := b.keys.Load().index["email_idx2"]
	if newKey.DEKID() == oldKey.DEKID() {
		t.Fatal("the new column uses the old key")
	}
	// A has not reloaded: it still reads email_idx, and leaves the new
	// column to the backfill.
	ids["carol@example.com"] = c.mustCreate("carol@example.com")
	mustAll("begun, A not reloaded")
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	ids["dave@example.com"] = c.mustCreate("dave@example.com") // writes both columns
	if n := countNull(t, db, "email_idx2"); n != 3 {
		t.Fatalf("%d rows without email_idx2 before the backfill, want 3", n)
	}
	if err := b.SwitchIndex(ctx); !errors.Is(err, ErrIndexIncomplete) {
		t.Fatalf("switch before the backfill: %v, want ErrIndexIncomplete", err)
	}
	mustAll("begun")

	// 2. Backfill, in batches of 2; a second run has nothing to do.
	st, err := b.BackfillIndex(ctx, 2)
	if err != nil || st.Filled != 3 || st.Skipped != 0 {
		t.Fatalf("backfill: %+v, %v", st, err)
	}
	if st, err := b.BackfillIndex(ctx, 2); err != nil || st.Filled != 0 {
		t.Fatalf("backfill again: %+v, %v", st, err)
	}
	rows, err := db.Query(`SELECT id, email_idx, email_idx2 FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var i1, i2 []byte
		if err := rows.Scan(&id, &i1, &i2); err != nil {
			t.Fatal(err)
		}
		var em string
		for k, v := range ids {
			if v == id {
				em = k
			}
		}
		if !bytes.Equal(i1, oldKey.Sum(em)) || !bytes.Equal(i2, newKey.Sum(em)) || bytes.Equal(i1, i2) {
			t.Fatalf("user %d: index columns are not HMAC under the old and the new key", id)
		}
	}
	rows.Close()

	// 3. Switch.
	if err := b.SwitchIndex(ctx); err != nil {
		t.Fatal(err)
	}
	mustAll("switched, A not reloaded") // A still reads email_idx
	ids["erin@example.com"] = c.mustCreate("erin@example.com")
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	// A now reads email_idx2: wiping email_idx does not stop lookups.
	if _, err := db.Exec(`UPDATE users SET email_idx = NULL`); err != nil {
		t.Fatal(err)
	}
	mustAll("switched")
	if _, err := db.Exec(`UPDATE users SET email_idx = NULL`); err != nil { // the duplicates above wrote nothing
		t.Fatal(err)
	}

	// 4. Finish: the old column goes, its key is retired.
	if err := b.FinishIndexRotation(ctx); err != nil {
		t.Fatal(err)
	}
	if got := columns(t, db); slices.Contains(got, "email_idx") || !slices.Contains(got, "email_idx2") {
		t.Fatalf("columns after finish: %v", got)
	}
	// A has not reloaded: it keeps writing, only the recorded column.
	ids["frank@example.com"] = c.mustCreate("frank@example.com")
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	mustAll("finished")
	ks := indexKeyset(t, e)
	if old, _ := ks.Entry(oldKey.DEKID()); old.State != core.StateRetired {
		t.Fatalf("old index DEK is %s, want retired", old.State)
	}
	if p, _ := ks.Primary(); p.ID != newKey.DEKID() {
		t.Fatalf("index keyset primary is %08x, want the new key %08x", p.ID, newKey.DEKID())
	}
	if err := b.FinishIndexRotation(ctx); err != nil {
		t.Fatalf("finish again: %v", err)
	}

	// A second rotation, all at once on A, moves back to email_idx.
	col, err = RotateBlindIndex(ctx, a, 100)
	if err != nil || col != "email_idx" {
		t.Fatalf("second rotation: %q, %v", col, err)
	}
	if got := columns(t, db); slices.Contains(got, "email_idx2") || !slices.Contains(got, "email_idx") {
		t.Fatalf("columns after the second rotation: %v", got)
	}
	mustAll("second rotation")

	// A restart reads everything.
	a2, _ := e.open(t)
	c = serveHTTP(t, a2)
	mustAll("restart")
	for em, id := range ids {
		if r := c.get(id); r.Status != http.StatusOK || r.Email != em {
			t.Fatalf("after the rotations, get %d: %d %s", id, r.Status, r.Body)
		}
	}
}

// TestStaleInstanceRefusesToWrite: an instance that has no key for the
// active column (it missed two steps) refuses to insert rather than store a
// row that lookups cannot find.
func TestStaleInstanceRefusesToWrite(t *testing.T) {
	e := newEnv(t)
	a, _ := e.open(t)
	c := serveHTTP(t, a)
	b, _ := e.open(t)
	ctx := t.Context()
	if _, err := b.BeginIndexRotation(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.BackfillIndex(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := b.SwitchIndex(ctx); err != nil {
		t.Fatal(err)
	}
	r := c.create("alice@example.com")
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(r.Error, "reload") {
		t.Fatalf("create on a stale instance: %d %s; want 503", r.Status, r.Body)
	}
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	id := c.mustCreate("alice@example.com")
	c.mustFind("alice@example.com", id, "alice@example.com")
}

// TestBackfillCompareAndSwap: a row whose ciphertext changes between the
// backfill's read and its write is skipped, not given a stale index.
func TestBackfillCompareAndSwap(t *testing.T) {
	e := newEnv(t)
	a, _ := e.open(t)
	c := serveHTTP(t, a)
	id := c.mustCreate("alice@example.com")
	if _, err := a.BeginIndexRotation(t.Context()); err != nil {
		t.Fatal(err)
	}
	db := e.raw(t)
	var ct []byte
	if err := db.QueryRow(`SELECT email FROM users WHERE id = ?`, id).Scan(&ct); err != nil {
		t.Fatal(err)
	}
	// The write of the backfill, with the ciphertext it read, after the row
	// was re-encrypted (same address, new nonce).
	fresh, err := a.keys.Load().fields.Encrypt([]byte("alice@example.com"), emailAD(id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE users SET email = ? WHERE id = ?`, fresh, id); err != nil {
		t.Fatal(err)
	}
	res, err := db.Exec(`UPDATE users SET email_idx2 = ? WHERE id = ? AND email = ? AND email_idx2 IS NULL`, []byte("x"), id, ct)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 0 {
		t.Fatal("the compare-and-swap wrote over a changed row")
	}
	// The real backfill reads the current ciphertext.
	if st, err := a.BackfillIndex(t.Context(), 10); err != nil || st.Filled != 1 {
		t.Fatalf("backfill: %+v, %v", st, err)
	}
	// A row that does not decrypt stops the backfill, naming the row.
	if _, err := db.Exec(`UPDATE users SET email_idx2 = NULL, email = ? WHERE id = ?`, ct[:len(ct)-1], id); err != nil {
		t.Fatal(err)
	}
	if _, err := a.BackfillIndex(t.Context(), 10); err == nil || !strings.Contains(err.Error(), "user 1") {
		t.Fatalf("backfill over a broken row: %v", err)
	}
}

func TestRunCommand(t *testing.T) {
	dir := t.TempDir()
	db, kek := filepath.Join(dir, "u.db"), filepath.Join(dir, "k.json")
	var logs syncBuffer
	ctx := t.Context()
	if code := run(ctx, []string{"-db", db, "-kek", kek, "-rotate-index", "begin"}, &logs); code != exitUsage {
		t.Fatalf("without -init and a key file: exit %d, want %d\n%s", code, exitUsage, logs.String())
	}
	if code := run(ctx, []string{"-listen", "0.0.0.0:0", "-db", db, "-kek", kek}, &logs); code != exitUsage {
		t.Fatalf("non-loopback listen: exit %d, want %d", code, exitUsage)
	}
	if code := run(ctx, []string{"-rotate-index", "sideways"}, &logs); code != exitUsage {
		t.Fatalf("bad step: exit %d, want %d", code, exitUsage)
	}
	// -init, then serve until cancelled.
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() { done <- run(sctx, []string{"-init", "-listen", "127.0.0.1:0", "-db", db, "-kek", kek}, &logs) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "listening") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve: exit %d\n%s", code, logs.String())
	}
	for _, step := range []string{"begin", "backfill", "switch", "finish", "all"} {
		if code := run(ctx, []string{"-db", db, "-kek", kek, "-rotate-index", step}, &logs); code != 0 {
			t.Fatalf("-rotate-index %s: exit %d\n%s", step, code, logs.String())
		}
	}
	if code := run(ctx, []string{"-db", db, "-kek", kek, "-rotate-index", "switch"}, &logs); code != exitUsage {
		t.Fatalf("-rotate-index switch out of order: exit %d, want %d", code, exitUsage)
	}
}

// TestFinishRacesNextBegin: admin B finishes a rotation while admin A
// begins the next one. B's keyset update (retire every DEK no column uses)
// runs after A's column is committed, or between A's new DEK and A's
// commit; either way A's new DEK ends up primary and not retired, and the
// next rotation completes with every user found.
func TestFinishRacesNextBegin(t *testing.T) {
	for _, inFlight := range []bool{false, true} {
		e := newEnv(t)
		a, _ := e.open(t)
		b, _ := e.open(t)
		c := serveHTTP(t, a)
		ctx := t.Context()
		alice := c.mustCreate("alice@example.com")
		if _, err := b.BeginIndexRotation(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := b.BackfillIndex(ctx, 10); err != nil {
			t.Fatal(err)
		}
		if err := b.SwitchIndex(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		var next string
		b.hookFinishCommitted = func() {
			b.hookFinishCommitted = nil
			if inFlight {
				// B's keyset update runs after A added its DEK, before A's
				// column is committed.
				a.hookBeginDEKAdded = func() {
					a.hookBeginDEKAdded = nil
					if err := b.retireUnusedIndexDEKs(ctx); err != nil {
						t.Errorf("finish's keyset step inside begin: %v", err)
					}
				}
			}
			var err error
			if next, err = a.BeginIndexRotation(ctx); err != nil {
				t.Errorf("begin during finish: %v", err)
			}
		}
		if err := b.FinishIndexRotation(ctx); err != nil {
			t.Fatalf("in flight %v: finish: %v", inFlight, err)
		}
		if next == "" {
			t.Fatal("begin did not run")
		}
		cols, err := readIndexColumns(ctx, e.raw(t))
		if err != nil || len(cols) != 2 {
			t.Fatalf("in flight %v: columns %+v %v", inFlight, cols, err)
		}
		var filling uint32
		for _, col := range cols {
			if col.state == IndexFilling {
				filling = col.dekID
			}
		}
		ks := indexKeyset(t, e)
		if ent, err := ks.Entry(filling); err != nil || ent.State != core.StatePrimary {
			t.Fatalf("in flight %v: the new rotation's DEK %08x: %+v %v; want primary", inFlight, filling, ent, err)
		}
		for _, s := range []*Service{a, b} {
			if err := s.Reload(ctx); err != nil {
				t.Fatalf("in flight %v: reload: %v", inFlight, err)
			}
		}
		if _, err := b.BackfillIndex(ctx, 10); err != nil {
			t.Fatal(err)
		}
		if err := b.SwitchIndex(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.FinishIndexRotation(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		c.mustFind("alice@example.com", alice, "alice@example.com")
	}
}
