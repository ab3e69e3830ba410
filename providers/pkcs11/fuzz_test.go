//go:build cgo

package pkcs11_test

import (
	"context"
	"errors"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

// FuzzUnwrap feeds arbitrary stanza versions, algorithms and wrapped bytes
// to UnwrapKey on SoftHSM2, with both wrap mechanisms' keys. It must never
// panic nor succeed on bytes it did not wrap, and every error wraps a
// documented sentinel.
func FuzzUnwrap(f *testing.F) {
	h := newHSM(f)
	p := create(f, h.config("fuzz"))
	cfg := h.config("fuzz")
	cfg.Mechanism = pkcs11.MechanismKWP
	kwp := open(f, cfg)
	dek := newDEK(f)
	for _, prov := range []*pkcs11.Provider{p, kwp} {
		s := mustWrap(f, prov, dek)
		f.Add(s.KeyVersion, uint8(s.Algorithm), s.Data)
		f.Add(s.KeyVersion, uint8(s.Algorithm), s.Data[:len(s.Data)-1])
		f.Add("", uint8(s.Algorithm), s.Data)
	}
	f.Add("00000001", uint8(core.AlgAWSKMS), []byte{1})
	f.Add("zz", uint8(0xE0), make([]byte, 60))
	f.Fuzz(func(t *testing.T, version string, alg uint8, data []byte) {
		st := core.Stanza{Provider: pkcs11.Type, KeyID: p.Ref().KeyID, KeyVersion: version, Algorithm: core.Algorithm(alg), Data: data}
		got, err := p.UnwrapKey(context.Background(), st, ec)
		if err == nil {
			if !got.Equal(dek) {
				t.Fatal("unwrap of fuzzed bytes succeeded with another DEK")
			}
			return
		}
		for _, s := range []error{core.ErrUnwrapFailed, core.ErrKeyNotFound, core.ErrUnknownAlgorithm, core.ErrMalformed} {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("error wraps no documented sentinel: %v", err)
	})
}
