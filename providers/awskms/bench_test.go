package awskms_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/keyctl/keyctl/core"
)

// BenchmarkKMS compares, side by side against the same emulator, wrapping
// and unwrapping a 32-byte DEK through the provider (impl=keyctl) with a bare
// aws-sdk-go-v2 Encrypt/Decrypt loop (impl=bare), with 1 and 8 concurrent
// callers. Each result also reports ops/s; compare the impls with
//
//	go test ./providers/awskms -run '^$' -bench KMS -count 5 | tee kms.txt
//	benchstat -col /impl kms.txt
func BenchmarkKMS(b *testing.B) {
	e := emulator(b)
	ctx := context.Background()
	p := newProvider(b, e.Endpoint, keyA)
	bare := e.Client()
	ec := core.Context{"table": "users", "column": "email"}
	dek := mustDEK(b)
	s, err := p.WrapKey(ctx, dek, ec)
	if err != nil {
		b.Fatal(err)
	}
	keyID := aws.String(keyA)

	impls := map[string]map[string]func() error{
		"wrap": {
			"bare": func() error {
				_, err := bare.Encrypt(ctx, &kms.EncryptInput{KeyId: keyID, Plaintext: dek, EncryptionContext: ec})
				return err
			},
			"keyctl": func() error {
				_, err := p.WrapKey(ctx, dek, ec)
				return err
			},
		},
		"unwrap": {
			"bare": func() error {
				out, err := bare.Decrypt(ctx, &kms.DecryptInput{KeyId: keyID, CiphertextBlob: s.Data, EncryptionContext: ec})
				if err == nil {
					clear(out.Plaintext)
				}
				return err
			},
			"keyctl": func() error {
				d, err := p.UnwrapKey(ctx, s, ec)
				d.Zero()
				return err
			},
		},
	}
	for _, op := range []string{"wrap", "unwrap"} {
		for _, callers := range []int{1, 8} {
			for _, impl := range []string{"bare", "keyctl"} {
				fn := impls[op][impl]
				b.Run(fmt.Sprintf("op=%s/callers=%d/impl=%s", op, callers, impl), func(b *testing.B) {
					runCallers(b, callers, fn)
				})
			}
		}
	}
}

// runCallers runs fn b.N times in total from callers goroutines.
func runCallers(b *testing.B, callers int, fn func() error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	b.ResetTimer()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := fn(); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}
