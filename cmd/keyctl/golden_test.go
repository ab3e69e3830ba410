package main

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/golden"
	"github.com/keyctl/keyctl/providers/localfile"
)

// goldenSetup writes the golden key file, a keyset of the golden field DEKs
// and a keyctl.hcl using both, and returns the configuration's path.
func goldenSetup(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	if err := golden.WriteKeyFile(kek); err != nil {
		t.Fatal(err)
	}
	p, err := localfile.Open(kek, localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := core.NewKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := golden.Keyset(context.Background(), ring)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ks.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keyset.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "keyctl.hcl")
	src := `provider "localfile" "golden" {
  key_file = "kek.json"
}
keyring {
  primary = "golden"
}
keyset {
  file = "keyset.json"
}
`
	if err := os.WriteFile(cfg, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func loadVectors(t *testing.T, kind string) []golden.Vector {
	t.Helper()
	vs, err := golden.Load(filepath.Join(golden.Dir(), kind))
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// parseFailure reports whether a vector's expected failure is one a parser
// detects, so that inspect (which only parses) must fail on it too.
func parseFailure(expect string) bool {
	switch expect {
	case "malformed", "unsupported-version", "unknown-algorithm":
		return true
	}
	return false
}

func contextFlags(ec core.Context) []string {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, "--context", k+"="+ec[k])
	}
	return out
}

// TestGoldenWrappedKeys feeds every wrapped-key golden vector to `keyctl
// unwrap` and `keyctl inspect`: failure vectors must exit 2 with one error
// line, ok vectors must unwrap to the expected DEK.
func TestGoldenWrappedKeys(t *testing.T) {
	cfg := goldenSetup(t)
	dir := t.TempDir()
	for _, v := range loadVectors(t, "wrappedkey") {
		t.Run(v.Name, func(t *testing.T) {
			file := filepath.Join(dir, v.Name+".wk")
			if err := os.WriteFile(file, v.Input, 0o600); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"-c", cfg, "unwrap", file, "--reveal"}, contextFlags(v.Context)...)
			code, stdout, stderr := runKeyctl(nil, args...)
			if v.Expect == "ok" {
				if code != 0 {
					t.Fatalf("unwrap: exit %d: %s", code, stderr)
				}
				if want := hex.EncodeToString(golden.DEK(v.DEK)) + "\n"; stdout != want {
					t.Errorf("unwrap printed %q, want the DEK %s", stdout, v.DEK)
				}
			} else {
				if code != 2 {
					t.Fatalf("unwrap (%s): exit %d, want 2; stderr %q", v.Expect, code, stderr)
				}
				checkOneErrorLine(t, "unwrap", stderr)
				if stdout != "" {
					t.Errorf("unwrap printed %q on failure", stdout)
				}
			}
			// The same through stdin.
			code, _, stderr = runKeyctl(v.Input, append([]string{"-c", cfg, "unwrap", "-", "--reveal"}, contextFlags(v.Context)...)...)
			if (v.Expect == "ok") != (code == 0) || (code != 0 && code != 2) {
				t.Errorf("unwrap from stdin: exit %d: %s", code, stderr)
			}

			code, _, stderr = runKeyctl(nil, "inspect", file)
			switch {
			case parseFailure(v.Expect):
				if code != 2 {
					t.Fatalf("inspect (%s): exit %d, want 2; stderr %q", v.Expect, code, stderr)
				}
				checkOneErrorLine(t, "inspect", stderr)
			case code != 0:
				t.Errorf("inspect of a well-formed record: exit %d: %s", code, stderr)
			}
		})
	}
}

// TestGoldenFields feeds every field-ciphertext golden vector to `keyctl
// decrypt` and `keyctl inspect`.
func TestGoldenFields(t *testing.T) {
	cfg := goldenSetup(t)
	for _, v := range loadVectors(t, "field") {
		t.Run(v.Name, func(t *testing.T) {
			code, stdout, stderr := runKeyctl(v.Input, "-c", cfg, "decrypt", "--ad", string(v.AD))
			if v.Expect == "ok" {
				if code != 0 {
					t.Fatalf("decrypt: exit %d: %s", code, stderr)
				}
				if stdout != v.Plaintext {
					t.Errorf("decrypt printed %q, want %q", stdout, v.Plaintext)
				}
			} else {
				if code != 2 {
					t.Fatalf("decrypt (%s): exit %d, want 2; stderr %q", v.Expect, code, stderr)
				}
				checkOneErrorLine(t, "decrypt", stderr)
				if stdout != "" {
					t.Errorf("decrypt printed %q on failure", stdout)
				}
			}
			if !v.Binary {
				// Also as an argument.
				code, _, stderr := runKeyctl(nil, "-c", cfg, "decrypt", "--ad", string(v.AD), strings.TrimSpace(string(v.Input)))
				if (v.Expect == "ok") != (code == 0) || (code != 0 && code != 2) {
					t.Errorf("decrypt TEXT: exit %d: %s", code, stderr)
				}
			}

			code, _, stderr = runKeyctl(v.Input, "inspect")
			switch {
			case parseFailure(v.Expect):
				if code != 2 {
					t.Fatalf("inspect (%s): exit %d, want 2; stderr %q", v.Expect, code, stderr)
				}
				checkOneErrorLine(t, "inspect", stderr)
			case code != 0:
				t.Errorf("inspect of a well-formed value: exit %d: %s", code, stderr)
			}
		})
	}
}
