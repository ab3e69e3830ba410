//go:build cgo

package pkcs11_test

import (
	"fmt"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

// TestConformance runs the provider conformance suite against SoftHSM2,
// in-process, once per wrapping mechanism. Every provider the harness makes
// is a fresh key label on one token.
func TestConformance(t *testing.T) {
	for _, mech := range []string{pkcs11.MechanismGCM, pkcs11.MechanismKWP} {
		t.Run(mech, func(t *testing.T) {
			h := newHSM(t)
			n := 0
			newProvider := func(t *testing.T) core.KeyProvider {
				n++
				cfg := h.config(fmt.Sprintf("conformance-%d", n))
				cfg.Mechanism = mech
				return create(t, cfg)
			}
			providertest.Run(t, providertest.Harness{New: newProvider, Other: newProvider})
		})
	}
}
