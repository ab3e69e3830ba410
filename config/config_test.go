package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/plugin"
)

const good = `
provider "localfile" "local" {
  key_file       = "kek.json"
  passphrase_env = "KEYCTL_PASSPHRASE"
}
provider "localfile" "old" {
  key_file = "/abs/old.json"
}
keyring {
  primary      = "local"
  decrypt_only = ["old"]
}
keyset {
  file = "sub/keyset.json"
}
`

func TestParseGood(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "keyctl.hcl")
	cfg, err := Parse([]byte(good), name)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Path != name || cfg.Dir != dir {
		t.Errorf("Path, Dir = %q, %q", cfg.Path, cfg.Dir)
	}
	if len(cfg.Providers) != 2 {
		t.Fatalf("%d providers", len(cfg.Providers))
	}
	p, ok := cfg.Provider("local")
	if !ok || p.Type != TypeLocalFile || p.Values == nil {
		t.Fatalf("provider local: %+v", p)
	}
	if want := filepath.Join(dir, "kek.json"); p.Values.String("key_file") != want {
		t.Errorf("key_file = %q, want %q", p.Values.String("key_file"), want)
	}
	if p.SecretEnv["passphrase"] != "KEYCTL_PASSPHRASE" {
		t.Errorf("passphrase_env = %q", p.SecretEnv["passphrase"])
	}
	if p.Range.Start.Line != 2 {
		t.Errorf("range = %v", p.Range)
	}
	old, _ := cfg.Provider("old")
	if old.Values.String("key_file") != "/abs/old.json" || old.SecretEnv["passphrase"] != "" {
		t.Errorf("old = %+v", old.Values)
	}
	if cfg.Keyring.Primary != "local" || len(cfg.Keyring.DecryptOnly) != 1 || cfg.Keyring.DecryptOnly[0] != "old" {
		t.Errorf("keyring = %+v", cfg.Keyring)
	}
	if want := filepath.Join(dir, "sub", "keyset.json"); cfg.Keyset.File != want {
		t.Errorf("keyset = %q, want %q", cfg.Keyset.File, want)
	}
	if _, ok := cfg.Provider("nope"); ok {
		t.Error("Provider(nope) found")
	}
}

func TestParseErrors(t *testing.T) {
	const ring = "keyring {\n  primary = \"local\"\n}\nkeyset {\n  file = \"ks.json\"\n}\n"
	const prov = "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n}\n"
	tests := []struct {
		name, src string
		want      []string // substrings of the error
		line      int      // line of the first diagnostic, 0 = don't care
		notWant   string
	}{
		{"syntax", "provider \"localfile\" \"local\" {\n  key_file = \n}\n", []string{"keyctl.hcl:"}, 0, ""},
		{"unknown type", "provider \"vault\" \"local\" {\n}\n" + ring, []string{"Unknown provider type", `"vault"`, "localfile"}, 1, ""},
		{"unknown name", prov + "keyring {\n  primary = \"nope\"\n}\nkeyset {\n  file = \"k\"\n}\n", []string{"Unknown provider name", `"nope"`, "keyctl.hcl:5,", `in: primary = "nope"`}, 5, ""},
		{"unknown decrypt-only", prov + "keyring {\n  primary = \"local\"\n  decrypt_only = [\"x\"]\n}\nkeyset {\n  file = \"k\"\n}\n", []string{"Unknown provider name", `"x"`}, 0, ""},
		{"duplicate provider", prov + prov + ring, []string{"Duplicate provider name", "keyctl.hcl:4,"}, 4, ""},
		{"duplicate in keyring", prov + "keyring {\n  primary = \"local\"\n  decrypt_only = [\"local\"]\n}\nkeyset {\n  file = \"k\"\n}\n", []string{"Duplicate provider in keyring"}, 0, ""},
		{"no provider", ring, []string{"Missing provider block"}, 1, ""},
		{"no keyring", prov + "keyset {\n  file = \"k\"\n}\n", []string{"Missing keyring block"}, 0, ""},
		{"no keyset", prov + "keyring {\n  primary = \"local\"\n}\n", []string{"Missing keyset block"}, 0, ""},
		{"two keyrings", prov + ring + "keyring {\n  primary = \"local\"\n}\n", []string{"Duplicate keyring block"}, 0, ""},
		{"two keysets", prov + ring + "keyset {\n  file = \"x\"\n}\n", []string{"Duplicate keyset block"}, 0, ""},
		{"passphrase literal", "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n  passphrase = \"hunter2\"\n}\n" + ring,
			[]string{"Secret in configuration", "passphrase_env", "keyctl.hcl:3,"}, 3, "hunter2"},
		{"passphrase-ish unknown attribute", "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n  password = \"hunter2\"\n}\n" + ring,
			[]string{"Unsupported argument", "<redacted>"}, 3, "hunter2"},
		{"bad passphrase_env", "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n  passphrase_env = \"hunter 2\"\n}\n" + ring,
			[]string{"Invalid passphrase_env"}, 0, "hunter"},
		{"missing key_file", "provider \"localfile\" \"local\" {\n}\n" + ring, []string{"key_file"}, 0, ""},
		{"empty key_file", "provider \"localfile\" \"local\" {\n  key_file = \"\"\n}\n" + ring, []string{"Empty key_file"}, 0, ""},
		{"unknown attribute", "provider \"localfile\" \"local\" {\n  key_file = \"k\"\n  colour = \"blue\"\n}\n" + ring, []string{"Unsupported argument", `colour = "blue"`}, 3, ""},
		{"unknown block", prov + ring + "plugin \"x\" {\n}\n", []string{"Unsupported block type"}, 0, ""},
		{"bad name", "provider \"localfile\" \"1bad name\" {\n  key_file = \"k\"\n}\n" + ring, []string{"Invalid provider name"}, 0, ""},
		{"empty keyset file", prov + "keyring {\n  primary = \"local\"\n}\nkeyset {\n  file = \"\"\n}\n", []string{"Where is the keyset?"}, 0, ""},
		{"two stores", prov + "keyring {\n  primary = \"local\"\n}\nkeyset {\n  file = \"k\"\n  sqlite = \"k.db\"\n}\n", []string{"Where is the keyset?"}, 0, ""},
		{"postgres literal", prov + "keyring {\n  primary = \"local\"\n}\nkeyset {\n  postgres = \"postgres://u:s3cret@db/x\"\n}\n", []string{"Invalid postgres", "env("}, 0, "s3cret"},
		{"postgres both", prov + "keyring {\n  primary = \"local\"\n}\nkeyset {\n  postgres = env(\"A\")\n  postgres_env = \"B\"\n}\n", []string{"Conflicting attributes"}, 0, ""},
		{"bad postgres_env", prov + "keyring {\n  primary = \"local\"\n}\nkeyset {\n  postgres_env = \"postgres://x\"\n}\n", []string{"Invalid postgres_env"}, 0, ""},
		{"name with file", prov + "keyring {\n  primary = \"local\"\n}\nkeyset {\n  file = \"k\"\n  name = \"x\"\n}\n", []string{"Unexpected name"}, 0, ""},
		{"variable", prov + "keyring {\n  primary = var.x\n}\nkeyset {\n  file = \"k\"\n}\n", []string{"Variables not allowed"}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.src), "keyctl.hcl")
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("not a *config.Error: %T", err)
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("message has a newline: %q", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if tt.notWant != "" && strings.Contains(msg, tt.notWant) {
				t.Errorf("message %q reveals %q", msg, tt.notWant)
			}
			if tt.line != 0 {
				if d := ce.Diags(); len(d) == 0 || d[0].Line != tt.line {
					t.Errorf("diags = %+v, want first on line %d", d, tt.line)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.hcl"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.hcl")
	if err := os.WriteFile(big, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrInvalid) {
		t.Errorf("big file: %v", err)
	}
	ok := filepath.Join(dir, "keyctl.hcl")
	if err := os.WriteFile(ok, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(ok)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Keyring.Primary != "local" {
		t.Errorf("primary %q", cfg.Keyring.Primary)
	}
}

// TestExample parses config.hcl.example at the repository root.
func TestExample(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "config.hcl.example"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Providers) == 0 || cfg.Keyring.Primary == "" || cfg.Keyset.File == "" {
		t.Errorf("example config incomplete: %+v", cfg)
	}
	for _, p := range cfg.Providers {
		if p.Type == TypeLocalFile && p.SecretEnv["passphrase"] == "" && p.Name == cfg.Keyring.Primary {
			t.Errorf("the example should show passphrase_env on the primary")
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(""))
	f.Add([]byte("provider \"localfile\" \"a\" {\n passphrase = \"x\"\n}\n"))
	f.Add([]byte("keyring { primary = \"a\" decrypt_only = [\"a\", \"b\"] }"))
	if b, err := os.ReadFile(filepath.Join("..", "config.hcl.example")); err == nil {
		f.Add(b)
	}
	// Plugins are never started while fuzzing.
	opts := Options{Schema: func(p *Provider) (plugin.Schema, error) {
		if p.Plugin != "" {
			return plugin.Schema{}, errors.New("no plugins while fuzzing")
		}
		return DefaultSchema(p)
	}, KnownTypes: []string{TypeLocalFile}}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := ParseWith(src, "fuzz.hcl", opts)
		if err == nil {
			if cfg == nil || cfg.Keyring.Primary == "" {
				t.Fatalf("nil config or no primary without an error")
			}
			if _, ok := cfg.Provider(cfg.Keyring.Primary); !ok {
				t.Fatalf("primary %q not among providers", cfg.Keyring.Primary)
			}
			return
		}
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error does not wrap ErrInvalid: %v", err)
		}
		if strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("multi-line message: %q", err.Error())
		}
	})
}

func TestKeysetStores(t *testing.T) {
	dir := t.TempDir()
	prov := "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n}\nkeyring {\n  primary = \"local\"\n}\n"
	tests := []struct {
		name, block string
		want        Keyset
		kind        string
	}{
		{"file", "file = \"ks.json\"", Keyset{File: filepath.Join(dir, "ks.json")}, "file"},
		{"sqlite", "sqlite = \"ks.db\"\n  name = \"users\"", Keyset{SQLite: filepath.Join(dir, "ks.db"), Name: "users"}, "sqlite"},
		{"postgres env()", "postgres = env(\"PG_URL\")", Keyset{PostgresEnv: "PG_URL"}, "postgres"},
		{"postgres_env", "postgres_env = \"PG_URL\"\n  name = \"a\"", Keyset{PostgresEnv: "PG_URL", Name: "a"}, "postgres"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "keyctl.hcl")
			src := prov + "keyset {\n  " + tt.block + "\n}\n"
			cfg, err := Parse([]byte(src), path)
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Keyring = cfg.Keyset.Keyring
			if cfg.Keyset != tt.want {
				t.Errorf("keyset = %+v, want %+v", cfg.Keyset, tt.want)
			}
			if k := cfg.Keyset.Kind(); k != tt.kind {
				t.Errorf("kind = %q, want %q", k, tt.kind)
			}
			if s := cfg.Keyset.String(); strings.Contains(s, "postgres://") {
				t.Errorf("String() = %q", s)
			}
		})
	}
}
