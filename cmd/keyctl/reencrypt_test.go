package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/pgtest"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/store"
	"github.com/keyctl/keyctl/store/sqltable"
)

// The crash-safety tests of keyctl reencrypt (issue 7): a table of e-mails
// under the keyset's first DEK is re-encrypted by keyctl processes that are
// SIGKILLed at random moments, while a writer (a goroutine of this test with
// its own database connection, as an application would be) keeps writing
// new e-mails to random rows with whatever DEK its last keyset reload made
// primary. The test keeps the latest plaintext of every row. Afterwards
// every row must decrypt to its latest plaintext and none may be under the
// first DEK.

// reEnv is one keyctl directory plus a database with table users.
type reEnv struct {
	dir, cfg string
	kind     string
	dbArgs   []string // --sqlite PATH or --db-env VAR
	env      []string // extra environment of keyctl
	db       *sqltable.DB
	ring     *core.Keyring
	oldDEK   uint32

	mu     sync.Mutex
	latest map[int64]string
}

const reDBEnv = "KEYCTL_TEST_REENCRYPT_DB"

// reKeyctlCmd returns keyctl (this test binary, run as "keyctl": see
// TestMain) as a subprocess in its own process group, so that killing the
// group also kills its provider plugin, as a machine crash would.
func reKeyctlCmd(e *reEnv, args ...string) (*exec.Cmd, *bytes.Buffer) {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	cmd := exec.Command(exe, append([]string{"--config", e.cfg}, args...)...)
	cmd.Args[0] = "keyctl"
	cmd.Env = append(append(os.Environ(), "KEYCTL_CONFIG="), e.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	return cmd, &out
}

func newReEnv(t *testing.T, kind string, rows int) *reEnv {
	t.Helper()
	ctx := t.Context()
	e := &reEnv{dir: t.TempDir(), kind: kind, latest: make(map[int64]string, rows)}
	if code, _, stderr := runKeyctl(nil, "init", "--dir", e.dir); code != 0 {
		t.Fatalf("keyctl init: %s", stderr)
	}
	e.cfg = filepath.Join(e.dir, "keyctl.hcl")
	lp, err := localfile.Open(filepath.Join(e.dir, "kek.json"), localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.ring, err = core.NewKeyring(lp); err != nil {
		t.Fatal(err)
	}
	ddl := `CREATE TABLE users (id BIGINT PRIMARY KEY, email BYTEA NOT NULL)`
	switch kind {
	case "sqlite":
		path := filepath.Join(e.dir, "app.db")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		e.dbArgs = []string{"--sqlite", path}
		e.db, err = sqltable.OpenSQLite(ctx, path)
		ddl = `CREATE TABLE users (id INTEGER PRIMARY KEY, email BLOB NOT NULL)`
	case "postgres":
		url := pgtest.Start(t)
		e.dbArgs = []string{"--db-env", reDBEnv}
		e.env = []string{reDBEnv + "=" + url}
		e.db, err = sqltable.OpenPostgres(ctx, url)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	if _, err := e.db.SQL().ExecContext(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	fc := e.cipher(t)
	e.oldDEK = fc.PrimaryID()
	// Insert in multi-row statements of 500 rows.
	tx, err := e.db.SQL().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for lo := 1; lo <= rows; lo += 500 {
		var q strings.Builder
		q.WriteString("INSERT INTO users (id, email) VALUES ")
		var args []any
		for id := lo; id < lo+500 && id <= rows; id++ {
			if id > lo {
				q.WriteString(", ")
			}
			n := len(args)
			if kind == "postgres" {
				fmt.Fprintf(&q, "($%d, $%d)", n+1, n+2)
			} else {
				fmt.Fprintf(&q, "(?%d, ?%d)", n+1, n+2)
			}
			pt := fmt.Sprintf("user%d@example.com", id)
			ct, err := fc.Encrypt([]byte(pt), core.FieldAD("users", "email", int64(id)))
			if err != nil {
				t.Fatal(err)
			}
			args = append(args, id, ct)
			e.latest[int64(id)] = pt
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return e
}

// cipher loads the keyset file and opens it, as an application does on
// start or reload.
func (e *reEnv) cipher(t testing.TB) *core.FieldCipher {
	t.Helper()
	st, err := store.OpenFile(filepath.Join(e.dir, "keyset.json"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fc, err := ks.OpenFieldCipher(context.Background(), e.ring)
	if err != nil {
		t.Fatal(err)
	}
	return fc
}

// dekCount returns the number of DEKs in the keyset file.
func (e *reEnv) dekCount(t testing.TB) int {
	t.Helper()
	st, err := store.OpenFile(filepath.Join(e.dir, "keyset.json"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(ks.DEKs)
}

// writer updates random rows, and every 10th write inserts a new row
// (after the largest key: the job's last chunk covers it), until ctx ends,
// reloading the keyset every reload writes; it returns the number of
// writes.
func (e *reEnv) writer(ctx context.Context, t testing.TB, url string, reload int) int {
	var db *sql.DB
	switch e.kind {
	case "sqlite":
		d, err := sqltable.OpenSQLite(context.Background(), e.dbArgs[1])
		if err != nil {
			t.Error(err)
			return 0
		}
		defer d.Close()
		db = d.SQL()
	case "postgres":
		d, err := sqltable.OpenPostgres(context.Background(), url)
		if err != nil {
			t.Error(err)
			return 0
		}
		defer d.Close()
		db = d.SQL()
	}
	q := `UPDATE users SET email = ?1 WHERE id = ?2`
	ins := `INSERT INTO users (email, id) VALUES (?1, ?2)`
	if e.kind == "postgres" {
		q = `UPDATE users SET email = $1 WHERE id = $2`
		ins = `INSERT INTO users (email, id) VALUES ($1, $2)`
	}
	n := 0
	var fc *core.FieldCipher
	for ctx.Err() == nil {
		if n%reload == 0 {
			fc = e.cipher(t)
		}
		// Keys are 1..len(latest): only this goroutine inserts.
		e.mu.Lock()
		rows := int64(len(e.latest))
		e.mu.Unlock()
		id, stmt := rand.Int64N(rows)+1, q
		if n%10 == 9 {
			id, stmt = rows+1, ins
		}
		pt := fmt.Sprintf("write%d-%d@example.org", n, id)
		ct, err := fc.Encrypt([]byte(pt), core.FieldAD("users", "email", id))
		if err != nil {
			t.Error(err)
			return n
		}
		// The plaintext is recorded under the lock held across the write,
		// so that the map and the row change together.
		e.mu.Lock()
		_, err = db.ExecContext(context.Background(), stmt, ct, id)
		if err == nil {
			e.latest[id] = pt
		}
		e.mu.Unlock()
		if err != nil {
			t.Errorf("writer: %v", err)
			return n
		}
		n++
		time.Sleep(time.Millisecond)
	}
	return n
}

// check asserts that every row decrypts to its latest plaintext and that
// none is under the first DEK.
func (e *reEnv) check(t *testing.T) {
	t.Helper()
	fc := e.cipher(t)
	rows, err := e.db.SQL().Query(`SELECT id, email FROM users`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n, bad := 0, 0
	perDEK := map[uint32]int{}
	for rows.Next() {
		var id int64
		var ct []byte
		if err := rows.Scan(&id, &ct); err != nil {
			t.Fatal(err)
		}
		n++
		dek, _ := core.DEKID(ct)
		perDEK[dek]++
		pt, err := fc.Decrypt(ct, core.FieldAD("users", "email", id))
		if err != nil || string(pt) != e.latest[id] {
			if bad++; bad <= 5 {
				t.Errorf("row %d: decrypts to %q (%v), want %q", id, pt, err, e.latest[id])
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(e.latest) {
		t.Errorf("%d rows, want %d", n, len(e.latest))
	}
	if perDEK[e.oldDEK] != 0 {
		t.Errorf("%d row(s) still under the old DEK %08x (per DEK: %v)", perDEK[e.oldDEK], e.oldDEK, perDEK)
	}
	if bad > 0 {
		t.Errorf("%d row(s) wrong", bad)
	}
	t.Logf("rows per DEK: %v", perDEK)
}

// jobDone reports whether the database has a finished job.
func (e *reEnv) jobDone(t *testing.T) bool {
	var n int
	err := e.db.SQL().QueryRow(`SELECT COUNT(*) FROM keyctl_reencrypt_jobs WHERE state = 'done'`).Scan(&n)
	if err != nil {
		return false // the job table does not exist yet
	}
	return n > 0
}

// rowsDone returns the largest checkpoint of the job's chunks (-1 if none).
func (e *reEnv) rowsDone() int64 {
	var cp int64 = -1
	_ = e.db.SQL().QueryRow(`SELECT COALESCE(MAX(checkpoint), -1) FROM keyctl_reencrypt_chunks`).Scan(&cp)
	return cp
}

func reRows(t *testing.T) int {
	if s := os.Getenv("KEYCTL_TEST_REENCRYPT_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("KEYCTL_TEST_REENCRYPT_ROWS=%q", s)
		}
		return n
	}
	if testing.Short() {
		return 10000
	}
	return 100000
}

// TestReencryptKill: at least 20 SIGKILLs of keyctl reencrypt at random
// moments with a concurrent writer, in SQLite and PostgreSQL.
func TestReencryptKill(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			rows := reRows(t)
			e := newReEnv(t, kind, rows)
			url := ""
			if kind == "postgres" {
				url = strings.TrimPrefix(e.env[0], reDBEnv+"=")
			}
			args := append([]string{"reencrypt", "--table", "users", "--key", "id", "--column", "email", "--progress", "none", "--batch", "250"}, e.dbArgs...)
			ctx, stop := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			writes := 0
			wg.Add(1)
			go func() {
				defer wg.Done()
				writes = e.writer(ctx, t, url, 100)
			}()
			start := time.Now()
			kills := 0
			// Kill delays are random in [10ms, hi]; hi adapts so that the
			// kills spread over the whole job: it grows while runs are
			// killed before committing anything (start-up: job creation,
			// the new DEK, a dead run's lock) and shrinks when a run got far.
			hi := 60 * time.Millisecond
			var progress []string
			last := int64(-1)
			// Should a run finish the job before the 25th kill (a fast
			// machine), the next runs (the same command) re-encrypt onto the
			// job's DEK what the writer wrote under the old one, without a
			// second rotation, and the kills go on.
			for i := 0; kills < 25 && i < 200; i++ {
				cmd, out := reKeyctlCmd(e, args...)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				delay := 10*time.Millisecond + rand.N(hi)
				exited := make(chan error, 1)
				go func() { exited <- cmd.Wait() }()
				select {
				case err := <-exited:
					t.Logf("run %d finished before its kill after %v (the next runs sweep onto its DEK): %v\n%s", i, delay, err, out)
					last = -1
					if err != nil {
						t.Fatalf("keyctl reencrypt: %v\n%s", err, out)
					}
				case <-time.After(delay):
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-exited
					kills++
					cp := e.rowsDone()
					progress = append(progress, fmt.Sprintf("%v:%d", delay.Round(time.Millisecond), cp))
					switch {
					case cp == last:
						hi = min(hi*3/2, 3*time.Second)
					case cp-last > int64(rows/30):
						hi = max(hi/2, 15*time.Millisecond)
					}
					last = cp
				}
			}
			t.Logf("%d kills in %v (delay:checkpoint) %s", kills, time.Since(start), strings.Join(progress, " "))
			if kills < 20 {
				t.Errorf("only %d kills before the job finished", kills)
			}
			// Let a run finish while the writer writes (the job, or a sweep
			// onto its DEK if a run finished it), then stop the writer.
			cmd, out := reKeyctlCmd(e, args...)
			if err := cmd.Run(); err != nil {
				t.Fatalf("final run: %v\n%s", err, out)
			}
			t.Logf("final run:\n%s", out)
			stop()
			wg.Wait()
			t.Logf("%d concurrent writes", writes)
			if !strings.Contains(out.String(), "no value is under an old DEK") {
				// Values the writer wrote under the old DEK before its
				// reload, after the job had passed their row: sweep them.
				cmd, out = reKeyctlCmd(e, append(args, "--to-primary")...)
				if err := cmd.Run(); err != nil {
					t.Fatalf("sweep: %v\n%s", err, out)
				}
				t.Logf("sweep:\n%s", out)
			}
			e.check(t)
			// However many runs finished or were killed, one rotation: the
			// first DEK and the job's.
			if n := e.dekCount(t); n != 2 {
				t.Errorf("the keyset has %d DEKs, want 2 (one rotation)", n)
			}
			// The old DEK may now be retired.
			cmd, out = reKeyctlCmd(e, append(args, "--verify", "--retire-old")...)
			if err := cmd.Run(); err != nil {
				t.Fatalf("retire: %v\n%s", err, out)
			}
			if !strings.Contains(out.String(), fmt.Sprintf("DEK %08x retired", e.oldDEK)) {
				t.Errorf("retire:\n%s", out)
			}
			t.Logf("%s: %v in all", kind, time.Since(start))
		})
	}
}

// TestReencryptWorkersKill: two --worker processes share a PostgreSQL job;
// one is killed; the other finishes, taking the dead one's chunk over once
// its lease expires.
func TestReencryptWorkersKill(t *testing.T) {
	if testing.Short() {
		// With -short's small table the job ends before a worker can be
		// killed holding a chunk. CI runs without -short.
		t.Skip("needs the full-size table to kill a worker mid-job; run without -short")
	}
	rows := reRows(t) / 2
	e := newReEnv(t, "postgres", rows)
	url := strings.TrimPrefix(e.env[0], reDBEnv+"=")
	args := append([]string{"reencrypt", "--table", "users", "--key", "id", "--column", "email", "--progress", "none",
		// Small batches make a chunk last long enough (hundreds of
		// transactions) for the test to kill A while it holds one.
		"--batch", "20", "--worker", "--lease", "2s", "--chunk-keys", strconv.Itoa(max(rows/10, 100))}, e.dbArgs...) // 10 chunks
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.writer(ctx, t, url, 100)
	}()
	start := time.Now()
	a, outA := reKeyctlCmd(e, args...)
	b, outB := reKeyctlCmd(e, args...)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill A as soon as it holds a chunk with committed batches (its own:
	// lease owner host:PID:random), at a random point a little later.
	deadline := time.Now().Add(60 * time.Second)
	ownedByA := fmt.Sprintf("%%:%d:%%", a.Process.Pid)
	for {
		var n int
		_ = e.db.SQL().QueryRow(`SELECT COUNT(*) FROM keyctl_reencrypt_chunks WHERE state = 'running' AND checkpoint IS NOT NULL AND lease_owner LIKE $1`, ownedByA).Scan(&n)
		if n >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
	_ = syscall.Kill(-a.Process.Pid, syscall.SIGKILL)
	_ = a.Wait()
	killed := time.Now()
	// The chunks the dead worker held (lease owner host:PID:random).
	var held []int
	rs, err := e.db.SQL().Query(`SELECT chunk FROM keyctl_reencrypt_chunks WHERE state = 'running' AND lease_owner LIKE $1`, fmt.Sprintf("%%:%d:%%", a.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var c int
		_ = rs.Scan(&c)
		held = append(held, c)
	}
	rs.Close()
	t.Logf("worker A killed after %v holding chunk(s) %v", killed.Sub(start), held)
	if len(held) == 0 {
		t.Errorf("worker A held no chunk when killed")
	}
	if err := b.Wait(); err != nil {
		t.Fatalf("worker B: %v\n%s\nA:\n%s", err, outB, outA)
	}
	t.Logf("worker B done after %v:\n%s", time.Since(start), outB)
	stop()
	wg.Wait()
	if d := time.Since(killed); len(held) > 0 && d < time.Second {
		t.Errorf("worker B finished %v after the kill, before the dead worker's 2s lease could expire", d)
	}
	var notDone int
	_ = e.db.SQL().QueryRow(`SELECT COUNT(*) FROM keyctl_reencrypt_chunks WHERE state <> 'done'`).Scan(&notDone)
	if notDone != 0 {
		t.Errorf("%d chunk(s) not done", notDone)
	}
	// Two workers started together created one job and one new DEK.
	if n := e.dekCount(t); n != 2 {
		t.Errorf("the keyset has %d DEKs after two workers started together, want 2", n)
	}
	// A worker that starts after the job is done starts no new rotation.
	late, outLate := reKeyctlCmd(e, args...)
	if err := late.Run(); err != nil || !strings.Contains(outLate.String(), "already done; nothing to do") {
		t.Errorf("late worker: %v\n%s", err, outLate)
	}
	if n := e.dekCount(t); n != 2 {
		t.Errorf("the keyset has %d DEKs after a late worker, want 2", n)
	}
	sweep := append([]string{"reencrypt", "--table", "users", "--key", "id", "--column", "email", "--progress", "none", "--to-primary"}, e.dbArgs...)
	cmd, out := reKeyctlCmd(e, sweep...)
	if err := cmd.Run(); err != nil {
		t.Fatalf("sweep: %v\n%s", err, out)
	}
	e.check(t)
}

// TestReencryptLarge times one uninterrupted keyctl reencrypt (the
// command, with its start-up and verify pass) and a --verify pass over
// KEYCTL_TEST_REENCRYPT_ROWS rows (default 100,000), in SQLite and
// PostgreSQL. It runs only with KEYCTL_TEST_REENCRYPT_LARGE=1 (the numbers
// in docs/reencrypt.md).
func TestReencryptLarge(t *testing.T) {
	if os.Getenv("KEYCTL_TEST_REENCRYPT_LARGE") != "1" {
		t.Skip("set KEYCTL_TEST_REENCRYPT_LARGE=1 (and KEYCTL_TEST_REENCRYPT_ROWS=1000000) to time a large run")
	}
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			rows := reRows(t)
			e := newReEnv(t, kind, rows)
			args := append([]string{"reencrypt", "--table", "users", "--key", "id", "--column", "email", "--progress", "none"}, e.dbArgs...)
			start := time.Now()
			cmd, out := reKeyctlCmd(e, args...)
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			t.Logf("%s, %d rows: keyctl reencrypt %v\n%s", kind, rows, time.Since(start), out)
			start = time.Now()
			cmd, out = reKeyctlCmd(e, append(args, "--verify")...)
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			t.Logf("%s, %d rows: keyctl reencrypt --verify %v", kind, rows, time.Since(start))
			e.check(t)
		})
	}
}

// TestReencryptDBEnvHidden: the variable named by --db-env (a PostgreSQL
// URL, which can carry a password) is not in the environment of the
// provider plugins keyctl reencrypt starts; other variables are.
func TestReencryptDBEnvHidden(t *testing.T) {
	e := newReEnv(t, "postgres", 10)
	dump := filepath.Join(e.dir, "plugin-env.txt")
	e.env = append(e.env, "KEYCTL_TEST_PLUGIN_ENV_DUMP="+dump, "KEYCTL_TEST_VISIBLE=yes")
	url := strings.TrimPrefix(e.env[0], reDBEnv+"=")
	cmd, out := reKeyctlCmd(e, append([]string{"reencrypt", "--table", "users", "--key", "id", "--column", "email", "--progress", "none"}, e.dbArgs...)...)
	if err := cmd.Run(); err != nil {
		t.Fatalf("keyctl reencrypt: %v\n%s", err, out)
	}
	b, err := os.ReadFile(dump)
	if err != nil {
		t.Fatalf("the provider plugin did not dump its environment: %v", err)
	}
	env := string(b)
	if strings.Contains(env, url) || strings.Contains(env, reDBEnv+"=") {
		t.Error("the provider plugin inherited the --db-env variable")
	}
	if !strings.Contains(env, "KEYCTL_TEST_VISIBLE=yes") {
		t.Error("the provider plugin lost an ordinary variable")
	}
	e.check(t)
}
