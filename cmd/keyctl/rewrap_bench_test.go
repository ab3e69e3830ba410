package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/store/sqlstore"
)

// The bulk rewrap benchmarks run `keyctl rewrap --keyset` (the CLI in this
// process, the provider as a plugin subprocess, as in production) over a
// SQLite keyset, after `keyctl rotate`, and report keys/s; impl=bare is the
// same provider in-process rewrapping one key at a time (unwrap, wrap),
// measured in the same run:
//
//	KEYCTL_BENCH_DEKS=1000000 go test -run '^$' -bench RewrapKeyset/provider=localfile -benchtime 1x -timeout 30m ./cmd/keyctl/
//
// KEYCTL_BENCH_DEKS defaults to 100,000.

func benchDEKs(b *testing.B, env string, def int) int {
	if v := os.Getenv(env); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive number", env, v)
		}
		return n
	}
	return def
}

// sqliteKeysetConfig turns the keyctl.hcl that init wrote in dir into one
// whose keyset is the SQLite database keyset.db.
func sqliteKeysetConfig(tb testing.TB, dir string) string {
	tb.Helper()
	cfg := filepath.Join(dir, "keyctl.hcl")
	src, err := os.ReadFile(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	out := strings.Replace(string(src), `file = "keyset.json"`, `sqlite = "keyset.db"`, 1)
	if out == string(src) {
		tb.Fatal("keyctl.hcl: no keyset file line to replace")
	}
	if err := os.WriteFile(cfg, []byte(out), 0o600); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// fillKeyset adds n decrypt-only DEKs wrapped by ring to the SQLite keyset
// at path, in transactions of 50,000 (built directly: Keyset.AddDEK scans
// the keyset for each new id and primary).
func fillKeyset(tb testing.TB, path string, ring *core.Keyring, n int) {
	tb.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, path, sqlstore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	used := map[uint32]bool{}
	now := time.Now().UTC().Truncate(time.Second)
	for done := 0; done < n; {
		k := min(50_000, n-done)
		entries := make([]core.KeysetEntry, 0, k)
		for len(entries) < k {
			id := rand.Uint32()
			if id == 0 || used[id] {
				continue
			}
			used[id] = true
			e := core.KeysetEntry{ID: id, State: core.StateDecryptOnly, Created: now}
			if done == 0 && len(entries) == 0 {
				e.State = core.StatePrimary
			}
			dek, _ := core.NewDEK()
			e.Wrapped, err = ring.Wrap(ctx, dek, e.Context())
			dek.Zero()
			if err != nil {
				tb.Fatal(err)
			}
			entries = append(entries, e)
		}
		if err := st.Update(ctx, func(ks *core.Keyset) error {
			ks.DEKs = append(ks.DEKs, entries...)
			return nil
		}); err != nil {
			tb.Fatal(err)
		}
		done += k
	}
}

// bareRate measures p rewrapping single keys in-process, one at a time
// (unwrap, then wrap under the current version), for about d, in keys/s.
func bareRate(b *testing.B, p core.KeyProvider, d time.Duration) float64 {
	ctx := context.Background()
	dek, _ := core.NewDEK()
	ec := core.Context{core.DEKContextKey: "00000001"}
	s, err := p.WrapKey(ctx, dek, ec)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		got, err := p.UnwrapKey(ctx, s, ec)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.WrapKey(ctx, got, ec); err != nil {
			b.Fatal(err)
		}
		got.Zero()
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// runRewrapBench rotates the primary KEK and times keyctl rewrap --keyset,
// b.N times, checking that every DEK was rewrapped.
func runRewrapBench(b *testing.B, cfg string, n int) {
	var total time.Duration
	for range b.N {
		b.StopTimer()
		if code, _, stderr := runKeyctl(nil, "-c", cfg, "rotate"); code != 0 {
			b.Fatalf("rotate: %s", stderr)
		}
		b.StartTimer()
		t0 := time.Now()
		code, stdout, stderr := runKeyctl(nil, append([]string{"-c", cfg, "rewrap", "--keyset", "--progress", "none"}, benchRewrapFlags()...)...)
		total += time.Since(t0)
		if code != 0 || strings.TrimSpace(stdout) != fmt.Sprintf("rewrapped %d, already current 0, failed 0", n) {
			b.Fatalf("rewrap: exit %d: %s %s", code, stdout, stderr)
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "keys/s")
	b.ReportMetric(total.Seconds()/float64(b.N), "s/run")
}

func BenchmarkRewrapKeyset(b *testing.B) {
	b.Run("provider=localfile", func(b *testing.B) {
		n := benchDEKs(b, "KEYCTL_BENCH_DEKS", 100_000)
		dir := b.TempDir()
		if code, _, stderr := runKeyctl(nil, "init", "--dir", dir); code != 0 {
			b.Fatalf("init: %s", stderr)
		}
		cfg := sqliteKeysetConfig(b, dir)
		lp, err := localfile.Open(filepath.Join(dir, "kek.json"), localfile.Options{})
		if err != nil {
			b.Fatal(err)
		}
		ring, _ := core.NewKeyring(lp)
		fillKeyset(b, filepath.Join(dir, "keyset.db"), ring, n)
		b.Run("impl=bare", func(b *testing.B) {
			b.ReportMetric(bareRate(b, lp, time.Second), "keys/s")
		})
		b.Run("impl=keyctl", func(b *testing.B) {
			runRewrapBench(b, cfg, n)
		})
	})
}

// benchRewrapFlags returns extra rewrap flags from KEYCTL_BENCH_FLAGS.
func benchRewrapFlags() []string { return strings.Fields(os.Getenv("KEYCTL_BENCH_FLAGS")) }
