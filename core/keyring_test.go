package core_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
)

func TestMemProviderConformance(t *testing.T) {
	providertest.Run(t, providertest.Harness{
		New:   func(t *testing.T) core.KeyProvider { return newMem("kek-a") },
		Other: func(t *testing.T) core.KeyProvider { return newMem("kek-b") },
	})
}

func TestNewKeyringRejectsDuplicates(t *testing.T) {
	if _, err := core.NewKeyring(newMem("a"), newMem("a")); err == nil {
		t.Fatal("two providers with the same Ref were accepted")
	}
	if _, err := core.NewKeyring(nil); err == nil {
		t.Fatal("nil primary accepted")
	}
}

func TestKeyringRoutes(t *testing.T) {
	ctx := context.Background()
	a, b, c := newMem("a"), newMem("b"), newMem("c")
	ec := core.Context{"k": "v"}

	ringB, _ := core.NewKeyring(b)
	dek, wkB, err := ringB.GenerateDEK(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := core.NewKeyring(a, c, b)
	got, err := ring.Unwrap(ctx, wkB, ec)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap through decrypt-only provider: %v", err)
	}
	if n := a.unwraps.Load() + c.unwraps.Load(); n != 0 {
		t.Fatalf("unwrap tried %d calls on providers the record does not name (trial decryption)", n)
	}

	// No configured provider: the error names what was asked and what is configured.
	ringA, _ := core.NewKeyring(a, c)
	_, err = ringA.Unwrap(ctx, wkB, ec)
	if !errors.Is(err, core.ErrNoProvider) {
		t.Fatalf("err = %v, want ErrNoProvider", err)
	}
	for _, want := range []string{"mem:b", `version "1"`, "mem:a", "mem:c"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if !core.IsInputError(err) {
		t.Error("ErrNoProvider is not classed as an input error")
	}
}

func TestKeyringMultiWrapFallback(t *testing.T) {
	ctx := context.Background()
	a, b := newMem("a"), newMem("b")
	dek, _ := core.NewDEK()
	sa, _ := a.WrapKey(ctx, dek, nil)
	sb, _ := b.WrapKey(ctx, dek, nil)
	sa.Data[20] ^= 1 // a's wrap is damaged; b's still opens
	wk := &core.WrappedKey{Stanzas: []core.Stanza{sa, sb}}
	ring, _ := core.NewKeyring(a, b)
	got, err := ring.Unwrap(ctx, wk, nil)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap did not fall back to the second wrap: %v", err)
	}
	sb.Data[20] ^= 1
	wk = &core.WrappedKey{Stanzas: []core.Stanza{sa, sb}}
	_, err = ring.Unwrap(ctx, wk, nil)
	if !errors.Is(err, core.ErrUnwrapFailed) || !strings.Contains(err.Error(), "mem:a") || !strings.Contains(err.Error(), "mem:b") {
		t.Fatalf("both wraps damaged: %v", err)
	}
	a.failAll = core.ErrUnavailable
	_, err = ring.Unwrap(ctx, wk, nil)
	if !errors.Is(err, core.ErrUnavailable) || core.IsInputError(err) && !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("vault down: %v", err)
	}
}

// liar returns stanzas naming another provider.
type liar struct{ *memProvider }

func (l liar) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	s, err := l.memProvider.WrapKey(ctx, dek, ec)
	s.KeyID = "someone-else"
	return s, err
}

func TestKeyringRejectsStanzaForOtherRef(t *testing.T) {
	ring, _ := core.NewKeyring(liar{newMem("a")})
	if _, _, err := ring.GenerateDEK(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "someone-else") {
		t.Fatalf("keyring accepted a stanza naming another KEK: %v", err)
	}
}

func TestRewrap(t *testing.T) {
	ctx := context.Background()
	a, b := newMem("a"), newMem("b")
	ec := core.Context{"row": "1"}
	ringA, _ := core.NewKeyring(a)
	dek, wk, err := ringA.GenerateDEK(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	// A DR wrap under b is kept through rewraps of a.
	sb, _ := b.WrapKey(ctx, dek, ec)
	wk.Stanzas = append(wk.Stanzas, sb)
	orig := wk.Clone()

	ring, _ := core.NewKeyring(a, b)
	rw, _ := ring.NewRewrapper(ctx)
	out, st, err := rw.Rewrap(ctx, wk, ec)
	if err != nil || st != core.AlreadyCurrent || out != wk {
		t.Fatalf("rewrap of a current key = %v, %v", st, err)
	}

	if _, err := a.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	rw, _ = ring.NewRewrapper(ctx)
	out, st, err = rw.Rewrap(ctx, wk, ec)
	if err != nil || st != core.Rewrapped {
		t.Fatalf("rewrap after rotate = %v, %v", st, err)
	}
	if len(out.Stanzas) != 2 || out.Stanzas[0].KeyVersion != "2" || out.Stanzas[0].KeyID != "a" || out.Stanzas[1].KeyID != "b" {
		t.Fatalf("rewrapped stanzas: %+v", out.Stanzas)
	}
	if wk.String() != orig.String() {
		t.Fatal("Rewrap modified its input")
	}
	got, err := ring.Unwrap(ctx, out, ec)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap after rewrap: %v", err)
	}
	// Rerun: already current.
	if _, st, _ := rw.Rewrap(ctx, out, ec); st != core.AlreadyCurrent {
		t.Fatalf("second rewrap = %v", st)
	}
	// Wrong context: fails, nothing changes.
	if _, st, err := rw.Rewrap(ctx, wk, core.Context{"row": "2"}); st != core.RewrapFailed || !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("rewrap with wrong context = %v, %v", st, err)
	}
	// Migration: b becomes primary, a decrypt-only.
	ringB, _ := core.NewKeyring(b, a)
	rwB, _ := ringB.NewRewrapper(ctx)
	moved, st, err := rwB.Rewrap(ctx, orig, ec)
	if err != nil || st != core.AlreadyCurrent || moved != orig {
		t.Fatalf("record already has a wrap under b's current version: %v %v", st, err)
	}
}

// corrupter wraps garbage: the verification step must catch it.
type corrupter struct{ *memProvider }

func (c corrupter) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	d, err := c.memProvider.UnwrapKey(ctx, s, ec)
	if err == nil && s.KeyVersion == "2" {
		d[0] ^= 1
	}
	return d, err
}

func TestRewrapVerifies(t *testing.T) {
	ctx := context.Background()
	m := newMem("a")
	p := corrupter{m}
	ring, _ := core.NewKeyring(p)
	_, wk, _ := ring.GenerateDEK(ctx, nil)
	_, _ = m.RotateKey(ctx)
	rw, _ := ring.NewRewrapper(ctx)
	_, st, err := rw.Rewrap(ctx, wk, nil)
	if st != core.RewrapFailed || err == nil || !strings.Contains(err.Error(), "verify") {
		t.Fatalf("rewrap with a provider that returns a different DEK = %v, %v", st, err)
	}
}

func TestRewrapAll(t *testing.T) {
	ctx := context.Background()
	a := newMem("a")
	ring, _ := core.NewKeyring(a)
	const n = 300
	items := make([]core.RewrapItem, n)
	deks := make([]core.DEK, n)
	for i := range items {
		ec := core.Context{"i": string(rune('a' + i%26))}
		d, wk, err := ring.GenerateDEK(ctx, ec)
		if err != nil {
			t.Fatal(err)
		}
		items[i], deks[i] = core.RewrapItem{Key: wk, Context: ec}, d
	}
	// Item 7 is damaged; item 8 has the wrong context.
	items[7].Key.Stanzas[0].Data[15] ^= 1
	items[8].Context = core.Context{"other": "x"}
	if _, err := a.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	rw, _ := ring.NewRewrapper(ctx)
	res := rw.RewrapAll(ctx, items, 4)
	for i, r := range res {
		if i == 7 || i == 8 {
			if r.Status != core.RewrapFailed || !errors.Is(r.Err, core.ErrUnwrapFailed) || r.Key != items[i].Key {
				t.Fatalf("item %d: %v %v", i, r.Status, r.Err)
			}
			continue
		}
		if r.Status != core.Rewrapped || r.Err != nil {
			t.Fatalf("item %d: %v %v", i, r.Status, r.Err)
		}
		got, err := ring.Unwrap(ctx, r.Key, items[i].Context)
		if err != nil || !got.Equal(deks[i]) || r.Key.Stanzas[0].KeyVersion != "2" {
			t.Fatalf("item %d after rewrap: %v", i, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for _, r := range rw.RewrapAll(cctx, items[:5], 2) {
		if !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("cancelled RewrapAll: %v", r.Err)
		}
	}
}

// TestRewrapNeverDropsAnUnverifiedWrap: a record whose wraps hold different
// DEKs (a hand-assembled or hostile record) makes rewrap fail without
// dropping anything, instead of rewrapping the wrong DEK and discarding the
// real one.
func TestRewrapNeverDropsAnUnverifiedWrap(t *testing.T) {
	ctx := context.Background()
	a, b := newMem("a"), newMem("b")
	real, _ := core.NewDEK()
	other, _ := core.NewDEK()
	sa, _ := a.WrapKey(ctx, real, nil)
	sb, _ := b.WrapKey(ctx, other, nil)
	wk := &core.WrappedKey{Stanzas: []core.Stanza{sb, sa}}
	ring, _ := core.NewKeyring(a, b)
	if _, err := a.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	rw, _ := ring.NewRewrapper(ctx)
	out, st, err := rw.Rewrap(ctx, wk, nil)
	if st != core.RewrapFailed || !errors.Is(err, core.ErrUnwrapFailed) || !strings.Contains(err.Error(), "inconsistent") {
		t.Fatalf("rewrap of an inconsistent record = %v, %v, %v", out, st, err)
	}
}

func TestRewrapDropsWrapsOfDestroyedVersions(t *testing.T) {
	ctx := context.Background()
	a := newMem("a")
	ring, _ := core.NewKeyring(a)
	dek, wk, _ := ring.GenerateDEK(ctx, nil)
	gone := wk.Stanzas[0]
	gone.KeyVersion = "7" // a version the provider no longer has
	wk.Stanzas = append(wk.Stanzas, gone)
	_, _ = a.RotateKey(ctx)
	rw, _ := ring.NewRewrapper(ctx)
	out, st, err := rw.Rewrap(ctx, wk, nil)
	if err != nil || st != core.Rewrapped || len(out.Stanzas) != 1 || out.Stanzas[0].KeyVersion != "2" {
		t.Fatalf("rewrap = %v %v %+v", st, err, out)
	}
	if got, err := ring.Unwrap(ctx, out, nil); err != nil || !got.Equal(dek) {
		t.Fatal(err)
	}
}

// TestRewrapVerifyCurrent: with VerifyCurrent a record whose current-version
// wrap is damaged is repaired from its other wraps instead of being called
// already current.
func TestRewrapVerifyCurrent(t *testing.T) {
	ctx := context.Background()
	a := newMem("a")
	ring, _ := core.NewKeyring(a)
	dek, wk, _ := ring.GenerateDEK(ctx, nil)
	_, _ = a.RotateKey(ctx)
	fake := wk.Stanzas[0]
	fake.KeyVersion = "2"
	fake.Data = bytes.Repeat([]byte{1}, 60)
	wk.Stanzas = append([]core.Stanza{fake}, wk.Stanzas...)

	rw, _ := ring.NewRewrapper(ctx)
	if _, st, _ := rw.Rewrap(ctx, wk, nil); st != core.AlreadyCurrent {
		t.Fatalf("without VerifyCurrent: %v", st)
	}
	rw.VerifyCurrent = true
	out, st, err := rw.Rewrap(ctx, wk, nil)
	if err != nil || st != core.Rewrapped || len(out.Stanzas) != 1 {
		t.Fatalf("with VerifyCurrent: %v %v %+v", st, err, out)
	}
	if got, err := a.UnwrapKey(ctx, out.Stanzas[0], nil); err != nil || !got.Equal(dek) {
		t.Fatalf("repaired wrap: %v", err)
	}
	if _, st, _ := rw.Rewrap(ctx, out, nil); st != core.AlreadyCurrent {
		t.Fatalf("repaired record not current: %v", st)
	}
}

// badGenerator returns DEKs that its wraps do not hold, or short DEKs.
type badGenerator struct {
	*memProvider
	short bool
}

func (g badGenerator) GenerateDataKey(ctx context.Context, ec core.Context) (core.DEK, core.Stanza, error) {
	d, _ := core.NewDEK()
	s, err := g.WrapKey(ctx, d, ec)
	other, _ := core.NewDEK()
	if g.short {
		return other[:16], s, err
	}
	return other, s, err
}

func TestGenerateDEKVerifiesProvider(t *testing.T) {
	for _, short := range []bool{false, true} {
		ring, _ := core.NewKeyring(badGenerator{newMem("a"), short})
		if _, _, err := ring.GenerateDEK(context.Background(), nil); err == nil {
			t.Fatalf("short=%v: a generated DEK that does not match its wrap was accepted", short)
		}
	}
}
