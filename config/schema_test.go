package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyctl/keyctl/plugin"
)

// testSchema is a provider type with one attribute of every kind.
var testSchema = plugin.Schema{Attributes: []plugin.Attribute{
	{Name: "module", Type: plugin.Path, Required: true},
	{Name: "label", Type: plugin.String},
	{Name: "slot", Type: plugin.Number},
	{Name: "readonly", Type: plugin.Bool},
	{Name: "regions", Type: plugin.StringList},
	{Name: "timeout", Type: plugin.Duration},
	{Name: "pin", Type: plugin.String, Secret: true, Required: true},
}}

func testOptions(env map[string]string) Options {
	return Options{
		Schema: func(p *Provider) (plugin.Schema, error) {
			switch {
			case p.Plugin != "":
				return plugin.Schema{}, errors.New("no plugins in this test")
			case p.Type == "hsm":
				return testSchema, nil
			}
			return DefaultSchema(p)
		},
		KnownTypes: []string{"hsm", "localfile"},
		Getenv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
	}
}

const tail = "keyring {\n  primary = \"h\"\n  cache {\n    max_age = \"5m\"\n    max_uses = 100\n  }\n}\nkeyset {\n  file = \"k\"\n}\n"

func TestSchemaTypes(t *testing.T) {
	src := `provider "hsm" "h" {
  module   = "lib/softhsm.so"
  label    = env("LABEL")
  slot     = 3
  readonly = true
  regions  = ["a", "b"]
  timeout  = "2s"
  pin      = env("HSM_PIN")
}
` + tail
	cfg, err := ParseWith([]byte(src), "/etc/keyctl/keyctl.hcl", testOptions(map[string]string{"LABEL": "kek", "HSM_PIN": "1234"}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := cfg.Provider("h")
	v := p.Values
	if v.String("module") != "/etc/keyctl/lib/softhsm.so" || v.String("label") != "kek" || v.Number("slot") != 3 ||
		!v.Bool("readonly") || strings.Join(v.List("regions"), ",") != "a,b" || v.Duration("timeout") != 2*time.Second {
		t.Errorf("values = %+v", v)
	}
	if pin, ok := v.Secret("pin"); !ok || string(pin) != "1234" || p.SecretEnv["pin"] != "HSM_PIN" {
		t.Errorf("pin = %q %v, env %q", pin, ok, p.SecretEnv["pin"])
	}
	if c := cfg.Keyring.Cache; c == nil || c.MaxAge != 5*time.Minute || c.MaxUses != 100 {
		t.Errorf("cache = %+v", c)
	}

	// The NAME_env shorthand, with the variable unset: the secret is absent
	// and the variable's name is kept for messages.
	src2 := strings.Replace(src, `pin      = env("HSM_PIN")`, `pin_env  = "HSM_PIN"`, 1)
	cfg, err = ParseWith([]byte(src2), "keyctl.hcl", testOptions(map[string]string{"LABEL": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ = cfg.Provider("h")
	if _, ok := p.Values.Secret("pin"); ok || p.SecretEnv["pin"] != "HSM_PIN" {
		t.Errorf("unset pin: %+v %v", p.Values, p.SecretEnv)
	}
}

func TestSchemaErrors(t *testing.T) {
	const head = "provider \"hsm\" \"h\" {\n  module = \"m\"\n"
	tests := []struct {
		name, body string
		want       []string
		line       int
		notWant    string
	}{
		{"literal pin", "  pin = \"1234\"\n", []string{"Secret in configuration", `pin = env("VAR")`, "keyctl.hcl:3,3"}, 3, "1234"},
		{"pin from a string template", "  pin = \"${env(\"X\")}\"\n", []string{"Secret in configuration"}, 3, ""},
		{"both pin forms", "  pin = env(\"A\")\n  pin_env = \"A\"\n", []string{"Conflicting attributes"}, 4, ""},
		{"missing pin", "", []string{"Missing required argument", "pin"}, 1, ""},
		{"typo", "  pin = env(\"P\")\n  lable = \"x\"\n", []string{"Unsupported argument", `"lable"`, "label", "keyctl.hcl:4,3"}, 4, ""},
		{"wrong type", "  pin = env(\"P\")\n  slot = \"three\"\n", []string{"Incorrect attribute value type", "slot must be a number", "keyctl.hcl:4,10"}, 4, ""},
		{"wrong list type", "  pin = env(\"P\")\n  regions = \"a\"\n", []string{"Incorrect attribute value type"}, 4, ""},
		{"bad duration", "  pin = env(\"P\")\n  timeout = \"soon\"\n", []string{"Invalid duration"}, 4, ""},
		{"unset env in a plain attribute", "  pin = env(\"P\")\n  label = env(\"NOPE\")\n", []string{"NOPE is not set"}, 4, ""},
		{"env of a non-name", "  pin = env(\"not a name\")\n", []string{"Invalid env()"}, 3, ""},
		{"plugin without sha256", "  pin = env(\"P\")\n  plugin = \"./p\"\n", []string{"Missing sha256"}, 4, ""},
		{"bad sha256", "  pin = env(\"P\")\n  plugin = \"./p\"\n  sha256 = \"abc\"\n", []string{"Invalid sha256"}, 5, ""},
		{"sha256 without plugin", "  pin = env(\"P\")\n  sha256 = \"" + strings.Repeat("a", 64) + "\"\n", []string{"Unexpected sha256"}, 4, ""},
		{"plugin refused", "  plugin = \"./p\"\n  sha256 = \"" + strings.Repeat("a", 64) + "\"\n", []string{"Cannot read the provider's schema", "no plugins in this test", "keyctl.hcl:3,12"}, 3, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := head + tt.body + "}\n" + tail
			_, err := ParseWith([]byte(src), "keyctl.hcl", testOptions(map[string]string{"P": "secret-pin"}))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v, want *Error", err)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if tt.notWant != "" && strings.Contains(msg, tt.notWant) {
				t.Errorf("message %q reveals %q", msg, tt.notWant)
			}
			if strings.Contains(msg, "secret-pin") {
				t.Errorf("message %q reveals the pin", msg)
			}
			if d := ce.Diags(); len(d) == 0 || d[0].Line != tt.line {
				t.Errorf("diags = %+v, want the first on line %d", d, tt.line)
			}
		})
	}
}

func TestCacheErrors(t *testing.T) {
	prov := "provider \"localfile\" \"h\" {\n  key_file = \"k\"\n}\n"
	for _, c := range []struct{ block, want string }{
		{"cache {\n max_age = \"never\"\n }", "Invalid max_age"},
		{"cache {\n max_uses = -1\n }", "Invalid max_uses"},
		{"cache {\n max_age = \"1m\"\n }\n cache {\n }", "Duplicate cache block"},
		{"cache {\n colour = 1\n }", "Unsupported argument"},
	} {
		src := prov + "keyring {\n primary = \"h\"\n " + c.block + "\n}\nkeyset {\n file = \"k\"\n}\n"
		if _, err := Parse([]byte(src), "keyctl.hcl"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.block, err, c.want)
		}
	}
}

// TestExamplePluginBlock uncomments the third-party block of
// config.hcl.example and checks it against a stand-in for the plugin's
// schema, so that the documented shape stays valid.
func TestExamplePluginBlock(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "config.hcl.example"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, `# provider "example"`) {
			in = true
		}
		if in {
			l = strings.TrimPrefix(strings.TrimPrefix(l, "#"), " ")
			if l == "}" {
				in = false
			}
		}
		out = append(out, l)
	}
	opts := Options{Schema: func(p *Provider) (plugin.Schema, error) {
		if p.Plugin == "" {
			return DefaultSchema(p)
		}
		if p.Type != "example" || len(p.SHA256) != 32 {
			t.Errorf("plugin block %+v", p)
		}
		return plugin.Schema{Attributes: []plugin.Attribute{
			{Name: "key_id", Type: plugin.String, Required: true},
			{Name: "key", Type: plugin.String, Secret: true, Required: true},
		}}, nil
	}, Getenv: func(string) (string, bool) { return "", false }}
	cfg, err := ParseWith([]byte(strings.Join(out, "\n")), "/x/keyctl.hcl", opts)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := cfg.Provider("ext")
	if !ok || p.Plugin != "/usr/local/libexec/keyctl-provider-example" || p.SecretEnv["key"] != "EXAMPLE_KEK_HEX" {
		t.Fatalf("ext = %+v", p)
	}
}

func TestNamedKeyrings(t *testing.T) {
	const provs = "provider \"localfile\" \"a\" {\n  key_file = \"a.json\"\n}\nprovider \"localfile\" \"b\" {\n  key_file = \"b.json\"\n}\n"
	src := provs + "keyring \"prod\" {\n  primary = \"a\"\n}\nkeyring \"migrate\" {\n  primary = \"b\"\n  decrypt_only = [\"a\"]\n}\nkeyset {\n  file = \"k\"\n  keyring = \"migrate\"\n}\n"
	cfg, err := Parse([]byte(src), "keyctl.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Keyrings) != 2 || cfg.Keyring.Name != "migrate" || cfg.Keyring.Primary != "b" || cfg.Keyset.Keyring != "migrate" {
		t.Fatalf("keyrings %+v, in use %+v", cfg.Keyrings, cfg.Keyring)
	}
	if err := cfg.SelectKeyring("prod"); err != nil || cfg.Keyring.Primary != "a" {
		t.Fatalf("select prod: %v %+v", err, cfg.Keyring)
	}
	if err := cfg.SelectKeyring("nope"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"prod"`) {
		t.Fatalf("select nope: %v", err)
	}

	for _, c := range []struct {
		name, tail, want string
		line             int
	}{
		{"unknown keyring", "keyring \"prod\" {\n  primary = \"a\"\n}\nkeyset {\n  file = \"k\"\n  keyring = \"staging\"\n}\n",
			`keyctl.hcl:12,13: Unknown keyring name; The keyset names keyring "staging", but no keyring block has that name; declared: "prod"`, 12},
		{"ambiguous", "keyring \"x\" {\n  primary = \"a\"\n}\nkeyring \"y\" {\n  primary = \"b\"\n}\nkeyset {\n  file = \"k\"\n}\n", "Which keyring?", 13},
		{"duplicate name", "keyring \"x\" {\n  primary = \"a\"\n}\nkeyring \"x\" {\n  primary = \"b\"\n}\nkeyset {\n  file = \"k\"\n}\n", "Duplicate keyring block", 10},
		{"two labels", "keyring \"x\" \"y\" {\n  primary = \"a\"\n}\nkeyset {\n  file = \"k\"\n}\n", "Extraneous label for keyring", 7},
		{"unknown provider in a named keyring", "keyring \"x\" {\n  primary = \"zz\"\n}\nkeyset {\n  file = \"k\"\n}\n", "Unknown provider name", 8},
	} {
		_, err := Parse([]byte(provs+c.tail), "keyctl.hcl")
		var ce *Error
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
			continue
		}
		if d := ce.Diags(); d[0].Line != c.line {
			t.Errorf("%s: first diagnostic on line %d, want %d", c.name, d[0].Line, c.line)
		}
	}
}
