package core_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/golden"
	"github.com/keyctl/keyctl/providers/localfile"
)

var updateGolden = flag.Bool("update-golden", false, "regenerate the golden vectors in testdata/")

// goldenRing returns a keyring over the golden local KEK (versions 1 and 2).
func goldenRing(t testing.TB) *core.Keyring {
	t.Helper()
	path := filepath.Join(t.TempDir(), "golden-kek.json")
	if err := golden.WriteKeyFile(path); err != nil {
		t.Fatal(err)
	}
	p, err := localfile.Open(path, localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := core.NewKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

func TestGoldenWrappedKeys(t *testing.T) {
	if *updateGolden {
		generateGolden(t)
	}
	ring := goldenRing(t)
	vs, err := golden.Load(filepath.Join("testdata", "wrappedkey"))
	if err != nil {
		t.Fatal(err)
	}
	failures := 0
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			want, _ := golden.Err(v.Expect)
			if want != nil {
				failures++
			}
			wk, err := core.ParseWrappedKey(v.Input)
			if err == nil {
				// Canonical: marshalling gives back the input.
				var again []byte
				if v.Binary {
					again, err = wk.MarshalBinary()
				} else {
					again, err = wk.MarshalText()
				}
				if err != nil || !bytes.Equal(again, v.Input) {
					t.Fatalf("not canonical: %v", err)
				}
				var dek core.DEK
				dek, err = ring.Unwrap(context.Background(), wk, v.Context)
				if err == nil && !dek.Equal(golden.DEK(v.DEK)) {
					t.Fatal("unwrapped to the wrong DEK")
				}
			}
			if want == nil {
				if err != nil {
					t.Fatalf("want ok, got %v", err)
				}
				return
			}
			if !errors.Is(err, want) {
				t.Fatalf("want %s, got %v", v.Expect, err)
			}
			if !core.IsInputError(err) {
				t.Fatalf("%v is not classed as an input error", err)
			}
		})
	}
	if failures < 10 {
		t.Fatalf("only %d failure vectors, want at least 10", failures)
	}
}

func TestGoldenFields(t *testing.T) {
	ring := goldenRing(t)
	ks, err := golden.Keyset(context.Background(), ring)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ks.OpenFieldCipher(context.Background(), ring)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := golden.Load(filepath.Join("testdata", "field"))
	if err != nil {
		t.Fatal(err)
	}
	failures := 0
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			want, _ := golden.Err(v.Expect)
			if want != nil {
				failures++
			}
			ct := v.Input
			var err error
			if !v.Binary {
				ct, err = core.DecodeFieldText(string(v.Input))
			}
			var pt []byte
			if err == nil {
				pt, err = f.Decrypt(ct, v.AD)
			}
			if want == nil {
				if err != nil || string(pt) != v.Plaintext {
					t.Fatalf("want %q, got %q, %v", v.Plaintext, pt, err)
				}
				return
			}
			if !errors.Is(err, want) {
				t.Fatalf("want %s, got %v", v.Expect, err)
			}
		})
	}
	if failures < 8 {
		t.Fatalf("only %d failure vectors, want at least 8", failures)
	}
}

// generateGolden rewrites testdata/wrappedkey and testdata/field. The valid
// vectors are new each time (fresh nonces); the failure vectors are derived
// from them.
func generateGolden(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v1path := filepath.Join(dir, "v1.json")
	p1, err := localfile.Create(v1path, localfile.CreateOptions{KeyID: golden.KeyID, ImportKeys: [][]byte{golden.KEK(1)}})
	if err != nil {
		t.Fatal(err)
	}
	ring1, _ := core.NewKeyring(p1)
	ring2 := goldenRing(t)

	app := core.Context{"app": "billing"}
	wkV1, err := ring1.Wrap(ctx, golden.DEK("dek-1"), app)
	if err != nil {
		t.Fatal(err)
	}
	wkV2, err := ring2.Wrap(ctx, golden.DEK("dek-2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign := core.Stanza{Provider: "awskms", KeyID: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		KeyVersion: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", Algorithm: core.AlgAWSKMS, Data: bytes.Repeat([]byte{0xA5}, 184)}
	multi := &core.WrappedKey{Stanzas: []core.Stanza{foreign, wkV2.Stanzas[0]}}

	txt := func(w *core.WrappedKey) []byte { b, err := w.MarshalText(); must(t, err); return b }
	bin := func(w *core.WrappedKey) []byte { b, err := w.MarshalBinary(); must(t, err); return b }
	mod := func(w *core.WrappedKey, f func(*core.WrappedKey)) *core.WrappedKey { c := w.Clone(); f(c); return c }
	v1bin := bin(wkV1)
	withByte := func(b []byte, i int, x byte) []byte { c := bytes.Clone(b); c[i] = x; return c }
	// Offset of the wrapped-bytes length field of the single stanza of wkV1.
	s := wkV1.Stanzas[0]
	lenOff := 6 + 1 + len(s.Provider) + 2 + len(s.KeyID) + 2 + len(s.KeyVersion) + 1
	algOff := lenOff - 1
	oversized := bytes.Clone(v1bin)
	binary.BigEndian.PutUint16(oversized[lenOff:], 0xFFFF)

	wv := []golden.Vector{
		{Name: "ok-v1-text", Description: "DEK dek-1 wrapped under golden KEK version 1 with a context, text form", Expect: "ok", Context: app, DEK: "dek-1", Input: txt(wkV1)},
		{Name: "ok-v1-binary", Description: "the same record in binary form", Expect: "ok", Context: app, DEK: "dek-1", Input: v1bin, Binary: true},
		{Name: "ok-v2-no-context", Description: "DEK dek-2 under golden KEK version 2, empty context", Expect: "ok", DEK: "dek-2", Input: txt(wkV2)},
		{Name: "ok-multi-wrap", Description: "an AWS KMS wrap (not configured) then a golden wrap: unwrap routes to the configured one", Expect: "ok", DEK: "dek-2", Input: txt(multi)},
		{Name: "fail-truncated-text", Description: "text form cut in the middle", Expect: "malformed", Context: app, Input: txt(wkV1)[:40]},
		{Name: "fail-truncated-binary", Description: "binary form missing its last 10 bytes", Expect: "malformed", Context: app, Input: v1bin[:len(v1bin)-10], Binary: true},
		{Name: "fail-unknown-version", Description: "binary format version 2", Expect: "unsupported-version", Context: app, Input: withByte(v1bin, 4, 2), Binary: true},
		{Name: "fail-unknown-text-version", Description: "text prefix keyctl-wk9:", Expect: "unsupported-version", Context: app, Input: append([]byte("keyctl-wk9:"), txt(wkV1)[len(core.WrappedKeyTextPrefix):]...)},
		{Name: "fail-oversized-length", Description: "wrapped-bytes length 65535, over the 8192 limit, refused before allocating", Expect: "malformed", Context: app, Input: oversized, Binary: true},
		{Name: "fail-trailing-bytes", Description: "one byte after the last wrap", Expect: "malformed", Context: app, Input: append(bytes.Clone(v1bin), 0), Binary: true},
		{Name: "fail-unknown-algorithm", Description: "algorithm code 0x42", Expect: "unknown-algorithm", Context: app, Input: withByte(v1bin, algOff, 0x42), Binary: true},
		{Name: "fail-flipped-bit", Description: "one bit flipped in the wrapped bytes", Expect: "unwrap-failed", Context: app, Input: txt(mod(wkV1, func(w *core.WrappedKey) { w.Stanzas[0].Data[20] ^= 0x04 }))},
		{Name: "fail-wrong-context", Description: "valid record, other encryption context", Expect: "unwrap-failed", Context: core.Context{"app": "payroll"}, Input: txt(wkV1)},
		{Name: "fail-missing-context", Description: "valid record, no encryption context", Expect: "unwrap-failed", Input: txt(wkV1)},
		{Name: "fail-version-relabelled", Description: "a version-1 wrap relabelled as version 2", Expect: "unwrap-failed", Context: app, Input: txt(mod(wkV1, func(w *core.WrappedKey) { w.Stanzas[0].KeyVersion = "2" }))},
		{Name: "fail-foreign-provider", Description: "only an AWS KMS wrap, no such provider configured", Expect: "no-provider", Input: txt(&core.WrappedKey{Stanzas: []core.Stanza{foreign}})},
		{Name: "fail-foreign-key-id", Description: "a localfile wrap under another key id", Expect: "no-provider", Context: app, Input: txt(mod(wkV1, func(w *core.WrappedKey) { w.Stanzas[0].KeyID = "prod" }))},
		{Name: "fail-unknown-key-version", Description: "a wrap naming KEK version 9, which the key file does not have", Expect: "key-not-found", Context: app, Input: txt(mod(wkV1, func(w *core.WrappedKey) { w.Stanzas[0].KeyVersion = "9" }))},
		{Name: "fail-bad-magic", Description: "binary form with magic KCWX", Expect: "malformed", Context: app, Input: withByte(v1bin, 3, 'X'), Binary: true},
		{Name: "fail-zero-wraps", Description: "a record with no wraps", Expect: "malformed", Input: []byte("KCWK\x01\x00"), Binary: true},
		{Name: "fail-duplicate-wrap", Description: "the same wrap twice", Expect: "malformed", Context: app, Input: []byte(core.WrappedKeyTextPrefix + b64(append(append([]byte("KCWK\x01\x02"), v1bin[6:]...), v1bin[6:]...)))},
		{Name: "fail-noncanonical-base64", Description: "text form with padding", Expect: "malformed", Context: app, Input: append(txt(wkV1), '=')},
		{Name: "fail-bad-provider-type", Description: "provider type with upper-case letters", Expect: "malformed", Context: app, Input: withByte(v1bin, 7, 'L'), Binary: true},
		{Name: "fail-empty", Description: "empty input", Expect: "malformed", Input: []byte("")},
	}
	writeVectors(t, filepath.Join("testdata", "wrappedkey"), wv)

	ks, err := golden.Keyset(ctx, ring2)
	must(t, err)
	f, err := ks.OpenFieldCipher(ctx, ring2)
	must(t, err)
	ad := []byte("users|email|42")
	ctNew, err := f.Encrypt([]byte("jane.doe@example.com"), ad)
	must(t, err)
	fOld, err := core.NewFieldCipher(golden.FieldOld, map[uint32]core.DEK{golden.FieldOld: golden.FieldDEK(golden.FieldOld)})
	must(t, err)
	ctOld, err := fOld.Encrypt([]byte("john@example.org"), []byte("users|email|7"))
	must(t, err)
	enc := func(b []byte) []byte { return []byte(core.EncodeFieldText(b)) }
	flip := func(i int) []byte { c := bytes.Clone(ctNew); c[i] ^= 1; return c }
	fv := []golden.Vector{
		{Name: "ok-primary", Description: "value under the primary DEK, text form", Expect: "ok", AD: ad, Plaintext: "jane.doe@example.com", Input: enc(ctNew)},
		{Name: "ok-primary-binary", Description: "the same value in binary form", Expect: "ok", AD: ad, Plaintext: "jane.doe@example.com", Input: ctNew, Binary: true},
		{Name: "ok-decrypt-only-dek", Description: "value under the older, decrypt-only DEK", Expect: "ok", AD: []byte("users|email|7"), Plaintext: "john@example.org", Input: enc(ctOld)},
		{Name: "fail-truncated", Description: "shorter than header and tag", Expect: "malformed", AD: ad, Input: enc(ctNew[:20])},
		{Name: "fail-truncated-tag", Description: "last byte of the tag missing", Expect: "decrypt-failed", AD: ad, Input: enc(ctNew[:len(ctNew)-1])},
		{Name: "fail-unknown-version", Description: "version byte 2", Expect: "unsupported-version", AD: ad, Input: enc(withByte(ctNew, 0, 2))},
		{Name: "fail-unknown-dek", Description: "DEK id not in the keyset", Expect: "key-not-found", AD: ad, Input: enc(withByte(ctNew, 1, 0x7f))},
		{Name: "fail-zero-dek-id", Description: "DEK id 0 is reserved", Expect: "malformed", AD: ad, Input: enc(append([]byte{1, 0, 0, 0, 0}, ctNew[5:]...))},
		{Name: "fail-flipped-bit", Description: "one bit flipped in the ciphertext", Expect: "decrypt-failed", AD: ad, Input: enc(flip(core.FieldHeaderLen + 3))},
		{Name: "fail-flipped-nonce", Description: "one bit flipped in the nonce", Expect: "decrypt-failed", AD: ad, Input: enc(flip(7))},
		{Name: "fail-wrong-ad", Description: "copied into another row: associated data differs", Expect: "decrypt-failed", AD: []byte("users|email|43"), Input: enc(ctNew)},
		{Name: "fail-trailing-byte", Description: "a byte appended", Expect: "decrypt-failed", AD: ad, Input: enc(append(bytes.Clone(ctNew), 0))},
		{Name: "fail-bad-text", Description: "not base64url", Expect: "malformed", AD: ad, Input: []byte("not*base64")},
	}
	writeVectors(t, filepath.Join("testdata", "field"), fv)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func writeVectors(t *testing.T, dir string, vs []golden.Vector) {
	t.Helper()
	must(t, os.RemoveAll(dir))
	must(t, os.MkdirAll(dir, 0o755))
	for _, v := range vs {
		must(t, golden.Write(dir, v))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
