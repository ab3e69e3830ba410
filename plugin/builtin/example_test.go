package builtin_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/config"
)

// parseExampleBlock uncomments the `# provider "TYPE"` block of
// config.hcl.example and parses the file, so that a provider's documented
// shape is checked against its adapter's schema.
func parseExampleBlock(t *testing.T, typ string) *config.Config {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "config.hcl.example"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in, found := false, false
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, `# provider "`+typ+`"`) {
			in, found = true, true
		}
		if in {
			l = strings.TrimPrefix(strings.TrimPrefix(l, "#"), " ")
			if l == "}" {
				in = false
			}
		}
		out = append(out, l)
	}
	if !found {
		t.Fatalf(`config.hcl.example has no commented provider %q block`, typ)
	}
	cfg, err := config.ParseWith([]byte(strings.Join(out, "\n")), "/x/keyctl.hcl", config.Options{Getenv: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// noEnv is a Getenv with no variables set.
func noEnv(string) (string, bool) { return "", false }
