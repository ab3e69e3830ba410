package pkcs11_test

import (
	"context"
	"errors"
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
