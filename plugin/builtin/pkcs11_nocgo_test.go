//go:build !cgo

package builtin_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

// TestPKCS11WithoutCgo: in a CGO_ENABLED=0 build the adapter still
// validates the block, then fails with the provider's clear error.
func TestPKCS11WithoutCgo(t *testing.T) {
	if pkcs11.Available {
		t.Fatal("pkcs11.Available in a build without cgo")
	}
	_, err := builtin.PKCS11.Open(context.Background(), plugin.Values{
		"module":      {Str: "/usr/lib/softhsm/libsofthsm2.so"},
		"token_label": {Str: "tok"},
		"pin":         {Secret: []byte("1234")},
		"key_label":   {Str: "kek"},
	})
	if !errors.Is(err, core.ErrUnsupported) || !strings.Contains(err.Error(), "CGO_ENABLED=1") {
		t.Fatalf("Open: %v", err)
	}
}
