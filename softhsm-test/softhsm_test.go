package softhsmtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
)

// defaultTokenDir is where Debian's SoftHSM2 keeps tokens by default.
const defaultTokenDir = "/var/lib/softhsm/tokens"

func listDir(dir string) []string {
	es, _ := os.ReadDir(dir)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func roundTrip(t *testing.T, cfg pkcs11.Config) {
	t.Helper()
	if !pkcs11.Available {
		t.Skip("built without cgo: no PKCS#11 provider")
	}
	p, err := pkcs11.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dek, _ := core.NewDEK()
	s, err := p.WrapKey(context.Background(), dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.UnwrapKey(context.Background(), s, nil)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("round trip: %v", err)
	}
}

// TestHelpers makes a token and a pkcs11-tool key with the Go helpers and
// checks that the system's default token directory is left alone.
func TestHelpers(t *testing.T) {
	before := listDir(defaultTokenDir)
	e := softhsmtest.Setup(t)
	if !filepath.IsAbs(e.TokenDir) || !strings.HasPrefix(e.TokenDir, e.Dir) {
		t.Fatalf("token dir %q is not an absolute path under %q", e.TokenDir, e.Dir)
	}
	conf, err := os.ReadFile(e.Conf)
	if err != nil || !strings.Contains(string(conf), "directories.tokendir = "+e.TokenDir+"\n") {
		t.Fatalf("conf %q: %v", conf, err)
	}
	if os.Getenv("SOFTHSM2_CONF") != e.Conf {
		t.Fatal("SOFTHSM2_CONF not set")
	}
	serial := e.InitToken(t, "helpers", softhsmtest.UserPIN)
	if serial == "" {
		t.Fatal("no serial")
	}
	e.Keygen(t, "helpers", softhsmtest.UserPIN, "kek", softhsmtest.KeyOptions{ID: "01"})
	if len(listDir(e.TokenDir)) != 1 {
		t.Fatalf("token dir holds %v, want one token", listDir(e.TokenDir))
	}
	roundTrip(t, pkcs11.Config{Module: e.Module, TokenSerial: serial, KeyLabel: "kek", PIN: []byte(softhsmtest.UserPIN)})
	if after := listDir(defaultTokenDir); !slices.Equal(before, after) {
		t.Fatalf("the default token directory changed: %v -> %v", before, after)
	}
}

// TestSetupScript runs softhsm-test/setup and uses what it prints.
func TestSetupScript(t *testing.T) {
	e := softhsmtest.Setup(t) // skips or fails like every SoftHSM test
	softhsmtest.RequireTool(t, "pkcs11-tool")
	dir := filepath.Join(t.TempDir(), "hsm")
	out, err := exec.Command("bash", "setup", dir, "script-tok", "script-kek").Output()
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			t.Fatalf("setup printed %q", line)
		}
		vars[k] = v
	}
	if vars["SOFTHSM2_CONF"] != filepath.Join(dir, "softhsm2.conf") || vars["KEYCTL_PKCS11_TOKEN"] != "script-tok" {
		t.Fatalf("setup printed %v", vars)
	}
	t.Setenv("SOFTHSM2_CONF", vars["SOFTHSM2_CONF"])
	roundTrip(t, pkcs11.Config{Module: e.Module, TokenLabel: "script-tok", KeyLabel: "script-kek", PIN: []byte(vars["KEYCTL_PKCS11_PIN"])})
	if out, err := exec.Command("bash", "setup", dir).CombinedOutput(); err == nil {
		t.Fatalf("setup over a non-empty dir succeeded: %s", out)
	}
}
