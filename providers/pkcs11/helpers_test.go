//go:build cgo

package pkcs11_test

import (
	"context"
	"testing"

	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
)

const testToken = "keyctl-test"

// hsm is one SoftHSM2 setup with one token.
type hsm struct {
	*softhsmtest.Env
	token  string
	serial string
}

func newHSM(t testing.TB) *hsm {
	t.Helper()
	// SoftHSM reads SOFTHSM2_CONF at C_Initialize: a provider left open by
	// an earlier test would keep the module on that test's token directory.
	if n := pkcs11.OpenModules(); n != 0 {
		t.Fatalf("%d PKCS#11 module(s) still open: an earlier test did not close its provider", n)
	}
	e := softhsmtest.Setup(t)
	serial := e.InitToken(t, testToken, softhsmtest.UserPIN)
	return &hsm{Env: e, token: testToken, serial: serial}
}

func (h *hsm) config(keyLabel string) pkcs11.Config {
	return pkcs11.Config{
		Module:     h.Module,
		TokenLabel: h.token,
		PIN:        []byte(softhsmtest.UserPIN),
		KeyLabel:   keyLabel,
	}
}

// open opens a provider and closes it when the test ends.
func open(t testing.TB, cfg pkcs11.Config) *pkcs11.Provider {
	t.Helper()
	p, err := pkcs11.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// create creates the KEK's first version and returns the provider.
func create(t testing.TB, cfg pkcs11.Config) *pkcs11.Provider {
	t.Helper()
	p, err := pkcs11.CreateKey(context.Background(), cfg)
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}
