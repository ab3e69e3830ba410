package builtin_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

// These tests need neither cgo nor SoftHSM2: every case fails before the
// module is loaded.

func TestPKCS11Schema(t *testing.T) {
	p, ok := builtin.Lookup(pkcs11.Type)
	if !ok || p.Type != "pkcs11" {
		t.Fatalf("pkcs11 is not in the built-in table: %v", builtin.Types())
	}
	if err := p.Schema.Validate(); err != nil {
		t.Fatal(err)
	}
	pin, ok := p.Schema.Attr("pin")
	if !ok || !pin.Secret || pin.Required {
		t.Errorf("pin attribute %+v: want a secret that is not required (pin_file is the alternative)", pin)
	}
	for _, name := range []string{"module", "key_label"} {
		if a, ok := p.Schema.Attr(name); !ok || !a.Required {
			t.Errorf("%s should be required: %+v", name, a)
		}
	}
}

func TestPKCS11OpenRefusesBadConfig(t *testing.T) {
	const secretPIN = "pin-do-not-print-77c1"
	base := func() plugin.Values {
		return plugin.Values{
			"module":      {Str: "/nonexistent/libsofthsm2.so"},
			"token_label": {Str: "tok"},
			"pin":         {Secret: []byte(secretPIN)},
			"key_label":   {Str: "kek"},
		}
	}
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose-pin")
	if err := os.WriteFile(loose, []byte(secretPIN), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(v plugin.Values)
		want error
	}{
		{"no token selector", func(v plugin.Values) { delete(v, "token_label") }, core.ErrMalformed},
		{"label and serial", func(v plugin.Values) { v["token_serial"] = plugin.Value{Str: "123"} }, core.ErrMalformed},
		{"label and slot", func(v plugin.Values) { v["slot"] = plugin.Value{Num: 0} }, core.ErrMalformed},
		{"negative slot", func(v plugin.Values) { delete(v, "token_label"); v["slot"] = plugin.Value{Num: -1} }, core.ErrMalformed},
		{"fractional slot", func(v plugin.Values) { delete(v, "token_label"); v["slot"] = plugin.Value{Num: 1.5} }, core.ErrMalformed},
		{"too many sessions", func(v plugin.Values) { v["sessions"] = plugin.Value{Num: 100000} }, core.ErrMalformed},
		{"bad mechanism", func(v plugin.Values) { v["mechanism"] = plugin.Value{Str: "aes-ecb"} }, core.ErrMalformed},
		{"pin and pin_file", func(v plugin.Values) { v["pin_file"] = plugin.Value{Str: loose} }, core.ErrMalformed},
		{"pin_file readable by others", func(v plugin.Values) { delete(v, "pin"); v["pin_file"] = plugin.Value{Str: loose} }, core.ErrPermission},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := base()
			c.edit(v)
			kp, err := builtin.PKCS11.Open(context.Background(), v)
			if err == nil {
				t.Fatalf("Open succeeded: %v", kp.Ref())
			}
			if !errors.Is(err, c.want) {
				t.Errorf("error %q, want %v", err, c.want)
			}
			if strings.Contains(err.Error(), secretPIN) {
				t.Errorf("error holds the PIN: %q", err)
			}
		})
	}
}

func TestPKCS11OpenAsksForPIN(t *testing.T) {
	v := plugin.Values{
		"module":      {Str: "/nonexistent/libsofthsm2.so"},
		"token_label": {Str: "tok"},
		"key_label":   {Str: "kek"},
	}
	_, err := builtin.PKCS11.Open(context.Background(), v)
	ns, ok := plugin.AsNeedSecret(err)
	if !ok || ns.Attribute != "pin" || !strings.Contains(ns.For, `token "tok"`) || !strings.Contains(ns.What, "no user PIN") {
		t.Fatalf("error %v, want a NeedSecretError for pin", err)
	}
}

// TestPKCS11ExampleBlock uncomments the pkcs11 block of config.hcl.example
// and decodes it against the adapter's schema, so that the documented shape
// stays valid; and checks that a typo, a literal PIN and a missing
// key_label are diagnostics with their line.
func TestPKCS11ExampleBlock(t *testing.T) {
	cfg := parseExampleBlock(t, "pkcs11")
	p, ok := cfg.Provider("hsm")
	if !ok || p.Type != pkcs11.Type {
		t.Fatalf("no pkcs11 provider \"hsm\" decoded: %+v", cfg.Providers)
	}
	if p.SecretEnv["pin"] != "KEYCTL_PKCS11_PIN" || p.Values.String("key_label") != "orders-kek" {
		t.Fatalf("hsm = %+v", p)
	}
	// The block is complete but for the PIN: Open asks for it.
	if _, err := builtin.PKCS11.Open(context.Background(), p.Values); err == nil {
		t.Fatal("Open without a PIN succeeded")
	} else if _, ok := plugin.AsNeedSecret(err); !ok {
		t.Fatalf("the example's pkcs11 block: %v", err)
	}

	const rest = "keyring {\n  primary = \"hsm\"\n}\nkeyset {\n  file = \"k.json\"\n}\n"
	head := "provider \"pkcs11\" \"hsm\" {\n  module = \"/m.so\"\n  token_label = \"t\"\n"
	for name, tc := range map[string]struct{ block, want string }{
		"typo":          {head + "  key_lable = \"k\"\n}\n", "keyctl.hcl:4"},
		"literal pin":   {head + "  key_label = \"k\"\n  pin = \"1234\"\n}\n", "keyctl.hcl:5"},
		"no key_label":  {head + "}\n", "keyctl.hcl:1"},
		"slot a string": {"provider \"pkcs11\" \"hsm\" {\n  module = \"/m.so\"\n  slot = \"one\"\n  key_label = \"k\"\n}\n", "keyctl.hcl:3"},
	} {
		_, err := config.ParseWith([]byte(tc.block+rest), "keyctl.hcl", config.Options{Getenv: noEnv})
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want a diagnostic at %s", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "1234") {
			t.Errorf("%s: the diagnostic echoes the PIN: %v", name, err)
		}
	}
}
