//go:build !cgo

package pkcs11_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

func TestNoCgo(t *testing.T) {
	if pkcs11.Available {
		t.Fatal("Available in a cgo-less build")
	}
	cfg := pkcs11.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "t", KeyLabel: "k", PIN: []byte("1234")}
	p, err := pkcs11.New(context.Background(), cfg)
	if p != nil || !errors.Is(err, core.ErrUnsupported) || !strings.Contains(err.Error(), "CGO_ENABLED") {
		t.Fatalf("New = %v, %v; want an ErrUnsupported naming CGO_ENABLED", p, err)
	}
	if _, err := pkcs11.CreateKey(context.Background(), cfg); !errors.Is(err, core.ErrUnsupported) {
		t.Fatalf("CreateKey: %v", err)
	}
}
