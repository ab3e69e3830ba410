package bench

import (
	"bytes"
	"testing"
)

// TestRoundTrip checks that every implementation the benchmarks time does
// the whole job: what it encrypts decrypts to the same value, only with the
// same associated data, and two encryptions of one value differ (a fresh
// nonce or DEK each time). A benchmark of code that skips a step would be a
// false comparison.
func TestRoundTrip(t *testing.T) {
	for _, name := range implNames {
		for _, n := range append([]int{0}, fieldSizes...) {
			pt := bytes.Repeat([]byte{'x'}, n)
			t.Run("field/"+name+"/"+sizeName(n), func(t *testing.T) {
				f := newField(t, name)
				check(t, f.encrypt, f.decrypt, pt)
			})
		}
		t.Run("envelope/"+name, func(t *testing.T) {
			e := newEnvelope(t, name)
			check(t, e.encrypt, e.decrypt, []byte("jane@example.com"))
		})
	}
}

func check(t *testing.T, enc, dec func(pt, ad []byte) ([]byte, error), pt []byte) {
	t.Helper()
	ct, err := enc(pt, benchAD)
	if err != nil {
		t.Fatal(err)
	}
	ct2, err := enc(pt, benchAD)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ct, ct2) {
		t.Fatal("two encryptions of the same value are equal")
	}
	got, err := dec(ct, benchAD)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pt) {
		t.Fatalf("decrypt: got %d bytes, want the %d encrypted", len(got), len(pt))
	}
	if _, err := dec(ct, []byte("users|email|7654321")); err == nil {
		t.Fatal("decrypt with other associated data succeeded")
	}
	// The middle byte: go-kms-wrapping's BlobInfo ends with its KeyInfo,
	// whose key id is metadata the AEAD does not cover.
	bad := bytes.Clone(ct)
	bad[len(bad)/2] ^= 1
	if _, err := dec(bad, benchAD); err == nil {
		t.Fatal("decrypt of an altered ciphertext succeeded")
	}
	if _, err := dec(ct[:len(ct)/2], benchAD); err == nil {
		t.Fatal("decrypt of a truncated ciphertext succeeded")
	}
}
