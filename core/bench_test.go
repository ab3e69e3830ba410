package core_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"testing"
)

// The field benchmarks run keyctl's FieldCipher side by side with the raw
// floor: crypto/cipher AES-256-GCM Seal/Open with a cached cipher.AEAD and a
// crypto/rand nonce, one output allocation. Compare the two with benchstat or
// read the ratio of ns/op directly; see docs/benchmarks.md.

var benchSizes = []int{32, 256, 4096}

func rawAEAD(b *testing.B) cipher.AEAD {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	blk, _ := aes.NewCipher(k)
	a, err := cipher.NewGCM(blk)
	if err != nil {
		b.Fatal(err)
	}
	return a
}

var sink []byte

func BenchmarkFieldEncrypt(b *testing.B) {
	ad := []byte("users|email|1234567")
	for _, n := range benchSizes {
		pt := make([]byte, n)
		b.Run(fmt.Sprintf("raw/%dB", n), func(b *testing.B) {
			a := rawAEAD(b)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				out := make([]byte, 12, 12+n+16)
				if _, err := rand.Read(out); err != nil {
					b.Fatal(err)
				}
				sink = a.Seal(out, out, pt, ad)
			}
		})
		b.Run(fmt.Sprintf("keyctl/%dB", n), func(b *testing.B) {
			f, _ := newFieldCipher(b)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				out, err := f.Encrypt(pt, ad)
				if err != nil {
					b.Fatal(err)
				}
				sink = out
			}
		})
	}
}

func BenchmarkFieldDecrypt(b *testing.B) {
	ad := []byte("users|email|1234567")
	for _, n := range benchSizes {
		pt := make([]byte, n)
		b.Run(fmt.Sprintf("raw/%dB", n), func(b *testing.B) {
			a := rawAEAD(b)
			nonce := make([]byte, 12)
			_, _ = rand.Read(nonce)
			ct := a.Seal(nonce, nonce, pt, ad)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				out, err := a.Open(nil, ct[:12], ct[12:], ad)
				if err != nil {
					b.Fatal(err)
				}
				sink = out
			}
		})
		b.Run(fmt.Sprintf("keyctl/%dB", n), func(b *testing.B) {
			f, _ := newFieldCipher(b)
			ct, _ := f.Encrypt(pt, ad)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				out, err := f.Decrypt(ct, ad)
				if err != nil {
					b.Fatal(err)
				}
				sink = out
			}
		})
	}
}

func BenchmarkFieldEncryptParallel(b *testing.B) {
	f, _ := newFieldCipher(b)
	pt := make([]byte, 32)
	ad := []byte("users|email|1234567")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.Encrypt(pt, ad); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
