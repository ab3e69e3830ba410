package core_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/keyctl/keyctl/core"
)

func newFieldCipher(t testing.TB) (*core.FieldCipher, map[uint32]core.DEK) {
	t.Helper()
	keys := map[uint32]core.DEK{}
	for _, id := range []uint32{0x0a0b0c0d, 0x01020304} {
		d, err := core.NewDEK()
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = d
	}
	f, err := core.NewFieldCipher(0x0a0b0c0d, keys)
	if err != nil {
		t.Fatal(err)
	}
	return f, keys
}

func TestFieldRoundTrip(t *testing.T) {
	f, _ := newFieldCipher(t)
	for _, n := range []int{0, 1, 30, 256, 4096, 1 << 20} {
		pt := bytes.Repeat([]byte{'x'}, n)
		ad := []byte("users|email|42")
		ct, err := f.Encrypt(pt, ad)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != n+core.FieldOverhead {
			t.Fatalf("%d-byte value became %d bytes, want %d", n, len(ct), n+core.FieldOverhead)
		}
		if id, _ := core.DEKID(ct); id != 0x0a0b0c0d {
			t.Fatalf("header names DEK %08x", id)
		}
		got, err := f.Decrypt(ct, ad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip of %d bytes: %v", n, err)
		}
		txt := core.EncodeFieldText(ct)
		back, err := core.DecodeFieldText(txt)
		if err != nil || !bytes.Equal(back, ct) {
			t.Fatalf("text form round trip: %v", err)
		}
	}
}

// TestFieldCompact: DESIGN.md, a 30-byte e-mail stays under about 80 bytes.
func TestFieldCompact(t *testing.T) {
	f, _ := newFieldCipher(t)
	ct, _ := f.Encrypt([]byte("jane.doe.1987@examplemail.com"), nil)
	if len(ct) > 80 {
		t.Fatalf("30-byte e-mail encrypts to %d bytes", len(ct))
	}
}

func TestFieldEncryptAllocatesOnlyOutput(t *testing.T) {
	f, _ := newFieldCipher(t)
	pt := make([]byte, 32)
	ad := []byte("users|email|42")
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := f.Encrypt(pt, ad); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Fatalf("Encrypt makes %.1f allocations, want 1 (the output)", allocs)
	}
	ct, _ := f.Encrypt(pt, ad)
	allocs = testing.AllocsPerRun(200, func() {
		if _, err := f.Decrypt(ct, ad); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Fatalf("Decrypt makes %.1f allocations, want 1 (the output)", allocs)
	}
}

func TestFieldNoncesDiffer(t *testing.T) {
	f, _ := newFieldCipher(t)
	seen := map[string]bool{}
	for range 1000 {
		ct, _ := f.Encrypt([]byte("same"), nil)
		n := string(ct[5:17])
		if seen[n] {
			t.Fatal("nonce repeated")
		}
		seen[n] = true
	}
}

func TestFieldDecryptFailures(t *testing.T) {
	f, keys := newFieldCipher(t)
	ad := []byte("users|email|42")
	ct, _ := f.Encrypt([]byte("jane@example.com"), ad)
	other, _ := core.NewFieldCipher(0x01020304, keys)
	ctOld, _ := other.Encrypt([]byte("old"), ad)
	flip := func(i int) []byte { c := bytes.Clone(ct); c[i] ^= 1; return c }
	unknownID := bytes.Clone(ct)
	unknownID[1] = 0xff
	tests := []struct {
		name string
		ct   []byte
		ad   []byte
		want error
	}{
		{"other row", ct, []byte("users|email|43"), core.ErrDecryptFailed},
		{"no ad", ct, nil, core.ErrDecryptFailed},
		{"flipped nonce", flip(6), ad, core.ErrDecryptFailed},
		{"flipped ciphertext", flip(20), ad, core.ErrDecryptFailed},
		{"flipped tag", flip(len(ct) - 1), ad, core.ErrDecryptFailed},
		{"unknown DEK", unknownID, ad, core.ErrKeyNotFound},
		{"zero DEK id", append([]byte{1, 0, 0, 0, 0}, ct[5:]...), ad, core.ErrMalformed},
		{"version 2", append([]byte{2}, ct[1:]...), ad, core.ErrUnsupportedVersion},
		{"version 0", append([]byte{0}, ct[1:]...), ad, core.ErrUnsupportedVersion},
		{"truncated to header", ct[:core.FieldHeaderLen], ad, core.ErrMalformed},
		{"one byte short of minimum", ct[:core.FieldOverhead-1], ad, core.ErrMalformed},
		{"truncated by one", ct[:len(ct)-1], ad, core.ErrDecryptFailed},
		{"trailing byte", append(bytes.Clone(ct), 0), ad, core.ErrDecryptFailed},
		{"empty", nil, ad, core.ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.Decrypt(tc.ct, tc.ad)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !core.IsInputError(err) {
				t.Fatalf("%v not classed as an input error", err)
			}
		})
	}
	// The decrypt-only DEK still opens old values.
	if got, err := f.Decrypt(ctOld, ad); err != nil || string(got) != "old" {
		t.Fatalf("decrypt with decrypt-only DEK: %v", err)
	}
}

func TestNewFieldCipherErrors(t *testing.T) {
	d, _ := core.NewDEK()
	if _, err := core.NewFieldCipher(1, map[uint32]core.DEK{2: d}); !errors.Is(err, core.ErrKeyNotFound) {
		t.Errorf("missing primary: %v", err)
	}
	if _, err := core.NewFieldCipher(0, map[uint32]core.DEK{0: d}); !errors.Is(err, core.ErrMalformed) {
		t.Errorf("id 0: %v", err)
	}
	if _, err := core.NewFieldCipher(1, map[uint32]core.DEK{1: d[:16]}); !errors.Is(err, core.ErrMalformed) {
		t.Errorf("short DEK: %v", err)
	}
}

func TestKeysetLifecycle(t *testing.T) {
	ctx := context.Background()
	p := newMem("a")
	ring, _ := core.NewKeyring(p)
	ks := core.NewKeyset()
	id1, err := ks.AddDEK(ctx, ring, testNow)
	if err != nil {
		t.Fatal(err)
	}
	f1, err := ks.OpenFieldCipher(ctx, ring)
	if err != nil {
		t.Fatal(err)
	}
	ad := []byte("t|c|1")
	ct1, _ := f1.Encrypt([]byte("v1"), ad)

	id2, err := ks.AddDEK(ctx, ring, testNow)
	if err != nil || id2 == id1 {
		t.Fatalf("second DEK: %v", err)
	}
	if e, _ := ks.Entry(id1); e.State != core.StateDecryptOnly {
		t.Fatalf("old primary is %s", e.State)
	}
	if pe, _ := ks.Primary(); pe.ID != id2 {
		t.Fatal("new DEK is not primary")
	}
	f2, err := ks.OpenFieldCipher(ctx, ring)
	if err != nil {
		t.Fatal(err)
	}
	ct2, _ := f2.Encrypt([]byte("v2"), ad)
	if id, _ := core.DEKID(ct2); id != id2 {
		t.Fatal("new values not under the new primary")
	}
	if got, err := f2.Decrypt(ct1, ad); err != nil || string(got) != "v1" {
		t.Fatalf("old value after DEK rotation: %v", err)
	}

	// Serialise and parse back: identical.
	b, err := ks.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := core.ParseKeyset(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := back.Marshal()
	if !bytes.Equal(b, b2) {
		t.Fatalf("keyset JSON not stable:\n%s\n%s", b, b2)
	}

	// A wrapped key moved to another entry no longer opens (bound to its id).
	swapped, _ := core.ParseKeyset(b)
	swapped.DEKs[0].Wrapped, swapped.DEKs[1].Wrapped = swapped.DEKs[1].Wrapped, swapped.DEKs[0].Wrapped
	if _, err := swapped.OpenFieldCipher(ctx, ring); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("swapped wraps: %v", err)
	}

	// Retire the old DEK: old values no longer decrypt; primary cannot be retired.
	if err := ks.SetState(id2, core.StateRetired); !errors.Is(err, core.ErrFailedPrecondition) || !core.IsInputError(err) {
		t.Fatalf("retiring the primary: %v, want ErrFailedPrecondition", err)
	}
	if err := ks.SetState(id1, core.StateRetired); err != nil {
		t.Fatal(err)
	}
	f3, _ := ks.OpenFieldCipher(ctx, ring)
	if _, err := f3.Decrypt(ct1, ad); !errors.Is(err, core.ErrKeyNotFound) {
		t.Fatalf("value under retired DEK: %v", err)
	}
	if err := ks.SetState(id1, core.StatePrimary); err != nil {
		t.Fatal(err)
	}
	if e, _ := ks.Entry(id2); e.State != core.StateDecryptOnly {
		t.Fatal("promoting a DEK did not demote the old primary")
	}
	if err := ks.SetState(id1, "bogus"); !errors.Is(err, core.ErrMalformed) {
		t.Fatal("bogus state accepted")
	}
}

func TestParseKeysetFailures(t *testing.T) {
	ctx := context.Background()
	ring, _ := core.NewKeyring(newMem("a"))
	ks := core.NewKeyset()
	id, _ := ks.AddDEK(ctx, ring, testNow)
	good, _ := ks.Marshal()
	wk := ks.DEKs[0].Wrapped.String()
	mk := func(s string) []byte { return []byte(s) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, core.ErrMalformed},
		{"not json", mk("nope"), core.ErrMalformed},
		{"future format", bytes.Replace(good, []byte(`"format": 1`), []byte(`"format": 2`), 1), core.ErrUnsupportedVersion},
		{"unknown field", bytes.Replace(good, []byte(`"format": 1`), []byte(`"format": 1, "x": 1`), 1), core.ErrMalformed},
		{"trailing", append(bytes.Clone(good), "{}"...), core.ErrMalformed},
		{"two primaries", mk(`{"format":1,"deks":[{"id":1,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"},{"id":2,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"}]}`), core.ErrMalformed},
		{"no primary", mk(`{"format":1,"deks":[{"id":1,"state":"decrypt-only","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"}]}`), core.ErrMalformed},
		{"duplicate id", mk(`{"format":1,"deks":[{"id":1,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"},{"id":1,"state":"retired","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"}]}`), core.ErrMalformed},
		{"id zero", mk(`{"format":1,"deks":[{"id":0,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"}]}`), core.ErrMalformed},
		{"bad state", mk(`{"format":1,"deks":[{"id":1,"state":"maybe","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"}]}`), core.ErrMalformed},
		{"missing wrapped", mk(`{"format":1,"deks":[{"id":1,"state":"primary","created":"2026-01-01T00:00:00Z"}]}`), core.ErrMalformed},
		{"bad wrapped", mk(`{"format":1,"deks":[{"id":1,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"keyctl-wk1:AAAA"}]}`), core.ErrMalformed},
		{"duplicate field", bytes.Replace(good, []byte(`"format": 1`), []byte(`"format": 1, "format": 1`), 1), core.ErrMalformed},
		{"field in other case", bytes.Replace(good, []byte(`"format": 1`), []byte(`"FORMAT": 1`), 1), core.ErrMalformed},
		{"entry field in other case", bytes.Replace(good, []byte(`"state"`), []byte(`"State"`), 1), core.ErrMalformed},
		{"duplicate entry field", bytes.Replace(good, []byte(`"state": "primary"`), []byte(`"state": "retired", "state": "primary"`), 1), core.ErrMalformed},
		{"id overflow", mk(`{"format":1,"deks":[{"id":4294967296,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"` + wk + `"}]}`), core.ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := core.ParseKeyset(tc.in); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := core.ParseKeyset(good); err != nil {
		t.Fatalf("good keyset (DEK %08x): %v", id, err)
	}
}

// TestFieldManyDEKs covers the map lookup used for keysets of more than a
// few DEKs.
func TestFieldManyDEKs(t *testing.T) {
	keys := map[uint32]core.DEK{}
	for id := uint32(1); id <= 20; id++ {
		keys[id], _ = core.NewDEK()
	}
	var cts [][]byte
	for id := uint32(1); id <= 20; id++ {
		f, err := core.NewFieldCipher(id, keys)
		if err != nil {
			t.Fatal(err)
		}
		ct, _ := f.Encrypt([]byte{byte(id)}, nil)
		cts = append(cts, ct)
	}
	f, _ := core.NewFieldCipher(7, keys)
	for i, ct := range cts {
		pt, err := f.Decrypt(ct, nil)
		if err != nil || pt[0] != byte(i+1) {
			t.Fatalf("DEK %d: %v", i+1, err)
		}
	}
	bad := bytes.Clone(cts[0])
	bad[4] = 99
	if _, err := f.Decrypt(bad, nil); !errors.Is(err, core.ErrKeyNotFound) {
		t.Fatalf("unknown DEK: %v", err)
	}
}

func TestDecodeFieldTextStrict(t *testing.T) {
	f, _ := newFieldCipher(t)
	ct, _ := f.Encrypt([]byte("x"), nil)
	txt := core.EncodeFieldText(ct)
	for _, bad := range []string{txt[:10] + "\n" + txt[10:], txt[:10] + "\r" + txt[10:], txt + "=", txt[:10] + "+" + txt[11:], " " + txt} {
		if _, err := core.DecodeFieldText(bad); !errors.Is(err, core.ErrMalformed) {
			t.Errorf("DecodeFieldText(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

// TestOpenFieldCipherSurvivesUnavailableOldDEK: a decrypt-only DEK that
// cannot be unwrapped does not stop encryption or the other DEKs.
func TestOpenFieldCipherSurvivesUnavailableOldDEK(t *testing.T) {
	ctx := context.Background()
	a, b := newMem("a"), newMem("b")
	ringB, _ := core.NewKeyring(b)
	ks := core.NewKeyset()
	oldID, _ := ks.AddDEK(ctx, ringB, testNow)
	fOld, _ := ks.OpenFieldCipher(ctx, ringB)
	ctOld, _ := fOld.Encrypt([]byte("old"), nil)
	ring, _ := core.NewKeyring(a, b)
	newID, _ := ks.AddDEK(ctx, ring, testNow)

	b.failAll = core.ErrUnavailable // b's vault is down
	f, err := ks.OpenFieldCipher(ctx, ring)
	if err != nil {
		t.Fatalf("open with an unavailable decrypt-only DEK: %v", err)
	}
	if id := f.PrimaryID(); id != newID {
		t.Fatal("wrong primary")
	}
	if _, err := f.Decrypt(ctOld, nil); !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("value under the unavailable DEK: %v", err)
	}
	if u := f.Unavailable(); len(u) != 1 || u[oldID] == nil {
		t.Fatalf("Unavailable = %v", u)
	}
	// The primary itself must unwrap.
	a.failAll = core.ErrUnavailable
	if _, err := ks.OpenFieldCipher(ctx, ring); !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("open with the primary unavailable: %v", err)
	}
}
