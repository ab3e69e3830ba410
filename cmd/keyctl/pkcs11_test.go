package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
)

// The keyctl end-to-end tests of the pkcs11 provider: keyctl.hcl names a
// SoftHSM2 token of a throwaway setup (softhsmtest.Setup points
// SOFTHSM2_CONF at it for this process, and the provider plugin, this test
// binary run as `__provider pkcs11`, inherits it).

const (
	e2eToken  = "keyctl-e2e"
	e2eKEK    = "orders-kek"
	e2ePINEnv = "KEYCTL_TEST_PKCS11_PIN"
)

// pkcs11Env is one keyctl directory with a local key file (keyctl init)
// and a SoftHSM2 token holding KEK version 00000001 made by pkcs11-tool.
type pkcs11Env struct {
	hsm *softhsmtest.Env
	dir string
}

func newPKCS11Env(t *testing.T) *pkcs11Env {
	t.Helper()
	if !pkcs11.Available {
		t.Skip("this test binary was built without cgo, so it has no PKCS#11 provider")
	}
	h := softhsmtest.Setup(t)
	softhsmtest.RequireTool(t, "pkcs11-tool")
	h.InitToken(t, e2eToken, softhsmtest.UserPIN)
	h.Keygen(t, e2eToken, softhsmtest.UserPIN, e2eKEK, softhsmtest.KeyOptions{ID: "00000001"})
	t.Setenv(e2ePINEnv, softhsmtest.UserPIN)
	dir := t.TempDir()
	if code, _, stderr := runKeyctl(nil, "init", "--dir", dir); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	return &pkcs11Env{hsm: h, dir: dir}
}

// config writes keyctl.hcl variant name with providers "local" (the key
// file) and "hsm" (the token, key label keyLabel) and the given keyring
// lines, and returns its path.
func (e *pkcs11Env) config(t *testing.T, name, keyLabel, keyring string) string {
	t.Helper()
	src := fmt.Sprintf(`provider "localfile" "local" {
  key_file = "kek.json"
}

provider "pkcs11" "hsm" {
  module      = %q
  token_label = %q
  pin_env     = %q
  key_label   = %q
}

keyring {
%s
}

keyset {
  file = "keyset.json"
}
`, e.hsm.Module, e2eToken, e2ePINEnv, keyLabel, keyring)
	path := filepath.Join(e.dir, name+".hcl")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// keyctl runs keyctl and fails the test unless it succeeds.
func keyctlOK(t *testing.T, stdin []byte, args ...string) (stdout, stderr string) {
	t.Helper()
	code, stdout, stderr := runKeyctl(stdin, args...)
	if code != 0 {
		t.Fatalf("keyctl %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return stdout, stderr
}

type inspectedWrap struct {
	Provider   string `json:"provider"`
	KeyID      string `json:"key_id"`
	KeyVersion string `json:"key_version"`
}

// wraps returns the wraps recorded in the wrapped key file.
func wraps(t *testing.T, file string) []inspectedWrap {
	t.Helper()
	out, _ := keyctlOK(t, nil, "--json", "inspect", file)
	var r struct {
		Wraps []inspectedWrap `json:"wraps"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("inspect --json: %v: %s", err, out)
	}
	return r.Wraps
}

func wrapsDesc(ws []inspectedWrap) string {
	var s []string
	for _, w := range ws {
		s = append(s, w.Provider+":"+w.KeyID+"@"+w.KeyVersion)
	}
	return strings.Join(s, ",")
}

// newDEKFile writes a random DEK in hex and returns the file and the hex.
func newDEKFile(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	x := hex.EncodeToString(b)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(x+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, x
}

// unwrapHex unwraps file with cfg and returns the DEK in hex.
func unwrapHex(t *testing.T, cfg, file string, ctx ...string) string {
	t.Helper()
	args := append([]string{"-c", cfg, "unwrap", file, "--reveal"}, ctx...)
	out, _ := keyctlOK(t, nil, args...)
	return strings.TrimSpace(out)
}

// TestPKCS11WrapRotateRewrap: keyctl wrap / unwrap / rotate / rewrap / kek
// with a pkcs11 provider from keyctl.hcl. A DEK wrapped under KEK version 1
// still unwraps after `keyctl rotate`, and rewrap moves it to version 2.
func TestPKCS11WrapRotateRewrap(t *testing.T) {
	e := newPKCS11Env(t)
	cfg := e.config(t, "hsm", e2eKEK, `  primary      = "hsm"
  decrypt_only = ["local"]`)
	dekFile, dek := newDEKFile(t, e.dir, "dek.hex")
	wk := filepath.Join(e.dir, "dek.wk")
	keyctlOK(t, nil, "-c", cfg, "wrap", "--dek-file", dekFile, "--context", "table=orders", "--out", wk)
	if ws := wraps(t, wk); len(ws) != 1 || ws[0].Provider != "pkcs11" || ws[0].KeyID != e2eToken+"/"+e2eKEK || ws[0].KeyVersion != "00000001" {
		t.Fatalf("wrapped under %s, want pkcs11:%s/%s@00000001", wrapsDesc(ws), e2eToken, e2eKEK)
	}
	if got := unwrapHex(t, cfg, wk, "--context", "table=orders"); got != dek {
		t.Fatal("unwrap returned another DEK")
	}
	// The context is bound: another one fails as bad input.
	code, _, stderr := runKeyctl(nil, "-c", cfg, "unwrap", wk, "--reveal", "--context", "table=users")
	if code != exitUsage {
		t.Fatalf("unwrap with another context: exit %d: %s", code, stderr)
	}
	checkOneErrorLine(t, "unwrap with another context", stderr)

	// A DEK generated by wrap (the token's C_GenerateRandom) round-trips too.
	gen, _ := keyctlOK(t, nil, "-c", cfg, "wrap")
	if out, _ := keyctlOK(t, []byte(gen), "-c", cfg, "unwrap", "-", "--reveal"); len(strings.TrimSpace(out)) != 64 {
		t.Fatalf("unwrap of a generated DEK: %q", out)
	}

	out, _ := keyctlOK(t, nil, "-c", cfg, "rotate")
	if !strings.Contains(out, "KEK version 00000002 is now current (was 00000001)") {
		t.Fatalf("rotate: %q", out)
	}
	// Version 1 still unwraps.
	if got := unwrapHex(t, cfg, wk, "--context", "table=orders"); got != dek {
		t.Fatal("unwrap after rotate returned another DEK")
	}
	out, _ = keyctlOK(t, nil, "-c", cfg, "rewrap", wk, "--context", "table=orders")
	if !strings.Contains(out, "rewrapped 1, already current 0, failed 0") {
		t.Fatalf("rewrap: %q", out)
	}
	if ws := wraps(t, wk); len(ws) != 1 || ws[0].Provider != "pkcs11" || ws[0].KeyVersion != "00000002" {
		t.Fatalf("after rewrap: %s, want the one wrap under version 00000002", wrapsDesc(ws))
	}
	if got := unwrapHex(t, cfg, wk, "--context", "table=orders"); got != dek {
		t.Fatal("unwrap after rewrap returned another DEK")
	}
	out, _ = keyctlOK(t, nil, "-c", cfg, "rewrap", wk, "--context", "table=orders")
	if !strings.Contains(out, "rewrapped 0, already current 1, failed 0") {
		t.Fatalf("second rewrap: %q", out)
	}

	// keyctl kek: list, refuse disable (PKCS#11 cannot), destroy version 1.
	out, _ = keyctlOK(t, nil, "-c", cfg, "--json", "kek", "list")
	var list kekListResult
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Versions) != 2 || list.Versions[0].Version != "00000001" || list.Versions[1].Version != "00000002" || !list.Versions[1].Current {
		t.Fatalf("kek list: %s", out)
	}
	table, _ := keyctlOK(t, nil, "-c", cfg, "kek", "list")
	t.Logf("kek list:\n%s", table)
	code, _, stderr = runKeyctl(nil, "-c", cfg, "kek", "disable", "00000001")
	if code != exitFailure || !strings.Contains(stderr, "no portable way to disable") {
		t.Fatalf("kek disable: exit %d: %s", code, stderr)
	}
	checkOneErrorLine(t, "kek disable", stderr)
	keyctlOK(t, nil, "-c", cfg, "kek", "destroy", "00000001", "--yes")
	if got := unwrapHex(t, cfg, wk, "--context", "table=orders"); got != dek {
		t.Fatal("unwrap under version 2 after destroying version 1 returned another DEK")
	}
}

// TestPKCS11LocalFileMigration moves a DEK from the local-file provider to
// SoftHSM2 and back with keyctl rewrap, changing only the keyring's primary
// and decrypt_only in keyctl.hcl.
func TestPKCS11LocalFileMigration(t *testing.T) {
	e := newPKCS11Env(t)
	toHSM := e.config(t, "to-hsm", e2eKEK, `  primary      = "hsm"
  decrypt_only = ["local"]`)
	toLocal := e.config(t, "to-local", e2eKEK, `  primary      = "local"
  decrypt_only = ["hsm"]`)
	dekFile, dek := newDEKFile(t, e.dir, "dek.hex")
	wk := filepath.Join(e.dir, "dek.wk")

	keyctlOK(t, nil, "-c", toLocal, "wrap", "--dek-file", dekFile, "--out", wk)
	if ws := wraps(t, wk); len(ws) != 1 || ws[0].Provider != "localfile" {
		t.Fatalf("wrapped under %s, want localfile", wrapsDesc(ws))
	}

	keyctlOK(t, nil, "-c", toHSM, "rewrap", wk)
	ws := wraps(t, wk)
	onHSM := false
	for _, w := range ws {
		onHSM = onHSM || (w.Provider == "pkcs11" && w.KeyID == e2eToken+"/"+e2eKEK && w.KeyVersion == "00000001")
	}
	if !onHSM {
		t.Fatalf("after rewrap to the HSM: %s", wrapsDesc(ws))
	}
	if got := unwrapHex(t, toHSM, wk); got != dek {
		t.Fatal("unwrap on the HSM returned another DEK")
	}
	// The HSM alone opens it (a keyring without the local provider).
	hsmOnly := filepath.Join(e.dir, "hsm-only.hcl")
	src := fmt.Sprintf("provider \"pkcs11\" \"hsm\" {\n  module = %q\n  token_label = %q\n  pin = env(%q)\n  key_label = %q\n}\nkeyring {\n  primary = \"hsm\"\n}\nkeyset {\n  file = \"keyset.json\"\n}\n",
		e.hsm.Module, e2eToken, e2ePINEnv, e2eKEK)
	if err := os.WriteFile(hsmOnly, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := unwrapHex(t, hsmOnly, wk); got != dek {
		t.Fatal("unwrap with only the HSM configured returned another DEK")
	}

	keyctlOK(t, nil, "-c", toLocal, "rewrap", wk)
	ws = wraps(t, wk)
	onLocal := false
	for _, w := range ws {
		onLocal = onLocal || w.Provider == "localfile"
	}
	if !onLocal {
		t.Fatalf("after rewrap back to the key file: %s", wrapsDesc(ws))
	}
	// The keyset moves the same way: keyctl encrypt under the key file,
	// rewrap --keyset onto the HSM, decrypt with only the HSM configured.
	ct, _ := keyctlOK(t, []byte("alice@example.com"), "-c", toLocal, "encrypt", "--ad", "users/email/1")
	keyctlOK(t, nil, "-c", toHSM, "rewrap", "--keyset")
	if pt, _ := keyctlOK(t, []byte(ct), "-c", hsmOnly, "decrypt", "--ad", "users/email/1"); strings.TrimSpace(pt) != "alice@example.com" {
		t.Fatalf("decrypt with only the HSM: %q", pt)
	}

	// The key file alone opens it again.
	localOnly := filepath.Join(e.dir, "keyctl.hcl") // as keyctl init wrote it
	if got := unwrapHex(t, localOnly, wk); got != dek {
		t.Fatal("unwrap with only the key file configured returned another DEK")
	}
	t.Logf("wraps after the round trip: %s", wrapsDesc(ws))
}

// TestPKCS11Errors: wrong PIN, missing key and ambiguous label each give
// one `keyctl: error:` line, naming the token and key and not the PIN, and
// the exit code that exitCode assigns to the provider's error class.
func TestPKCS11Errors(t *testing.T) {
	e := newPKCS11Env(t)
	e.hsm.Keygen(t, e2eToken, softhsmtest.UserPIN, "twins", softhsmtest.KeyOptions{ID: "01"})
	e.hsm.Keygen(t, e2eToken, softhsmtest.UserPIN, "twins", softhsmtest.KeyOptions{ID: "01"})
	primaryHSM := `  primary = "hsm"`
	const wrongPIN = "wrong-pin-1f9d"

	for _, c := range []struct {
		name, label, pin string
		code             int
		words            []string
	}{
		// core.ErrPermission: exit 2, as for a wrong passphrase.
		{"wrong PIN", e2eKEK, wrongPIN, exitUsage, []string{`provider "hsm"`, e2eToken, "wrong user PIN"}},
		// core.ErrKeyNotFound: exit 2.
		{"missing key", "no-such-kek", softhsmtest.UserPIN, exitUsage, []string{`provider "hsm"`, e2eToken, "no-such-kek"}},
		// pkcs11.ErrAmbiguousKey (core.ErrFailedPrecondition): exit 2.
		{"ambiguous label", "twins", softhsmtest.UserPIN, exitUsage, []string{`provider "hsm"`, e2eToken, "twins", "CKA_ID"}},
		// No PIN: $VAR unset: exit 2 with the variable to set.
		{"PIN variable unset", e2eKEK, "", exitUsage, []string{e2ePINEnv}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := e.config(t, "err", c.label, primaryHSM)
			if c.pin == "" {
				os.Unsetenv(e2ePINEnv) // t.Setenv in newPKCS11Env restores it
			} else {
				t.Setenv(e2ePINEnv, c.pin)
			}
			for _, args := range [][]string{{"wrap"}, {"rotate"}} {
				code, stdout, stderr := runKeyctl(nil, append([]string{"-c", cfg}, args...)...)
				if code != c.code {
					t.Errorf("%s: exit %d, want %d: %s", args[0], code, c.code, stderr)
				}
				checkOneErrorLine(t, c.name, stderr)
				for _, w := range c.words {
					if !strings.Contains(stderr, w) {
						t.Errorf("%s: stderr does not name %q: %s", args[0], w, stderr)
					}
				}
				if strings.Contains(stderr+stdout, wrongPIN) || strings.Contains(stderr+stdout, softhsmtest.UserPIN) {
					t.Errorf("%s: output holds the PIN: %s", args[0], stderr)
				}
				if stdout != "" {
					t.Errorf("%s: stdout %q", args[0], stdout)
				}
				t.Logf("%s: exit %d: %s", args[0], code, strings.TrimSpace(stderr))
			}
		})
	}
}

// TestPKCS11WithoutCgo: a keyctl built with CGO_ENABLED=0 refuses a pkcs11
// provider with one line saying to rebuild with cgo (exit 1).
func TestPKCS11WithoutCgo(t *testing.T) {
	if pkcs11.Available {
		t.Skip("built with cgo")
	}
	dir := t.TempDir()
	t.Setenv(e2ePINEnv, "1234")
	cfg := filepath.Join(dir, "keyctl.hcl")
	src := fmt.Sprintf("provider \"pkcs11\" \"hsm\" {\n  module = \"/usr/lib/softhsm/libsofthsm2.so\"\n  token_label = \"t\"\n  pin_env = %q\n  key_label = \"k\"\n}\nkeyring {\n  primary = \"hsm\"\n}\nkeyset {\n  file = \"keyset.json\"\n}\n", e2ePINEnv)
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runKeyctl(nil, "-c", cfg, "wrap")
	if code != exitFailure || !strings.Contains(stderr, "CGO_ENABLED=1") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	checkOneErrorLine(t, "no cgo", stderr)
}
