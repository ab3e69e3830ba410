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
	"github.com/keyctl/keyctl/internal/pgtest"
	"github.com/keyctl/keyctl/providers/awskms"
	"github.com/keyctl/keyctl/providers/awskms/awskmstest"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
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
// KEYCTL_BENCH_DEKS defaults to 100,000 (local file); the vault providers
// use KEYCTL_BENCH_VAULT_DEKS, default 10,000:
//
//	go test -run '^$' -bench 'RewrapKeyset(PKCS11|AWSKMS)' -benchtime 1x ./cmd/keyctl/
//
// The PKCS#11 benchmark rewraps onto a new SoftHSM2 key version after `keyctl
// rotate` (unwrap, wrap, verify inside the plugin); provider=awskms moves
// the keyset between two KMS emulator keys with --to (KMS ReEncrypt, then
// the new wrap unwrapped and compared), as KMS key rotation is not
// something the emulator does on demand.

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
	st, err := sqlstore.OpenSQLite(context.Background(), path, sqlstore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	defer st.Close()
	fillStore(tb, st, ring, n)
}

// fillStore is fillKeyset for any store.
func fillStore(tb testing.TB, st core.KeysetStore, ring *core.Keyring, n int) {
	tb.Helper()
	ctx := context.Background()
	var err error
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
	return bareLoop(b, p, d, func(ctx context.Context, s core.Stanza, ec core.Context) error {
		got, err := p.UnwrapKey(ctx, s, ec)
		if err != nil {
			return err
		}
		defer got.Zero()
		_, err = p.WrapKey(ctx, got, ec)
		return err
	})
}

// bareLoop runs op on one wrap of p for about d and returns ops/s.
func bareLoop(b *testing.B, p core.KeyProvider, d time.Duration, op func(ctx context.Context, s core.Stanza, ec core.Context) error) float64 {
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
		if err := op(ctx, s, ec); err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// runRewrapBench times `keyctl rewrap --keyset` with args, b.N times,
// after prepare(i) (untimed), checking that every DEK was rewrapped.
func runRewrapBench(b *testing.B, cfg string, n int, prepare func(i int) []string) {
	var total time.Duration
	for i := range b.N {
		b.StopTimer()
		args := prepare(i)
		b.StartTimer()
		t0 := time.Now()
		code, stdout, stderr := runKeyctl(nil, append(append([]string{"-c", cfg, "rewrap", "--keyset", "--progress", "none"}, args...), benchRewrapFlags()...)...)
		total += time.Since(t0)
		if code != 0 || strings.TrimSpace(stdout) != fmt.Sprintf("rewrapped %d, already current 0, failed 0", n) {
			b.Fatalf("rewrap: exit %d: %s %s", code, stdout, stderr)
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "keys/s")
	b.ReportMetric(total.Seconds()/float64(b.N), "s/run")
}

// rotateFirst is a runRewrapBench prepare step: keyctl rotate.
func rotateFirst(b *testing.B, cfg string) func(int) []string {
	return func(int) []string {
		if code, _, stderr := runKeyctl(nil, "-c", cfg, "rotate"); code != 0 {
			b.Fatalf("rotate: %s", stderr)
		}
		return nil
	}
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
			runRewrapBench(b, cfg, n, rotateFirst(b, cfg))
		})
	})
}

// BenchmarkRewrapKeysetPostgres is the local-file case of
// BenchmarkRewrapKeyset with the keyset in PostgreSQL (a throwaway loopback
// cluster).
func BenchmarkRewrapKeysetPostgres(b *testing.B) {
	n := benchDEKs(b, "KEYCTL_BENCH_DEKS", 100_000)
	url := pgtest.Start(b)
	b.Setenv("KEYCTL_BENCH_KEYSET_URL", url)
	dir := b.TempDir()
	if code, _, stderr := runKeyctl(nil, "init", "--dir", dir); code != 0 {
		b.Fatalf("init: %s", stderr)
	}
	cfg := filepath.Join(dir, "keyctl.hcl")
	src, err := os.ReadFile(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(src), `file = "keyset.json"`, `postgres = env("KEYCTL_BENCH_KEYSET_URL")`, 1)), 0o600); err != nil {
		b.Fatal(err)
	}
	lp, err := localfile.Open(filepath.Join(dir, "kek.json"), localfile.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ring, _ := core.NewKeyring(lp)
	st, err := sqlstore.OpenPostgres(context.Background(), url, sqlstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	fillStore(b, st, ring, n)
	st.Close()
	b.Run("impl=keyctl", func(b *testing.B) {
		runRewrapBench(b, cfg, n, rotateFirst(b, cfg))
	})
}

// BenchmarkRewrapKeysetPKCS11 is BenchmarkRewrapKeyset on SoftHSM2 (its own
// function: SoftHSM's configuration file cannot name a token directory
// whose path holds "=", as sub-benchmark directories do).
func BenchmarkRewrapKeysetPKCS11(b *testing.B) {
	{
		if !pkcs11.Available {
			b.Skip("built without cgo: no PKCS#11 provider")
		}
		n := benchDEKs(b, "KEYCTL_BENCH_VAULT_DEKS", 10_000)
		h := softhsmtest.Setup(b)
		h.InitToken(b, e2eToken, softhsmtest.UserPIN)
		h.Keygen(b, e2eToken, softhsmtest.UserPIN, e2eKEK, softhsmtest.KeyOptions{ID: "00000001"})
		b.Setenv(e2ePINEnv, softhsmtest.UserPIN)
		dir := b.TempDir()
		cfg := filepath.Join(dir, "keyctl.hcl")
		src := fmt.Sprintf("provider \"pkcs11\" \"hsm\" {\n  module = %q\n  token_label = %q\n  pin_env = %q\n  key_label = %q\n}\nkeyring {\n  primary = \"hsm\"\n}\nkeyset {\n  sqlite = \"keyset.db\"\n}\n",
			h.Module, e2eToken, e2ePINEnv, e2eKEK)
		if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
			b.Fatal(err)
		}
		hp, err := pkcs11.New(context.Background(), pkcs11.Config{Module: h.Module, TokenLabel: e2eToken, PIN: []byte(softhsmtest.UserPIN), KeyLabel: e2eKEK})
		if err != nil {
			b.Fatal(err)
		}
		defer hp.Close()
		ring, _ := core.NewKeyring(hp)
		fillKeyset(b, filepath.Join(dir, "keyset.db"), ring, n)
		b.Run("impl=bare", func(b *testing.B) {
			b.ReportMetric(bareRate(b, hp, time.Second), "keys/s")
		})
		b.Run("impl=keyctl", func(b *testing.B) {
			runRewrapBench(b, cfg, n, rotateFirst(b, cfg))
		})
	}
}

// BenchmarkRewrapKeysetAWSKMS is BenchmarkRewrapKeyset on the KMS emulator.
func BenchmarkRewrapKeysetAWSKMS(b *testing.B) {
	{
		n := benchDEKs(b, "KEYCTL_BENCH_VAULT_DEKS", 10_000)
		keyA, keyB := awskmstest.NewKeyID(), awskmstest.NewKeyID()
		emu := awskmstest.Start(b, awskmstest.Seed{Keys: []awskmstest.Key{{ID: keyA}, {ID: keyB}}})
		for _, kv := range emu.Env() {
			name, v, _ := strings.Cut(kv, "=")
			b.Setenv(name, v)
		}
		dir := b.TempDir()
		cfg := filepath.Join(dir, "keyctl.hcl")
		src := fmt.Sprintf("provider \"awskms\" \"a\" {\n  key_id = %q\n  endpoint = %q\n}\nprovider \"awskms\" \"b\" {\n  key_id = %q\n  endpoint = %q\n}\nkeyring {\n  primary = \"a\"\n  decrypt_only = [\"b\"]\n}\nkeyset {\n  sqlite = \"keyset.db\"\n}\n",
			keyA, emu.Endpoint, keyB, emu.Endpoint)
		if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		kp, err := awskms.New(ctx, awskms.Config{KeyID: keyB, Endpoint: emu.Endpoint})
		if err != nil {
			b.Fatal(err)
		}
		ka, err := awskms.New(ctx, awskms.Config{KeyID: keyA, Endpoint: emu.Endpoint})
		if err != nil {
			b.Fatal(err)
		}
		ring, _ := core.NewKeyring(ka)
		fillKeyset(b, filepath.Join(dir, "keyset.db"), ring, n)
		b.Run("impl=bare", func(b *testing.B) {
			// One ReEncrypt from key A to key B at a time.
			b.ReportMetric(bareLoop(b, ka, time.Second, func(ctx context.Context, s core.Stanza, ec core.Context) error {
				_, err := kp.RewrapKey(ctx, s, ec)
				return err
			}), "keys/s")
		})
		onA := true // where the keyset is, across runs and -count
		b.Run("impl=keyctl", func(b *testing.B) {
			runRewrapBench(b, cfg, n, func(int) []string {
				// Back and forth between the two keys.
				onA = !onA
				if !onA {
					return []string{"--to", "b"}
				}
				return []string{"--to", "a"}
			})
		})
	}
}

// benchRewrapFlags returns extra rewrap flags from KEYCTL_BENCH_FLAGS.
func benchRewrapFlags() []string { return strings.Fields(os.Getenv("KEYCTL_BENCH_FLAGS")) }
