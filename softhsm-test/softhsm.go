// Package softhsmtest creates throwaway SoftHSM2 setups for tests: a private
// SOFTHSM2_CONF whose token directory is an absolute path under the test's
// temporary directory, tokens initialised with softhsm2-util, and AES keys
// made with pkcs11-tool (OpenSC). Tests that use it never touch the system's
// default token directory.
//
// SoftHSM2 reads SOFTHSM2_CONF when the library is initialised (C_Initialize),
// so [Setup] sets it for the whole process with t.Setenv; tests that use it
// cannot run in parallel with each other, and every provider opened on the
// setup must be closed before the test ends (the PKCS#11 module is then
// finalised, and the next test's C_Initialize reads its own configuration).
//
// When SoftHSM2 is missing, tests skip with a message saying how to install
// it; when the environment variable CI is "true", they fail instead.
package softhsmtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Default PINs of tokens made by [Env.InitToken]. They are test values.
// They are unusual strings so that a test can check that no error message
// contains them.
const (
	UserPIN = "user-pin-8d1f"
	SOPIN   = "so-pin-3c7a"
)

// ModuleEnv names an environment variable that, when set, overrides the path
// of the SoftHSM2 PKCS#11 module.
const ModuleEnv = "KEYCTL_SOFTHSM_MODULE"

// modulePaths are where distributions install the SoftHSM2 module.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",                   // Debian, Ubuntu
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",  // Debian multiarch
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", // Debian multiarch
	"/usr/lib64/pkcs11/libsofthsm2.so",                  // Fedora, RHEL
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so", // source builds
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// InstallHint is the advice printed when SoftHSM2 or OpenSC is missing.
const InstallHint = "the SoftHSM2 tests need softhsm2 and opensc: apt-get install softhsm2 opensc"

// Module returns the path of the SoftHSM2 PKCS#11 module, or an error
// saying where it looked.
func Module() (string, error) {
	if p := os.Getenv(ModuleEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("softhsm2 module from %s: %w", ModuleEnv, err)
		}
		return p, nil
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("softhsm2 module (libsofthsm2.so) not found in %s (or set %s)", strings.Join(modulePaths, ", "), ModuleEnv)
}

// InCI reports whether the tests run in CI (CI=true), where missing tools are
// failures rather than skips.
func InCI() bool { return os.Getenv("CI") == "true" }

// unavailable skips t, or fails it in CI.
func unavailable(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s; CI=true, so this is a failure, not a skip (%s)", what, InstallHint)
	}
	t.Skipf("%s; %s", what, InstallHint)
}

// Env is one throwaway SoftHSM2 setup.
type Env struct {
	// Dir is the setup's directory (under t.TempDir()).
	Dir string
	// Conf is the absolute path of the SOFTHSM2_CONF file.
	Conf string
	// TokenDir is the absolute token directory named in Conf.
	TokenDir string
	// Module is the path of the SoftHSM2 PKCS#11 module.
	Module string
}

// Setup creates a SoftHSM2 configuration under t.TempDir() and points
// SOFTHSM2_CONF at it for the rest of the test (t.Setenv). It skips the test
// when softhsm2-util or the module is missing, or fails it when CI=true.
func Setup(t testing.TB) *Env {
	t.Helper()
	mod, err := Module()
	if err != nil {
		unavailable(t, err.Error())
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		unavailable(t, "softhsm2-util not found in PATH")
	}
	dir := t.TempDir()
	e := &Env{Dir: dir, Conf: filepath.Join(dir, "softhsm2.conf"), TokenDir: filepath.Join(dir, "tokens"), Module: mod}
	if err := os.Mkdir(e.TokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", e.TokenDir)
	if err := os.WriteFile(e.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", e.Conf)
	return e
}

// Environ returns the process environment with SOFTHSM2_CONF set to e.Conf,
// for commands run against this setup.
func (e *Env) Environ() []string {
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			env = append(env, kv)
		}
	}
	return append(env, "SOFTHSM2_CONF="+e.Conf)
}

// Run runs a command with SOFTHSM2_CONF pointing at this setup and returns
// its combined output; it fails the test if the command fails.
func (e *Env) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := e.Try(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// Try is Run without failing the test.
func (e *Env) Try(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = e.Environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// InitToken initialises a new token labelled label in the first free slot,
// with the SO PIN [SOPIN] and the user PIN userPIN (use [UserPIN] unless the
// test needs another), and returns the token's serial number.
func (e *Env) InitToken(t testing.TB, label, userPIN string) (serial string) {
	t.Helper()
	e.Run(t, "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SOPIN, "--pin", userPIN)
	out := e.Run(t, "softhsm2-util", "--show-slots")
	// Blocks of "Slot N" ... "Label: X" ... "Serial number: S".
	var cur string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, ":"); ok {
			v = strings.TrimSpace(v)
			switch strings.TrimSpace(k) {
			case "Serial number":
				cur = v
			case "Label":
				if v == label && cur != "" {
					return cur
				}
			}
		}
		if strings.HasPrefix(line, "Slot ") {
			cur = ""
		}
	}
	t.Fatalf("softhsm2-util --show-slots does not list token %q:\n%s", label, out)
	return ""
}

// RequireTool skips (or in CI fails) the test when the named program, such
// as pkcs11-tool, is not in PATH.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		unavailable(t, name+" not found in PATH")
	}
}

// KeyOptions are the attributes of a key made by [Env.Keygen].
type KeyOptions struct {
	// ID is the CKA_ID in hex; empty gives the key no CKA_ID.
	ID string
	// Bytes is the AES key length; 0 means 32.
	Bytes int
	// Extractable leaves the key extractable and not sensitive (pkcs11-tool's
	// defaults are sensitive and not extractable only when asked).
	Extractable bool
	// KeyType overrides "AES:<Bytes>" (for instance "GENERIC:32").
	KeyType string
}

// Keygen creates a token secret key with pkcs11-tool --keygen on the token
// labelled token, logged in with pin, labelled label.
func (e *Env) Keygen(t testing.TB, token, pin, label string, o KeyOptions) {
	t.Helper()
	RequireTool(t, "pkcs11-tool")
	n := o.Bytes
	if n == 0 {
		n = 32
	}
	kt := o.KeyType
	if kt == "" {
		kt = fmt.Sprintf("AES:%d", n)
	}
	args := []string{"--module", e.Module, "--token-label", token, "--login", "--pin", pin,
		"--keygen", "--key-type", kt, "--label", label}
	if o.ID != "" {
		args = append(args, "--id", o.ID)
	}
	if !o.Extractable {
		args = append(args, "--sensitive")
	} else {
		args = append(args, "--extractable")
	}
	e.Run(t, "pkcs11-tool", args...)
}
