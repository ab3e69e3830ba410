package core_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
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
		b.Run(fmt.Sprintf("impl=raw/size=%dB", n), func(b *testing.B) {
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
		b.Run(fmt.Sprintf("impl=keyctl/size=%dB", n), func(b *testing.B) {
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
		b.Run(fmt.Sprintf("impl=raw/size=%dB", n), func(b *testing.B) {
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
		b.Run(fmt.Sprintf("impl=keyctl/size=%dB", n), func(b *testing.B) {
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

// BenchmarkRewrap100k rewraps 100,000 wrapped keys from KEK version 1 to
// version 2 of an in-process local key file, side by side with the raw floor
// of the same cryptography (AES-256-GCM open, seal with a fresh nonce, open
// again to verify) on cached AEADs. keys/s is the figure to read.
func BenchmarkRewrap100k(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	p, err := localfile.Create(filepath.Join(b.TempDir(), "kek.json"), localfile.CreateOptions{KeyID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	ring, _ := core.NewKeyring(p)
	items := make([]core.RewrapItem, n)
	for i := range items {
		ec := core.Context{core.DEKContextKey: fmt.Sprintf("%08x", i+1)}
		d, wk, err := ring.GenerateDEK(ctx, ec)
		if err != nil {
			b.Fatal(err)
		}
		d.Zero()
		items[i] = core.RewrapItem{Key: wk, Context: ec}
	}
	if _, err := p.RotateKey(ctx); err != nil {
		b.Fatal(err)
	}
	for _, workers := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(fmt.Sprintf("impl=keyctl/workers=%d", workers), func(b *testing.B) {
			for b.Loop() {
				rw, err := ring.NewRewrapper(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for i, r := range rw.RewrapAll(ctx, items, workers) {
					if r.Status != core.Rewrapped {
						b.Fatalf("item %d: %v %v", i, r.Status, r.Err)
					}
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
		})
	}
	b.Run("impl=raw/workers=1", func(b *testing.B) {
		oldA, newA := rawAEAD(b), rawAEAD(b)
		ad := []byte("keyctl.dek_id|00000001")
		cts := make([][]byte, n)
		for i := range cts {
			nonce := make([]byte, 12)
			_, _ = rand.Read(nonce)
			cts[i] = oldA.Seal(nonce, nonce, make([]byte, 32), ad)
		}
		for b.Loop() {
			for _, ct := range cts {
				dek, err := oldA.Open(nil, ct[:12], ct[12:], ad)
				if err != nil {
					b.Fatal(err)
				}
				out := make([]byte, 12, 12+32+16)
				_, _ = rand.Read(out)
				out = newA.Seal(out, out, dek, ad)
				if _, err := newA.Open(nil, out[:12], out[12:], ad); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
	})
}
