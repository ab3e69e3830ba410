package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestWithoutEnv(t *testing.T) {
	env := []string{"A=1", "PG_URL=postgres://u:secret@h/db", "B=x=y", "PG_URL_2=keep"}
	got := withoutEnv(env, []string{"PG_URL"})
	want := []string{"A=1", "B=x=y", "PG_URL_2=keep"}
	if !slices.Equal(got, want) {
		t.Fatalf("withoutEnv = %q, want %q", got, want)
	}
}

// TestProviderEnvHidesKeysetURL: the keyset's PostgreSQL URL (it can carry
// a password) is not in a provider plugin's environment; other variables
// are.
func TestProviderEnvHidesKeysetURL(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := runKeyctl(nil, "init", "--dir", dir); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	cfg := filepath.Join(dir, "keyctl.hcl")
	src, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pg := strings.Replace(string(src), `file = "keyset.json"`, `postgres = env("KEYCTL_TEST_KEYSET_URL")`, 1)
	if err := os.WriteFile(cfg, []byte(pg), 0o600); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(dir, "env.txt")
	t.Setenv("KEYCTL_TEST_PLUGIN_ENV_DUMP", dump)
	t.Setenv("KEYCTL_TEST_KEYSET_URL", "postgres://app:s3cret-pw@db.invalid/keys")
	t.Setenv("KEYCTL_TEST_VISIBLE", "yes")
	if code, _, stderr := runKeyctl(nil, "-c", cfg, "wrap", "--out", filepath.Join(dir, "a.wk")); code != 0 {
		t.Fatalf("wrap: %s", stderr)
	}
	b, err := os.ReadFile(dump)
	if err != nil {
		t.Fatalf("the plugin did not dump its environment: %v", err)
	}
	env := string(b)
	if strings.Contains(env, "s3cret-pw") || strings.Contains(env, "KEYCTL_TEST_KEYSET_URL=") {
		t.Error("the provider plugin inherited the keyset's PostgreSQL URL")
	}
	if !strings.Contains(env, "KEYCTL_TEST_VISIBLE=yes") {
		t.Error("the provider plugin lost an ordinary variable")
	}
}
