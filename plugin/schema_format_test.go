package plugin_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/plugin"
)

// TestValuesNeverPrintSecrets: formatting Values with any verb redacts
// secret attributes.
func TestValuesNeverPrintSecrets(t *testing.T) {
	v := plugin.Values{
		"pin":      {Secret: []byte("1234-super-secret")},
		"key_file": {Str: "kek.json"},
		"sessions": {Num: 4},
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
		out := fmt.Sprintf(verb, v)
		if strings.Contains(out, "super-secret") || strings.Contains(out, fmt.Sprintf("%x", "1234-super-secret")) {
			t.Fatalf("%s of Values reveals the secret: %s", verb, out)
		}
	}
	if out := fmt.Sprint(v); !strings.Contains(out, "kek.json") || !strings.Contains(out, "<redacted>") {
		t.Fatalf("Values print as %s", out)
	}
}
