package core_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
)

func randString(r *rand.Rand, alphabet string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// randomWrappedKey returns a valid record with random content within the
// format's limits.
func randomWrappedKey(r *rand.Rand) *core.WrappedKey {
	algs := []core.Algorithm{core.AlgAES256GCM, core.AlgAES256KWP, core.AlgAWSKMS, core.AlgPrivateMin, core.AlgPrivateMax}
	n := 1 + r.IntN(core.MaxStanzas)
	wk := &core.WrappedKey{}
	for i := range n {
		s := core.Stanza{
			Provider:   randString(r, "abcxyz", 1) + randString(r, "abz09._-", r.IntN(core.MaxProviderTypeLen)),
			KeyID:      randString(r, "abcdefghijklmnopqrstuvwxyz0123456789:/-_ é", 1+r.IntN(200)),
			KeyVersion: randString(r, "0123456789abcdef", r.IntN(40)),
			Algorithm:  algs[r.IntN(len(algs))],
			Data:       make([]byte, 1+r.IntN(600)),
		}
		// Make each stanza's identity unique.
		s.KeyVersion += "#" + string(rune('A'+i))
		// The alphabet holds a two-byte rune; repair split ones.
		s.KeyID = strings.ToValidUTF8(s.KeyID, "x")
		for j := range s.Data {
			s.Data[j] = byte(r.UintN(256))
		}
		wk.Stanzas = append(wk.Stanzas, s)
	}
	return wk
}

// TestWrappedKeyRoundTripProperty: for random valid records, binary and text
// forms parse back to equal records and re-marshal to the same bytes.
func TestWrappedKeyRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		wk := randomWrappedKey(r)
		bin, err := wk.MarshalBinary()
		if err != nil {
			t.Fatalf("case %d: marshal: %v", i, err)
		}
		txt, err := wk.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range [][]byte{bin, txt} {
			back, err := core.ParseWrappedKey(form)
			if err != nil {
				t.Fatalf("case %d: parse: %v", i, err)
			}
			bin2, _ := back.MarshalBinary()
			if !bytes.Equal(bin, bin2) {
				t.Fatalf("case %d: not canonical", i)
			}
			if len(back.Stanzas) != len(wk.Stanzas) {
				t.Fatalf("case %d: stanza count", i)
			}
			for j := range wk.Stanzas {
				a, b := wk.Stanzas[j], back.Stanzas[j]
				if a.Provider != b.Provider || a.KeyID != b.KeyID || a.KeyVersion != b.KeyVersion || a.Algorithm != b.Algorithm || !bytes.Equal(a.Data, b.Data) {
					t.Fatalf("case %d stanza %d differs", i, j)
				}
			}
		}
		var w2 core.WrappedKey
		if err := w2.UnmarshalText(txt); err != nil {
			t.Fatal(err)
		}
		// Every strict prefix of a valid binary record is refused.
		cut := r.IntN(len(bin))
		if _, err := core.ParseWrappedKey(bin[:cut]); err == nil {
			t.Fatalf("case %d: prefix of %d/%d bytes parsed", i, cut, len(bin))
		}
	}
}

func validStanza() core.Stanza {
	return core.Stanza{Provider: "localfile", KeyID: "k", KeyVersion: "1", Algorithm: core.AlgAES256GCM, Data: bytes.Repeat([]byte{7}, 60)}
}

func TestWrappedKeyValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*core.WrappedKey)
		want error
	}{
		{"ok", func(*core.WrappedKey) {}, nil},
		{"no stanzas", func(w *core.WrappedKey) { w.Stanzas = nil }, core.ErrMalformed},
		{"too many stanzas", func(w *core.WrappedKey) {
			for i := range core.MaxStanzas {
				s := validStanza()
				s.KeyVersion = string(rune('a' + i))
				w.Stanzas = append(w.Stanzas, s)
			}
		}, core.ErrMalformed},
		{"duplicate stanza", func(w *core.WrappedKey) { w.Stanzas = append(w.Stanzas, validStanza()) }, core.ErrMalformed},
		{"empty provider", func(w *core.WrappedKey) { w.Stanzas[0].Provider = "" }, core.ErrMalformed},
		{"upper-case provider", func(w *core.WrappedKey) { w.Stanzas[0].Provider = "Local" }, core.ErrMalformed},
		{"provider starts with digit", func(w *core.WrappedKey) { w.Stanzas[0].Provider = "9x" }, core.ErrMalformed},
		{"long provider", func(w *core.WrappedKey) { w.Stanzas[0].Provider = strings.Repeat("a", 33) }, core.ErrMalformed},
		{"empty key id", func(w *core.WrappedKey) { w.Stanzas[0].KeyID = "" }, core.ErrMalformed},
		{"control char in key id", func(w *core.WrappedKey) { w.Stanzas[0].KeyID = "a\nb" }, core.ErrMalformed},
		{"invalid utf-8 version", func(w *core.WrappedKey) { w.Stanzas[0].KeyVersion = "\xff" }, core.ErrMalformed},
		{"long key id", func(w *core.WrappedKey) { w.Stanzas[0].KeyID = strings.Repeat("a", core.MaxKeyIDLen+1) }, core.ErrMalformed},
		{"unknown algorithm", func(w *core.WrappedKey) { w.Stanzas[0].Algorithm = 0x42 }, core.ErrUnknownAlgorithm},
		{"algorithm zero", func(w *core.WrappedKey) { w.Stanzas[0].Algorithm = 0 }, core.ErrUnknownAlgorithm},
		{"algorithm 0xff", func(w *core.WrappedKey) { w.Stanzas[0].Algorithm = 0xff }, core.ErrUnknownAlgorithm},
		{"private algorithm", func(w *core.WrappedKey) { w.Stanzas[0].Algorithm = 0xE5 }, nil},
		{"empty data", func(w *core.WrappedKey) { w.Stanzas[0].Data = nil }, core.ErrMalformed},
		{"data too long", func(w *core.WrappedKey) { w.Stanzas[0].Data = make([]byte, core.MaxWrappedLen+1) }, core.ErrMalformed},
		{"max sizes", func(w *core.WrappedKey) {
			w.Stanzas[0].KeyID = strings.Repeat("k", core.MaxKeyIDLen)
			w.Stanzas[0].KeyVersion = strings.Repeat("v", core.MaxKeyVersionLen)
			w.Stanzas[0].Data = make([]byte, core.MaxWrappedLen)
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &core.WrappedKey{Stanzas: []core.Stanza{validStanza()}}
			tc.mod(w)
			err := w.Validate()
			_, merr := w.MarshalBinary()
			if tc.want == nil {
				if err != nil || merr != nil {
					t.Fatalf("Validate = %v, Marshal = %v; want ok", err, merr)
				}
				return
			}
			if !errors.Is(err, tc.want) || !errors.Is(merr, tc.want) {
				t.Fatalf("Validate = %v, Marshal = %v; want %v", err, merr, tc.want)
			}
		})
	}
}

func TestParseWrappedKeyForms(t *testing.T) {
	w := &core.WrappedKey{Stanzas: []core.Stanza{validStanza()}}
	txt, _ := w.MarshalText()
	bin, _ := w.MarshalBinary()
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"text", txt, nil},
		{"text with newline", append(bytes.Clone(txt), '\n'), nil},
		{"text with spaces", append(append([]byte("  "), txt...), "\r\n"...), nil},
		{"binary", bin, nil},
		{"empty", nil, core.ErrMalformed},
		{"garbage", []byte("hello"), core.ErrMalformed},
		{"prefix only", []byte(core.WrappedKeyTextPrefix), core.ErrMalformed},
		{"truncated prefix", []byte("keyctl-w"), core.ErrMalformed},
		{"future text version", []byte("keyctl-wk2:AAAA"), core.ErrUnsupportedVersion},
		{"padded base64", append(bytes.Clone(txt), '='), core.ErrMalformed},
		{"std base64 alphabet", bytes.ReplaceAll(bytes.ReplaceAll(txt, []byte("-"), []byte("+")), []byte("_"), []byte("/")), nil},
		{"inner whitespace", append(append(bytes.Clone(txt[:20]), ' '), txt[20:]...), core.ErrMalformed},
		{"inner line break", append(append(bytes.Clone(txt[:20]), '\n'), txt[20:]...), core.ErrMalformed},
		{"inner carriage return", append(append(bytes.Clone(txt[:20]), '\r'), txt[20:]...), core.ErrMalformed},
		{"binary future version", append(append([]byte("KCWK"), 2), bin[5:]...), core.ErrUnsupportedVersion},
		{"binary trailing", append(bytes.Clone(bin), 0), core.ErrMalformed},
		{"binary oversized stanza count", append(append([]byte("KCWK"), 1, 200), bin[6:]...), core.ErrMalformed},
		{"binary zero stanza", []byte("KCWK\x01\x00"), core.ErrMalformed},
		{"binary huge key id length", []byte("KCWK\x01\x01\x01a\xff\xff"), core.ErrMalformed},
		{"text too long", append([]byte(core.WrappedKeyTextPrefix), bytes.Repeat([]byte("A"), core.MaxWrappedKeyText)...), core.ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := core.ParseWrappedKey(tc.in)
			if tc.name == "std base64 alphabet" {
				// Only meaningful if the replacement changed something.
				if bytes.Equal(tc.in, txt) {
					t.Skip("text form has no - or _")
				}
				if err == nil {
					t.Fatal("standard base64 alphabet accepted")
				}
				return
			}
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if got.String() != string(txt) {
					t.Fatal("parsed record differs")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !core.IsInputError(err) {
				t.Fatalf("%v is not an input error", err)
			}
		})
	}
}

func TestAlgorithmString(t *testing.T) {
	for a, want := range map[core.Algorithm]string{
		core.AlgAES256GCM: "aes-256-gcm", core.AlgAES256KWP: "aes-256-kwp", core.AlgAWSKMS: "aws-kms",
		0xE1: "private-0xe1", 0x42: "unknown-0x42",
	} {
		if got := a.String(); got != want {
			t.Errorf("%d: %q, want %q", a, got, want)
		}
	}
}

func TestContext(t *testing.T) {
	a := core.Context{"b": "2", "a": "1"}
	b := core.Context{"a": "1", "b": "2"}
	if !bytes.Equal(a.Canonical(), b.Canonical()) {
		t.Fatal("canonical encoding depends on map order")
	}
	// Unambiguous: moving a boundary changes the encoding.
	if bytes.Equal(core.Context{"ab": "c"}.Canonical(), core.Context{"a": "bc"}.Canonical()) {
		t.Fatal("canonical encoding is ambiguous")
	}
	if core.Context(nil).Canonical() != nil || len(core.Context{}.Canonical()) != 0 {
		t.Fatal("empty context must encode to nothing")
	}
	if a.String() != "a=1,b=2" {
		t.Fatalf("String = %q", a.String())
	}
	bad := []core.Context{
		{"": "x"}, {"k": "\x00"}, {"k\n": "v"}, {strings.Repeat("k", 129): "v"}, {"k": strings.Repeat("v", 1025)},
	}
	for _, c := range bad {
		if err := c.Validate(); !errors.Is(err, core.ErrMalformed) {
			t.Errorf("Validate(%q) = %v", c, err)
		}
	}
	big := core.Context{}
	for i := range 33 {
		big[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	if err := big.Validate(); !errors.Is(err, core.ErrMalformed) {
		t.Errorf("33 pairs accepted")
	}
	for _, s := range []string{"=v", "novalue", ""} {
		if _, _, err := core.ParseContextPair(s); err == nil {
			t.Errorf("ParseContextPair(%q) accepted", s)
		}
	}
	if k, v, err := core.ParseContextPair("a=b=c"); err != nil || k != "a" || v != "b=c" {
		t.Errorf("ParseContextPair(a=b=c) = %q %q %v", k, v, err)
	}
}
