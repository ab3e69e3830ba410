// Package pgtest starts a throwaway PostgreSQL server for tests, shared by
// the packages whose tests need one (store/sqlstore, store/sqltable,
// cmd/keyctl).
package pgtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Start returns the URL of a PostgreSQL database for the tests:
// KEYCTL_TEST_PG_URL if set, else a throwaway cluster that it creates in a
// temporary directory (run as the postgres user when the tests run as root:
// initdb refuses root), listening on 127.0.0.1 only, on a free port, with a
// private socket directory, and stops in t.Cleanup. Without PostgreSQL the
// test is skipped, or fails when CI=true.
//
// The URL carries a password; do not log it.
func Start(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("KEYCTL_TEST_PG_URL"); u != "" {
		return u
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Strings(bins) // the highest version last (as long as versions have the same digit count)
	if len(bins) == 0 {
		msg := "PostgreSQL not found under /usr/lib/postgresql/*/bin (apt-get install -y postgresql), or set KEYCTL_TEST_PG_URL"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bin := filepath.Dir(bins[len(bins)-1])

	dir, err := os.MkdirTemp("", "keyctl-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	asRoot := os.Geteuid() == 0
	run := func(args ...string) {
		t.Helper()
		var cmd *exec.Cmd
		if asRoot {
			cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
		} else {
			cmd = exec.Command(args[0], args[1:]...)
		}
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	var pw [16]byte
	rand.Read(pw[:])
	password := hex.EncodeToString(pw[:])
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sock"), 0o700); err != nil {
		t.Fatal(err)
	}
	if asRoot {
		if err := os.Chmod(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("chown", "-R", "postgres:postgres", dir).CombinedOutput()
		if err != nil {
			t.Fatalf("chown postgres %s: %v\n%s", dir, err, out)
		}
	}
	data := filepath.Join(dir, "data")
	run(filepath.Join(bin, "initdb"), "-D", data, "-U", "keyctl", "--pwfile", filepath.Join(dir, "pw"), "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--no-instructions")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off", port, filepath.Join(dir, "sock"))
	run(filepath.Join(bin, "pg_ctl"), "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start")
	t.Cleanup(func() {
		var cmd *exec.Cmd
		args := []string{filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"}
		if asRoot {
			cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
		} else {
			cmd = exec.Command(args[0], args[1:]...)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("stopping PostgreSQL: %v\n%s", err, out)
		}
	})
	return fmt.Sprintf("postgres://keyctl:%s@127.0.0.1:%d/postgres?sslmode=disable", password, port)
}
