//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/pgtest"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/store"
	"github.com/keyctl/keyctl/store/sqlstore"
)

// The crash-safety test of `keyctl rewrap --keyset` (issue 6, item 4): a
// keyset of 100,000 DEKs under KEK version 1, the KEK rotated, and the
// rewrap process (this test binary run as keyctl, with its localfile
// provider plugin child) killed with SIGKILL at random moments, at least 20
// times per store. After each kill the store must load and validate; after
// the kills a dry run must count exactly what is left and change nothing,
// and a last run must finish with "failed 0" and every DEK under the
// current KEK version only (2, unless the kills let a job finish and the
// KEK was rotated again: see killLoop), opening to exactly its original
// bytes, with the same ids.

const (
	killDEKs   = 100_000
	killRounds = 20
	killPGEnv  = "KEYCTL_TEST_KEYSET_PG"
)

// killEnv is one keyctl directory (keyctl init: kek.json, keyctl.hcl) whose
// keyset is in the store under test.
type killEnv struct {
	dir, cfg string
	env      []string // extra environment of keyctl
	open     func(ctx context.Context) (core.KeysetStore, error)
	ring     *core.Keyring
	keyID    string
	deks     map[uint32]core.DEK // id -> original DEK
	// cur is the KEK's current version: 2 after the rotation of newKillEnv,
	// one more each time the kills let a job finish and the KEK is rotated
	// again. Every DEK is under cur-1 or cur.
	cur int
	// flags are extra rewrap flags for every run.
	flags []string
}

// keyctlExe returns the path of this test binary, which runs as keyctl when
// started with argv[0] "keyctl" (TestMain, testscript.Main) and serves the
// provider plugins as `__provider TYPE`.
func keyctlExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// keyctlCmd returns keyctl with args as a subprocess in its own process
// group (so that a kill of the group also reaches the provider plugin).
func keyctlCmd(t *testing.T, extraEnv []string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(keyctlExe(t), args...)
	cmd.Args[0] = "keyctl"
	cmd.Env = append(append(os.Environ(), "KEYCTL_CONFIG="), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

// newKillEnv creates the directory, the key file, the store named by kind
// ("file", "sqlite", "postgres") holding n DEKs under KEK version 1 besides
// the one of keyctl init (file store only), and records every DEK.
func newKillEnv(t *testing.T, kind string, n int) *killEnv {
	t.Helper()
	ctx := context.Background()
	e := &killEnv{dir: t.TempDir()}
	if code, _, stderr := runKeyctl(nil, "init", "--dir", e.dir); code != 0 {
		t.Fatalf("keyctl init: %s", stderr)
	}
	e.cfg = filepath.Join(e.dir, "keyctl.hcl")
	src, err := os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	const fileBlock = "keyset {\n  file = \"keyset.json\"\n}\n"
	if !bytes.Contains(src, []byte(fileBlock)) {
		t.Fatalf("keyctl init wrote no %q block", fileBlock)
	}
	var block string
	switch kind {
	case "file":
		// Each transaction of the file store reads and rewrites the whole
		// file (30 MB here): fewer, larger batches than the default 16384
		// keep a run short.
		e.flags = []string{"--batch", "25001"}
		path := filepath.Join(e.dir, "keyset.json")
		e.open = func(context.Context) (core.KeysetStore, error) { return store.OpenFile(path) }
	case "sqlite":
		path := filepath.Join(e.dir, "keyset.db")
		block = fmt.Sprintf("keyset {\n  sqlite = %q\n  name   = \"orders\"\n}\n", path)
		e.open = func(ctx context.Context) (core.KeysetStore, error) {
			return sqlstore.OpenSQLite(ctx, path, sqlstore.Options{Keyset: "orders"})
		}
	case "postgres":
		url := pgtest.Start(t) // skips, or fails in CI, without PostgreSQL
		e.env = []string{killPGEnv + "=" + url}
		block = fmt.Sprintf("keyset {\n  postgres = env(%q)\n}\n", killPGEnv)
		e.open = func(ctx context.Context) (core.KeysetStore, error) {
			return sqlstore.OpenPostgres(ctx, url, sqlstore.Options{})
		}
	default:
		t.Fatalf("unknown store %q", kind)
	}
	if block != "" {
		src = bytes.Replace(src, []byte(fileBlock), []byte(block), 1)
		if err := os.WriteFile(e.cfg, src, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	lp, err := localfile.Open(filepath.Join(e.dir, "kek.json"), localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.keyID = lp.Ref().KeyID
	if e.ring, err = core.NewKeyring(lp); err != nil {
		t.Fatal(err)
	}
	st, err := e.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	e.deks = make(map[uint32]core.DEK, n+1)
	t.Cleanup(func() {
		for _, d := range e.deks {
			d.Zero()
		}
	})
	err = st.Update(ctx, func(ks *core.Keyset) error {
		seen := make(map[uint32]bool, len(ks.DEKs)+n)
		for _, d := range ks.DEKs {
			seen[d.ID] = true
		}
		now := time.Now().UTC().Truncate(time.Second)
		primary := len(ks.DEKs) == 0
		for i := range n {
			id := rand.Uint32()
			for id == 0 || seen[id] {
				id = rand.Uint32()
			}
			seen[id] = true
			ent := core.KeysetEntry{ID: id, State: core.StateDecryptOnly, Created: now}
			if primary && i == n-1 {
				ent.State = core.StatePrimary
			}
			dek, err := core.NewDEK()
			if err != nil {
				return err
			}
			if ent.Wrapped, err = e.ring.Wrap(ctx, dek, ent.Context()); err != nil {
				return err
			}
			e.deks[id] = dek
			ks.DEKs = append(ks.DEKs, ent)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("filling the %s store: %v", kind, err)
	}
	// The DEK keyctl init made (file store): open it in-process.
	ks, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ks.DEKs {
		ent := &ks.DEKs[i]
		if _, ok := e.deks[ent.ID]; ok {
			continue
		}
		dek, err := e.ring.Unwrap(ctx, ent.Wrapped, ent.Context())
		if err != nil {
			t.Fatalf("DEK %08x: %v", ent.ID, err)
		}
		e.deks[ent.ID] = dek
	}
	if len(ks.DEKs) != len(e.deks) || len(e.deks) < n {
		t.Fatalf("store holds %d DEKs, want %d", len(ks.DEKs), len(e.deks))
	}
	t.Logf("%s store: %d DEKs under KEK version 1 in %v", kind, len(e.deks), time.Since(start).Round(time.Millisecond))

	e.cur = 1
	e.rotate(t)
	return e
}

// rotate rotates the KEK with keyctl: every DEK then needs a rewrap.
func (e *killEnv) rotate(t *testing.T) {
	t.Helper()
	cmd, stdout, stderr := keyctlCmd(t, e.env, "-c", e.cfg, "rotate")
	want := fmt.Sprintf("KEK version %d is now current", e.cur+1)
	if err := cmd.Run(); err != nil || !strings.Contains(stdout.String(), want) {
		t.Fatalf("keyctl rotate: %v: %s%s", err, stdout, stderr)
	}
	e.cur++
}

// versions returns the KEK versions of ent's wraps, comma-separated, and
// fails for a wrap under another KEK.
func (e *killEnv) versions(ent *core.KeysetEntry) string {
	var v []string
	for _, s := range ent.Wrapped.Stanzas {
		if s.Provider != "localfile" || s.KeyID != e.keyID {
			return "foreign:" + core.StanzaLabel(s)
		}
		v = append(v, s.KeyVersion)
	}
	return strings.Join(v, ",")
}

// rewrapArgs are the arguments of every rewrap run.
func (e *killEnv) rewrapArgs(extra ...string) []string {
	args := append([]string{"-c", e.cfg, "rewrap", "--keyset", "--progress", "none"}, e.flags...)
	return append(args, extra...)
}

// runRewrap runs keyctl rewrap to the end and returns its stdout, stderr
// and how long it took.
func (e *killEnv) runRewrap(t *testing.T, extra ...string) (stdout, stderr string, took time.Duration, err error) {
	t.Helper()
	cmd, out, errb := keyctlCmd(t, e.env, e.rewrapArgs(extra...)...)
	start := time.Now()
	err = cmd.Run()
	return out.String(), errb.String(), time.Since(start), err
}

// waitGroupGone waits until no live process of group pgid is left (the
// plugin included), so that the next run starts on a quiet store. Zombies
// do not count: a killed keyctl's plugin is reparented to init, which may
// reap it late.
func waitGroupGone(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for groupAlive(pgid) {
		if time.Now().After(deadline) {
			t.Fatalf("process group %d still alive 10s after SIGKILL", pgid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// groupAlive reports whether a process of group pgid is running (in
// /proc/PID/stat: pid (comm) state ppid pgrp ...).
func groupAlive(pgid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

func TestRewrapKill(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: 3 stores of 100,000 DEKs")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KEYCTL_TEST_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("KEYCTL_TEST_KILL_SEED: %v", err)
		}
	}
	t.Logf("seed %d (rerun with KEYCTL_TEST_KILL_SEED=%d)", seed, seed)
	// The file store (one JSON file, read whole per page) takes the longest;
	// it runs beside the two SQL stores, which run one after the other.
	stores := []struct {
		group  string
		kinds  []string
		window time.Duration // first kill window
	}{
		{"json", []string{"file"}, 6 * time.Second},
		{"sql", []string{"sqlite", "postgres"}, 1500 * time.Millisecond},
	}
	for i, g := range stores {
		t.Run(g.group, func(t *testing.T) {
			t.Parallel()
			for j, kind := range g.kinds {
				t.Run(kind, func(t *testing.T) {
					rng := rand.New(rand.NewPCG(seed, uint64(10*i+j)))
					start := time.Now()
					e := newKillEnv(t, kind, killDEKs)
					e.killLoop(t, rng, g.window)
					e.finish(t)
					t.Logf("%s: %v in all", kind, time.Since(start).Round(time.Millisecond))
				})
			}
		})
	}
}

// killLoop starts keyctl rewrap and SIGKILLs its process group (keyctl
// and its provider plugin) after a random delay, until killRounds runs were
// killed; after each kill the store must load and validate.
//
// The delay is uniform in [0, window). The window adapts so that the kills
// are spread over the whole job rather than all landing in its first
// moments: a rerun skips what is already current, so each killed run should
// advance about left/(rounds left+4) DEKs, which keeps work for the later
// kills, the dry run and the final run. A kill that lands before any DEK
// moved widens the window; one that moved more narrows it. A run that
// completes before its kill is counted, not killed, and shortens the window.
// When the job is done before the last kill (the file store moves 25,001
// DEKs per transaction, so a few kills can finish it), the KEK is rotated
// again so that every kill interrupts a job with work left.
func (e *killEnv) killLoop(t *testing.T, rng *rand.Rand, window time.Duration) {
	t.Helper()
	total := len(e.deks)
	left := e.checkStore(t)
	if left != total {
		t.Fatalf("%d of %d DEKs under version %d before the first run", left, total, e.cur-1)
	}
	kills, completed, progressed, rotations := 0, 0, 0, 0
	var checking time.Duration
	var moved []string
	for kills < killRounds {
		if completed > killRounds {
			t.Fatalf("%d runs completed before their kill and %d were killed: the window does not adapt", completed, kills)
		}
		if left == 0 {
			e.rotate(t)
			rotations++
			left = total
		}
		delay := time.Duration(rng.Int64N(int64(window)))
		cmd, stdout, stderr := keyctlCmd(t, e.env, e.rewrapArgs()...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pgid := cmd.Process.Pid
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		start := time.Now()
		killed := false
		select {
		case err := <-exited:
			if err != nil || !strings.Contains(stdout.String(), "failed 0") {
				t.Fatalf("rewrap exited before its kill: %v: %s%s", err, stdout, stderr)
			}
		case <-time.After(delay):
			if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill -KILL -%d: %v", pgid, err)
			}
			err := <-exited
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
				killed = true
			} else if err != nil || !strings.Contains(stdout.String(), "failed 0") {
				// It may have finished just before the signal.
				t.Fatalf("rewrap neither killed nor successful: %v: %s%s", err, stdout, stderr)
			}
		}
		took := time.Since(start)
		waitGroupGone(t, pgid) // the plugin too
		checkStart := time.Now()
		now := e.checkStore(t) // loads and validates every entry
		checking += time.Since(checkStart)
		d := left - now
		if d < 0 {
			t.Fatalf("DEKs went back to version %d: %d before, %d after", e.cur-1, left, now)
		}
		left = now
		if !killed {
			completed++
			if left != 0 {
				t.Fatalf("rewrap succeeded but left %d DEKs under version %d: %s", left, e.cur-1, stdout)
			}
			window = min(window, took) * 2 / 3
			t.Logf("run completed in %v before its kill at %v: %s", took.Round(time.Millisecond), delay.Round(time.Millisecond), strings.TrimSpace(stdout.String()))
			continue
		}
		kills++
		moved = append(moved, fmt.Sprintf("%v:%d", delay.Round(10*time.Millisecond), d))
		target := float64(left+d) / float64(killRounds-kills+4)
		switch {
		case d == 0:
			window = min(window*13/10, time.Minute)
		default:
			progressed++
			f := max(0.5, min(1.3, target/float64(d)))
			window = time.Duration(float64(window) * f)
		}
	}
	t.Logf("%d kills (delay:DEKs moved %s), %d run(s) completed before their kill, KEK rotated again %d time(s); %d of %d DEKs left under version %d; %v spent loading the store after the runs",
		kills, strings.Join(moved, " "), completed, rotations, left, total, e.cur-1, checking.Round(time.Millisecond))
	if progressed < 3 {
		t.Errorf("only %d of %d kills landed after some DEKs moved", progressed, kills)
	}
}

// checkStore loads the store, which validates every entry, and checks that
// it holds exactly the original DEK ids, each with one wrap, under KEK
// version cur-1 or cur. It returns how many are still under cur-1.
func (e *killEnv) checkStore(t *testing.T) int {
	t.Helper()
	left, _ := e.countLeft(t, e.load(t), false)
	return left
}

// countLeft returns how many DEKs of ks are still under version cur-1, and a
// digest of ks when asked.
func (e *killEnv) countLeft(t *testing.T, ks *core.Keyset, withDigest bool) (left int, d [32]byte) {
	t.Helper()
	for i := range ks.DEKs {
		switch v := e.versions(&ks.DEKs[i]); v {
		case strconv.Itoa(e.cur - 1):
			left++
		case strconv.Itoa(e.cur):
		default:
			t.Fatalf("DEK %08x has wraps under versions %q, want %d or %d", ks.DEKs[i].ID, v, e.cur-1, e.cur)
		}
	}
	if withDigest {
		d = digest(t, ks)
	}
	return left, d
}

// load returns the stored keyset and checks its DEK ids.
func (e *killEnv) load(t *testing.T) *core.Keyset {
	t.Helper()
	ctx := context.Background()
	st, err := e.open(ctx)
	if err != nil {
		t.Fatalf("opening the store: %v", err)
	}
	defer st.Close()
	ks, err := st.Load(ctx)
	if err != nil {
		t.Fatalf("the store no longer loads: %v", err)
	}
	if len(ks.DEKs) != len(e.deks) {
		t.Fatalf("store holds %d DEKs, want %d", len(ks.DEKs), len(e.deks))
	}
	seen := make(map[uint32]bool, len(ks.DEKs))
	for _, ent := range ks.DEKs {
		if _, ok := e.deks[ent.ID]; !ok || seen[ent.ID] {
			t.Fatalf("store holds unknown or repeated DEK id %08x", ent.ID)
		}
		seen[ent.ID] = true
	}
	return ks
}

// digest hashes every entry's id, state and wraps.
func digest(t *testing.T, ks *core.Keyset) [32]byte {
	t.Helper()
	h := sha256.New()
	for _, ent := range ks.DEKs {
		b, err := ent.Wrapped.MarshalBinary()
		if err != nil {
			t.Fatalf("DEK %08x: %v", ent.ID, err)
		}
		fmt.Fprintf(h, "%08x %s %d\n", ent.ID, ent.State, len(b))
		h.Write(b)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

// finish checks a dry run, then runs rewrap to the end and checks every DEK
// in-process.
func (e *killEnv) finish(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	total := len(e.deks)
	left, before := e.countLeft(t, e.load(t), true)

	stdout, stderr, took, err := e.runRewrap(t, "--dry-run")
	if err != nil {
		t.Fatalf("rewrap --dry-run: %v: %s%s", err, stdout, stderr)
	}
	want := fmt.Sprintf("would rewrap %d, already current %d\n", left, total-left)
	if left > 0 {
		want += fmt.Sprintf("  would replace %d wrap(s) under localfile:%s@%d\n  new wraps under localfile:%s@%d\n", left, e.keyID, e.cur-1, e.keyID, e.cur)
	}
	if stdout != want {
		t.Fatalf("rewrap --dry-run printed\n%s\nwant\n%s", stdout, want)
	}
	if digest(t, e.load(t)) != before {
		t.Fatal("rewrap --dry-run changed the store")
	}
	t.Logf("dry run (%v): %s", took.Round(time.Millisecond), strings.ReplaceAll(strings.TrimSpace(stdout), "\n", ";"))

	stdout, stderr, took, err = e.runRewrap(t)
	wantLine := fmt.Sprintf("rewrapped %d, already current %d, failed 0\n", left, total-left)
	if err != nil || stdout != wantLine {
		t.Fatalf("final rewrap: %v: stdout %q, want %q; stderr %s", err, stdout, wantLine, lastLine(stderr))
	}
	t.Logf("final run (%v): %s", took.Round(time.Millisecond), strings.TrimSpace(stdout))

	// A kill during a file store write leaves its temporary file behind
	// (nothing removes it later); reported, not failed.
	if tmps, _ := filepath.Glob(filepath.Join(e.dir, ".keyset.json.tmp-*")); len(tmps) > 0 {
		var size int64
		for _, f := range tmps {
			if fi, err := os.Stat(f); err == nil {
				size += fi.Size()
			}
		}
		t.Logf("%d temporary keyset file(s) of killed writes left in the directory (%d MB)", len(tmps), size>>20)
	}
	ks := e.load(t) // the same ids, each once
	for i := range ks.DEKs {
		ent := &ks.DEKs[i]
		orig := e.deks[ent.ID]
		if v := e.versions(ent); v != strconv.Itoa(e.cur) {
			t.Fatalf("DEK %08x: wraps under versions %q, want %d only", ent.ID, v, e.cur)
		}
		dek, err := e.ring.Unwrap(ctx, ent.Wrapped, ent.Context())
		if err != nil {
			t.Fatalf("DEK %08x: %v", ent.ID, err)
		}
		if !dek.Equal(orig) {
			t.Fatalf("DEK %08x opens to other bytes than it held before the rewrap", ent.ID)
		}
		dek.Zero()
	}
}
