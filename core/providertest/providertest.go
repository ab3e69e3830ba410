// Package providertest is the conformance suite that every keyctl key
// provider passes against its real backend, in-process and through the
// plugin bridge. A provider's test calls [Run] with a [Harness] that makes
// fresh providers.
package providertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/keyctl/keyctl/core"
)

// Harness tells the suite how to obtain providers.
type Harness struct {
	// New returns a provider over a fresh KEK, ready to wrap. The suite
	// checks optional interfaces (KeyRotator, VaultRewrapper,
	// DataKeyGenerator, HealthChecker) with type assertions and exercises
	// those that the provider implements.
	New func(t *testing.T) core.KeyProvider
	// Other, if set, returns a provider of the same type over a different
	// KEK; the suite checks that neither opens the other's wraps.
	Other func(t *testing.T) core.KeyProvider
	// NoRotation skips the rotation tests even if the provider implements
	// core.KeyRotator (for backends that refuse on-demand rotation).
	NoRotation bool
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("providertest: Harness.New is nil")
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"RefIsStableAndValid", testRef},
		{"RoundTrip", testRoundTrip},
		{"WrapsDiffer", testWrapsDiffer},
		{"ContextIsBound", testContextBound},
		{"TamperedDataFails", testTampered},
		{"StanzaOfOtherRefRefused", testOtherRef},
		{"UnknownVersion", testUnknownVersion},
		{"BadDEKLength", testBadDEK},
		{"CancelledContext", testCancelled},
		{"Concurrent", testConcurrent},
		{"OptionalRotate", testRotate},
		{"OptionalVaultRewrap", testVaultRewrap},
		{"OptionalGenerateDataKey", testGenerate},
		{"OptionalHealth", testHealth},
		{"OtherKEK", testOtherKEK},
		{"SecretsNotInErrors", testNoSecretsInErrors},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

func newDEK(t *testing.T) core.DEK {
	t.Helper()
	d, err := core.NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var testEC = core.Context{"table": "users", "column": "email"}

func wrap(t *testing.T, p core.KeyProvider, dek core.DEK, ec core.Context) core.Stanza {
	t.Helper()
	s, err := p.WrapKey(context.Background(), dek, ec)
	if err != nil {
		t.Fatalf("WrapKey: %v", err)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("WrapKey returned an invalid stanza: %v", err)
	}
	if s.Ref() != p.Ref() {
		t.Fatalf("stanza Ref %v, provider Ref %v", s.Ref(), p.Ref())
	}
	return s
}

func unwrapOK(t *testing.T, p core.KeyProvider, s core.Stanza, ec core.Context, want core.DEK) {
	t.Helper()
	got, err := p.UnwrapKey(context.Background(), s, ec)
	if err != nil {
		t.Fatalf("UnwrapKey: %v", err)
	}
	if !got.Equal(want) {
		t.Fatal("UnwrapKey returned a different DEK")
	}
}

func unwrapErr(t *testing.T, p core.KeyProvider, s core.Stanza, ec core.Context, want ...error) {
	t.Helper()
	got, err := p.UnwrapKey(context.Background(), s, ec)
	if err == nil {
		got.Zero()
		t.Fatalf("UnwrapKey succeeded, want an error wrapping one of %v", want)
	}
	for _, w := range want {
		if errors.Is(err, w) {
			return
		}
	}
	t.Fatalf("UnwrapKey error %q wraps none of %v", err, want)
}

func testRef(t *testing.T, h Harness) {
	p := h.New(t)
	r1, r2 := p.Ref(), p.Ref()
	if r1 != r2 {
		t.Fatalf("Ref changed between calls: %v, %v", r1, r2)
	}
	s := core.Stanza{Provider: r1.Provider, KeyID: r1.KeyID, Algorithm: core.AlgAES256GCM, Data: []byte{1}}
	if err := s.Validate(); err != nil {
		t.Fatalf("Ref %v does not fit the wrapped-key format: %v", r1, err)
	}
	v, err := p.CurrentVersion(context.Background())
	if err != nil {
		t.Fatalf("CurrentVersion: %v", err)
	}
	dek := newDEK(t)
	if got := wrap(t, p, dek, nil).KeyVersion; got != v {
		t.Fatalf("WrapKey used version %q, CurrentVersion says %q", got, v)
	}
}

func testRoundTrip(t *testing.T, h Harness) {
	p := h.New(t)
	long := core.Context{}
	for i := range 8 {
		long[fmt.Sprintf("k%d", i)] = strings.Repeat("v", 100)
	}
	for name, ec := range map[string]core.Context{"nil": nil, "empty": {}, "two": testEC, "long": long} {
		t.Run(name, func(t *testing.T) {
			dek := newDEK(t)
			s := wrap(t, p, dek, ec)
			unwrapOK(t, p, s, ec, dek)
			wk := &core.WrappedKey{Stanzas: []core.Stanza{s}}
			bin, err := wk.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			back, err := core.ParseWrappedKey(bin)
			if err != nil {
				t.Fatal(err)
			}
			unwrapOK(t, p, back.Stanzas[0], ec, dek)
		})
	}
	// nil and empty contexts are the same context.
	dek := newDEK(t)
	unwrapOK(t, p, wrap(t, p, dek, nil), core.Context{}, dek)
}

func testWrapsDiffer(t *testing.T, h Harness) {
	p := h.New(t)
	dek := newDEK(t)
	a := wrap(t, p, dek, testEC)
	b := wrap(t, p, dek, testEC)
	if bytes.Equal(a.Data, b.Data) {
		t.Fatal("two wraps of the same DEK are identical: the provider reuses its nonce or IV")
	}
	if bytes.Contains(a.Data, dek) {
		t.Fatal("wrapped bytes contain the plaintext DEK")
	}
}

func testContextBound(t *testing.T, h Harness) {
	p := h.New(t)
	dek := newDEK(t)
	s := wrap(t, p, dek, testEC)
	for name, ec := range map[string]core.Context{
		"none":     nil,
		"changed":  {"table": "users", "column": "phone"},
		"extra":    {"table": "users", "column": "email", "x": "y"},
		"subset":   {"table": "users"},
		"swapped":  {"table": "email", "column": "users"},
		"keycase":  {"Table": "users", "column": "email"},
		"trailing": {"table": "users ", "column": "email"},
	} {
		t.Run(name, func(t *testing.T) { unwrapErr(t, p, s, ec, core.ErrUnwrapFailed) })
	}
	s2 := wrap(t, p, dek, nil)
	unwrapErr(t, p, s2, testEC, core.ErrUnwrapFailed)
}

func testTampered(t *testing.T, h Harness) {
	p := h.New(t)
	dek := newDEK(t)
	s := wrap(t, p, dek, testEC)
	for _, i := range []int{0, len(s.Data) / 2, len(s.Data) - 1} {
		for _, bit := range []byte{0x01, 0x80} {
			m := s
			m.Data = bytes.Clone(s.Data)
			m.Data[i] ^= bit
			unwrapErr(t, p, m, testEC, core.ErrUnwrapFailed, core.ErrMalformed)
		}
	}
	for _, n := range []int{1, len(s.Data) / 2, len(s.Data) - 1} {
		m := s
		m.Data = bytes.Clone(s.Data[:n])
		unwrapErr(t, p, m, testEC, core.ErrUnwrapFailed, core.ErrMalformed)
	}
	m := s
	m.Data = append(bytes.Clone(s.Data), 0)
	unwrapErr(t, p, m, testEC, core.ErrUnwrapFailed, core.ErrMalformed)
}

func testOtherRef(t *testing.T, h Harness) {
	p := h.New(t)
	s := wrap(t, p, newDEK(t), nil)
	m := s
	m.KeyID = s.KeyID + "-other"
	unwrapErr(t, p, m, nil, core.ErrNoProvider, core.ErrKeyNotFound)
	m = s
	m.Provider = "not-" + s.Provider
	if len(m.Provider) > core.MaxProviderTypeLen {
		m.Provider = m.Provider[:core.MaxProviderTypeLen]
	}
	unwrapErr(t, p, m, nil, core.ErrNoProvider)
}

func testUnknownVersion(t *testing.T, h Harness) {
	p := h.New(t)
	s := wrap(t, p, newDEK(t), nil)
	s.KeyVersion = "no-such-version-" + s.KeyVersion
	unwrapErr(t, p, s, nil, core.ErrKeyNotFound, core.ErrUnwrapFailed)
}

func testBadDEK(t *testing.T, h Harness) {
	p := h.New(t)
	for _, n := range []int{0, 16, 31, 33, 64} {
		_, err := p.WrapKey(context.Background(), make(core.DEK, n), nil)
		if !errors.Is(err, core.ErrMalformed) {
			t.Errorf("WrapKey of a %d-byte DEK: error %v, want ErrMalformed", n, err)
		}
	}
	bad := core.Context{"": "empty key"}
	if _, err := p.WrapKey(context.Background(), newDEK(t), bad); !errors.Is(err, core.ErrMalformed) {
		t.Errorf("WrapKey with an invalid context: error %v, want ErrMalformed", err)
	}
}

func testCancelled(t *testing.T, h Harness) {
	p := h.New(t)
	dek := newDEK(t)
	s := wrap(t, p, dek, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.WrapKey(ctx, dek, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("WrapKey with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := p.UnwrapKey(ctx, s, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("UnwrapKey with a cancelled context: %v, want context.Canceled", err)
	}
}

func testConcurrent(t *testing.T, h Harness) {
	p := h.New(t)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ec := core.Context{"worker": fmt.Sprint(w)}
			for range each {
				dek, err := core.NewDEK()
				if err != nil {
					errs <- err
					return
				}
				s, err := p.WrapKey(context.Background(), dek, ec)
				if err != nil {
					errs <- err
					return
				}
				got, err := p.UnwrapKey(context.Background(), s, ec)
				if err != nil {
					errs <- err
					return
				}
				if !got.Equal(dek) {
					errs <- errors.New("concurrent round trip returned a different DEK")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testRotate(t *testing.T, h Harness) {
	p := h.New(t)
	r, ok := p.(core.KeyRotator)
	if !ok || h.NoRotation {
		t.Skip("provider does not implement core.KeyRotator")
	}
	ctx := context.Background()
	dek := newDEK(t)
	old := wrap(t, p, dek, testEC)
	v, err := r.RotateKey(ctx)
	if errors.Is(err, core.ErrUnsupported) {
		// The KeyRotator contract allows it (a plugin client implements
		// the interface whatever its plugin supports).
		t.Skip("RotateKey: unsupported")
	}
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if v == old.KeyVersion {
		t.Fatalf("RotateKey returned the old version %q", v)
	}
	cur, err := p.CurrentVersion(ctx)
	if err != nil || cur != v {
		t.Fatalf("CurrentVersion after rotate = %q, %v; want %q", cur, err, v)
	}
	unwrapOK(t, p, old, testEC, dek)
	s := wrap(t, p, dek, testEC)
	if s.KeyVersion != v {
		t.Fatalf("wrap after rotate used version %q, want %q", s.KeyVersion, v)
	}
	unwrapOK(t, p, s, testEC, dek)

	// The keyring moves the old wrap onto the new version.
	ring, err := core.NewKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := ring.NewRewrapper(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, st, err := rw.Rewrap(ctx, &core.WrappedKey{Stanzas: []core.Stanza{old}}, testEC)
	if err != nil || st != core.Rewrapped {
		t.Fatalf("Rewrap = %v, %v", st, err)
	}
	if len(out.Stanzas) != 1 || out.Stanzas[0].KeyVersion != v {
		t.Fatalf("rewrapped record has %d wraps, first at version %q; want 1 at %q", len(out.Stanzas), out.Stanzas[0].KeyVersion, v)
	}
	got, err := ring.Unwrap(ctx, out, testEC)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap after rewrap: %v", err)
	}
}

func testVaultRewrap(t *testing.T, h Harness) {
	p := h.New(t)
	vr, ok := p.(core.VaultRewrapper)
	if !ok {
		t.Skip("provider does not implement core.VaultRewrapper")
	}
	ctx := context.Background()
	dek := newDEK(t)
	src := wrap(t, p, dek, testEC)
	if r, ok := p.(core.KeyRotator); ok && !h.NoRotation {
		if _, err := r.RotateKey(ctx); err != nil && !errors.Is(err, core.ErrUnsupported) {
			t.Fatalf("RotateKey: %v", err)
		}
	}
	cur, err := p.CurrentVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := vr.RewrapKey(ctx, src, testEC)
	if errors.Is(err, core.ErrUnsupported) {
		t.Skip("RewrapKey: unsupported")
	}
	if err != nil {
		t.Fatalf("RewrapKey: %v", err)
	}
	if dst.KeyVersion != cur || dst.Ref() != p.Ref() {
		t.Fatalf("RewrapKey result at %v version %q, want %v version %q", dst.Ref(), dst.KeyVersion, p.Ref(), cur)
	}
	unwrapOK(t, p, dst, testEC, dek)
	if _, err := vr.RewrapKey(ctx, src, core.Context{"wrong": "context"}); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("RewrapKey with the wrong context: %v, want ErrUnwrapFailed", err)
	}
}

func testGenerate(t *testing.T, h Harness) {
	p := h.New(t)
	g, ok := p.(core.DataKeyGenerator)
	if !ok {
		t.Skip("provider does not implement core.DataKeyGenerator")
	}
	dek, s, err := g.GenerateDataKey(context.Background(), testEC)
	if errors.Is(err, core.ErrUnsupported) {
		t.Skip("GenerateDataKey: unsupported")
	}
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if err := dek.Validate(); err != nil {
		t.Fatal(err)
	}
	unwrapOK(t, p, s, testEC, dek)
}

func testHealth(t *testing.T, h Harness) {
	p := h.New(t)
	hc, ok := p.(core.HealthChecker)
	if !ok {
		t.Skip("provider does not implement core.HealthChecker")
	}
	if err := hc.Health(context.Background()); err != nil {
		t.Fatalf("Health: %v", err)
	}
}

func testOtherKEK(t *testing.T, h Harness) {
	if h.Other == nil {
		t.Skip("Harness.Other not set")
	}
	a, b := h.New(t), h.Other(t)
	if a.Ref() == b.Ref() {
		t.Fatalf("Harness.Other returned the same Ref %v", a.Ref())
	}
	dek := newDEK(t)
	s := wrap(t, a, dek, nil)
	unwrapErr(t, b, s, nil, core.ErrNoProvider, core.ErrKeyNotFound, core.ErrUnwrapFailed)
	// Even relabelled as b's, a's wrap must not open under b's KEK.
	s.KeyID = b.Ref().KeyID
	v, err := b.CurrentVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.KeyVersion = v
	unwrapErr(t, b, s, nil, core.ErrUnwrapFailed)
}

func testNoSecretsInErrors(t *testing.T, h Harness) {
	p := h.New(t)
	dek := newDEK(t)
	s := wrap(t, p, dek, testEC)
	_, err := p.UnwrapKey(context.Background(), s, core.Context{"x": "y"})
	if err == nil {
		t.Fatal("unwrap with the wrong context succeeded")
	}
	msg := err.Error()
	for _, enc := range []string{fmt.Sprintf("%x", []byte(dek)), string(dek)} {
		if strings.Contains(msg, enc) {
			t.Fatalf("error reveals the DEK: %q", msg)
		}
	}
	if got := fmt.Sprintf("%v %x %s %#v", dek, dek, dek, dek); strings.Contains(got, fmt.Sprintf("%x", []byte(dek))) {
		t.Fatalf("formatting a DEK reveals it: %q", got)
	}
}
