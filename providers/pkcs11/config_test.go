package pkcs11_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

func TestConfigValidate(t *testing.T) {
	slot := uint(3)
	ok := pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "tok", KeyLabel: "kek"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mod := range map[string]func(c *pkcs11.Config){
		"no module":         func(c *pkcs11.Config) { c.Module = "" },
		"no token":          func(c *pkcs11.Config) { c.TokenLabel = "" },
		"label and serial":  func(c *pkcs11.Config) { c.TokenSerial = "123" },
		"label and slot":    func(c *pkcs11.Config) { c.Slot = &slot },
		"all three":         func(c *pkcs11.Config) { c.TokenSerial = "1"; c.Slot = &slot },
		"long token label":  func(c *pkcs11.Config) { c.TokenLabel = strings.Repeat("x", 33) },
		"trailing blank":    func(c *pkcs11.Config) { c.TokenLabel = "tok " },
		"control char":      func(c *pkcs11.Config) { c.TokenLabel = "t\nk" },
		"long serial":       func(c *pkcs11.Config) { c.TokenLabel, c.TokenSerial = "", strings.Repeat("1", 17) },
		"no key label":      func(c *pkcs11.Config) { c.KeyLabel = "" },
		"bad key label":     func(c *pkcs11.Config) { c.KeyLabel = "a\x00b" },
		"unknown mechanism": func(c *pkcs11.Config) { c.Mechanism = "aes-cbc" },
		"negative sessions": func(c *pkcs11.Config) { c.Sessions = -1 },
		"too many sessions": func(c *pkcs11.Config) { c.Sessions = pkcs11.MaxSessions + 1 },
		"mechanism case":    func(c *pkcs11.Config) { c.Mechanism = "AES-GCM" },
	} {
		t.Run(name, func(t *testing.T) {
			c := ok
			mod(&c)
			err := c.Validate()
			if !errors.Is(err, core.ErrMalformed) {
				t.Fatalf("Validate: %v, want ErrMalformed", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error not one line: %q", err)
			}
		})
	}
	for _, c := range []pkcs11.Config{
		{Module: "m", TokenSerial: "abc", KeyLabel: "k", Mechanism: pkcs11.MechanismKWP},
		{Module: "m", Slot: &slot, KeyLabel: "k", Sessions: 16, Mechanism: pkcs11.MechanismGCM},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v", c, err)
		}
	}
	// Validate does not need the PIN, and an invalid config is reported
	// before the module is touched (in cgo-less builds too).
	if _, err := pkcs11.New(context.Background(), pkcs11.Config{Module: "m", KeyLabel: "k"}); !errors.Is(err, core.ErrMalformed) {
		t.Fatalf("New with an invalid config: %v", err)
	}
}

func TestReadPINFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for content, want := range map[string]string{
		"secret-pin-77\n":   "secret-pin-77",
		"secret-pin-77\r\n": "secret-pin-77",
		"secret-pin-77":     "secret-pin-77",
		"with space \n":     "with space ",
	} {
		got, err := pkcs11.ReadPINFile(write("ok", content, 0o600))
		if err != nil || string(got) != want {
			t.Errorf("ReadPINFile(%q) = %q, %v; want %q", content, got, err, want)
		}
	}
	for name, tc := range map[string]struct {
		content  string
		mode     os.FileMode
		sentinel error
	}{
		"group-readable": {"secret-pin-77\n", 0o640, core.ErrPermission},
		"world-readable": {"secret-pin-77\n", 0o604, core.ErrPermission},
		"empty":          {"", 0o600, core.ErrMalformed},
		"only newline":   {"\n", 0o600, core.ErrMalformed},
		"two newlines":   {"secret-pin-77\n\n", 0o600, core.ErrMalformed},
		"too long":       {strings.Repeat("p", pkcs11.MaxPINLen+1), 0o600, core.ErrMalformed},
		"control":        {"secret\x00pin-77", 0o600, core.ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			p := write(name, tc.content, tc.mode)
			_, err := pkcs11.ReadPINFile(p)
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("error %v, want %v", err, tc.sentinel)
			}
			if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %q reveals the PIN or does not name the file", err)
			}
		})
	}
	if _, err := pkcs11.ReadPINFile(filepath.Join(dir, "missing")); !errors.Is(err, core.ErrMalformed) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestConfigStringRedactsPIN(t *testing.T) {
	c := pkcs11.Config{Module: "m", TokenLabel: "t", KeyLabel: "k", PIN: []byte("secret-pin-77")}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%v", &c)} {
		if strings.Contains(s, "secret-pin-77") || strings.Contains(s, fmt.Sprint([]byte("secret-pin-77"))) || !strings.Contains(s, "REDACTED") {
			t.Errorf("Config formats as %q", s)
		}
	}
}
