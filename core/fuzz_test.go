package core_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/golden"
)

// seedVectors adds the inputs of the golden vectors in testdata/sub.
func seedVectors(f *testing.F, sub string) {
	vs, err := golden.Load(filepath.Join("testdata", sub))
	if err != nil {
		f.Fatal(err)
	}
	for _, v := range vs {
		f.Add(v.Input)
	}
}

// FuzzParseWrappedKey: any input either fails with a classified error or
// parses to a record that re-marshals canonically and parses back equal.
func FuzzParseWrappedKey(f *testing.F) {
	seedVectors(f, "wrappedkey")
	f.Fuzz(func(t *testing.T, in []byte) {
		wk, err := core.ParseWrappedKey(in)
		if err != nil {
			if !core.IsInputError(err) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		bin, err := wk.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed record does not marshal: %v", err)
		}
		txt, err := wk.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		trimmed := bytes.TrimSpace(in)
		if !bytes.Equal(in, bin) && !bytes.Equal(trimmed, txt) {
			t.Fatalf("not canonical:\n in  %q\n bin %q\n txt %q", in, bin, txt)
		}
		back, err := core.ParseWrappedKey(txt)
		if err != nil {
			t.Fatal(err)
		}
		bin2, _ := back.MarshalBinary()
		if !bytes.Equal(bin, bin2) {
			t.Fatal("text and binary forms disagree")
		}
	})
}

// FuzzFieldDecrypt: decrypting arbitrary bytes never panics, and only the
// genuine ciphertext opens.
func FuzzFieldDecrypt(f *testing.F) {
	seedVectors(f, "field")
	fc, err := core.NewFieldCipher(golden.FieldNew, map[uint32]core.DEK{
		golden.FieldNew: golden.FieldDEK(golden.FieldNew),
		golden.FieldOld: golden.FieldDEK(golden.FieldOld),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, ct := range [][]byte{in, nil} {
			if ct == nil {
				var err error
				if ct, err = core.DecodeFieldText(string(in)); err != nil {
					continue
				}
				if core.EncodeFieldText(ct) != string(in) {
					t.Fatalf("text form not canonical: %q decodes, re-encodes as %q", in, core.EncodeFieldText(ct))
				}
			}
			if _, err := core.ParseFieldHeader(ct); err != nil && !core.IsInputError(err) {
				t.Fatalf("unclassified header error %v", err)
			}
			pt, err := fc.Decrypt(ct, []byte("users|email|42"))
			if err == nil {
				// Only the golden vectors' own ciphertexts can open; a fuzzed
				// input that opens would mean forgery.
				if string(pt) != "jane.doe@example.com" {
					t.Fatalf("forged ciphertext opened to %q", pt)
				}
				continue
			}
			if !core.IsInputError(err) {
				t.Fatalf("unclassified error %v", err)
			}
		}
	})
}

// FuzzParseKeyset: any input either fails with a classified error or parses
// to a keyset that marshals and parses back to the same bytes.
func FuzzParseKeyset(f *testing.F) {
	f.Add([]byte(`{"format":1,"deks":[]}`))
	f.Add([]byte(`{"format":1,"deks":[{"id":1,"state":"primary","created":"2026-01-01T00:00:00Z","wrapped":"keyctl-wk1:S0NXSwEBCWxvY2FsZmlsZQABawABMQEAAQc"}]}`))
	f.Add([]byte(`{"format":2}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		ks, err := core.ParseKeyset(in)
		if err != nil {
			if !core.IsInputError(err) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		b, err := ks.Marshal()
		if err != nil {
			t.Fatalf("parsed keyset does not marshal: %v", err)
		}
		ks2, err := core.ParseKeyset(b)
		if err != nil {
			t.Fatalf("marshalled keyset does not parse: %v", err)
		}
		b2, _ := ks2.Marshal()
		if !bytes.Equal(b, b2) {
			t.Fatal("keyset marshal not stable")
		}
	})
}

// FuzzContextPair: parsing a k=v pair never panics and round-trips.
func FuzzContextPair(f *testing.F) {
	for _, s := range []string{"a=b", "=", "a==", "k=v=w", "", "é=ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := core.ParseContextPair(s)
		if err != nil {
			if !errors.Is(err, core.ErrMalformed) {
				t.Fatal(err)
			}
			return
		}
		if k+"="+v != s {
			t.Fatalf("%q -> %q, %q", s, k, v)
		}
		c := core.Context{k: v}
		if c.Validate() == nil && len(c.Canonical()) != 4+len(k)+len(v) {
			t.Fatal("canonical length")
		}
	})
}
