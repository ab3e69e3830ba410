//go:build unix

package localfile_test

import (
	"path/filepath"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/providers/localfile"
)

func TestConformance(t *testing.T) {
	newProvider := func(keyID string) func(t *testing.T) core.KeyProvider {
		return func(t *testing.T) core.KeyProvider {
			p, err := localfile.Create(filepath.Join(t.TempDir(), "kek.json"), localfile.CreateOptions{KeyID: keyID})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	providertest.Run(t, providertest.Harness{
		New:   newProvider("conformance"),
		Other: newProvider("conformance-other"),
	})
}
