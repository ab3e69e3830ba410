// Package bench compares keyctl with tink-go and go-kms-wrapping, side by
// side in one run with the raw crypto/cipher AES-256-GCM floor. It is its
// own module so that the keyctl module does not depend on the peers. Run it
// with bench/run, which interleaves rounds, takes medians and writes
// docs/benchmarks.md.
package bench

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"testing"
)

// Every sub-benchmark is named impl=raw|keyctl|tink|gokms, so that
// `benchstat -col /impl` compares them as well as bench/run does.

var fieldSizes = []int{32, 256, 4 << 10, 1 << 20}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

var (
	benchAD = []byte("users|email|1234567")
	sink    []byte
)

func BenchmarkFieldEncrypt(b *testing.B) {
	for _, n := range fieldSizes {
		pt := bytes.Repeat([]byte{'a'}, n)
		for _, name := range ordered() {
			b.Run(fmt.Sprintf("impl=%s/size=%s", name, sizeName(n)), func(b *testing.B) {
				f := newField(b, name)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					out, err := f.encrypt(pt, benchAD)
					if err != nil {
						b.Fatal(err)
					}
					sink = out
				}
			})
		}
	}
}

func BenchmarkFieldDecrypt(b *testing.B) {
	for _, n := range fieldSizes {
		pt := bytes.Repeat([]byte{'a'}, n)
		for _, name := range ordered() {
			b.Run(fmt.Sprintf("impl=%s/size=%s", name, sizeName(n)), func(b *testing.B) {
				f := newField(b, name)
				ct, err := f.encrypt(pt, benchAD)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					out, err := f.decrypt(ct, benchAD)
					if err != nil {
						b.Fatal(err)
					}
					sink = out
				}
			})
		}
	}
}

// envelopeSize is the value of the envelope workload: an e-mail address.
const envelopeSize = 32

func BenchmarkEnvelopeEncrypt(b *testing.B) {
	pt := bytes.Repeat([]byte{'a'}, envelopeSize)
	for _, name := range ordered() {
		b.Run(fmt.Sprintf("impl=%s/size=%s", name, sizeName(envelopeSize)), func(b *testing.B) {
			e := newEnvelope(b, name)
			b.ReportAllocs()
			for b.Loop() {
				out, err := e.encrypt(pt, benchAD)
				if err != nil {
					b.Fatal(err)
				}
				sink = out
			}
		})
	}
}

func BenchmarkEnvelopeDecrypt(b *testing.B) {
	pt := bytes.Repeat([]byte{'a'}, envelopeSize)
	for _, name := range ordered() {
		b.Run(fmt.Sprintf("impl=%s/size=%s", name, sizeName(envelopeSize)), func(b *testing.B) {
			e := newEnvelope(b, name)
			ct, err := e.encrypt(pt, benchAD)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				out, err := e.decrypt(ct, benchAD)
				if err != nil {
					b.Fatal(err)
				}
				sink = out
			}
		})
	}
}

// bulkValues is the bulk workload: 1,000,000 values of 32 B, split into one
// contiguous share per core (GOMAXPROCS goroutines), all sharing one
// long-lived key the way a service's request handlers do. With -short (the
// CI smoke run) it is 10,000, so the benchmarks only prove they still work.
func bulkValues() int {
	if testing.Short() {
		return 10_000
	}
	return 1_000_000
}

// runBulk calls op for every index in [0, n), split across all cores, and
// reports values/s and allocations per value.
func runBulk(b *testing.B, n int, op func(i int) ([]byte, error)) {
	workers := runtime.GOMAXPROCS(0)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for w := range workers {
			lo, hi := w*n/workers, (w+1)*n/workers
			wg.Go(func() {
				var last []byte
				for i := lo; i < hi; i++ {
					out, err := op(i)
					if err != nil {
						errs[w] = err
						return
					}
					last = out
				}
				_ = last
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	values := float64(n) * float64(b.N)
	b.ReportMetric(values/b.Elapsed().Seconds(), "values/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/values, "allocs/value")
	b.ReportMetric(float64(workers), "workers")
}

func BenchmarkBulkEncrypt1M(b *testing.B) {
	pt := bytes.Repeat([]byte{'a'}, 32)
	for _, name := range ordered() {
		b.Run(fmt.Sprintf("impl=%s/size=32B", name), func(b *testing.B) {
			f := newField(b, name)
			runBulk(b, bulkValues(), func(int) ([]byte, error) { return f.encrypt(pt, benchAD) })
		})
	}
}

func BenchmarkBulkDecrypt1M(b *testing.B) {
	pt := bytes.Repeat([]byte{'a'}, 32)
	for _, name := range ordered() {
		b.Run(fmt.Sprintf("impl=%s/size=32B", name), func(b *testing.B) {
			f := newField(b, name)
			cts := make([][]byte, bulkValues())
			for i := range cts {
				ct, err := f.encrypt(pt, benchAD)
				if err != nil {
					b.Fatal(err)
				}
				cts[i] = ct
			}
			runBulk(b, len(cts), func(i int) ([]byte, error) { return f.decrypt(cts[i], benchAD) })
		})
	}
}
