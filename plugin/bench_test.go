package plugin_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

// The benchmarks compare the localfile provider in-process with the same
// provider through the plugin, side by side in one run:
//
//	go test -run '^$' -bench . -benchtime 2000x ./plugin/   (single calls)
//	go test -run '^$' -bench BulkRewrap -benchtime 5x ./plugin/
//
// Sub-benchmarks are named impl=inprocess|plugin for benchstat -col /impl.

func benchProviders(b *testing.B) (path string, inproc core.KeyProvider, viaPlugin core.KeyProvider) {
	path = newKeyFile(b, "bench")
	lp, err := localfile.Open(path, localfile.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return path, lp, startLocal(b, path)
}

// BenchmarkSingleCall measures one UnwrapKey at a time and reports the
// median latency (p50-µs) and the 99th percentile (p99-µs).
func BenchmarkSingleCall(b *testing.B) {
	_, inproc, viaPlugin := benchProviders(b)
	for _, impl := range []struct {
		name string
		p    core.KeyProvider
	}{{"inprocess", inproc}, {"plugin", viaPlugin}} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			ctx := context.Background()
			dek, _ := core.NewDEK()
			ec := core.Context{"table": "users"}
			s, err := impl.p.WrapKey(ctx, dek, ec)
			if err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				got, err := impl.p.UnwrapKey(ctx, s, ec)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				got.Zero()
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}

// BenchmarkBulkRewrap rewraps 100,000 wrapped keys from KEK version 1 to 2
// with core's Rewrapper.RewrapAll and reports keys/s. Through the plugin
// RewrapAll sends bounded batches (core.BatchProvider.RewrapKeys) and the
// DEKs stay inside the plugin process.
func BenchmarkBulkRewrap(b *testing.B) {
	const n = 100_000
	path := newKeyFile(b, "bench-rewrap")
	lp, err := localfile.Open(path, localfile.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	items := make([]core.RewrapItem, n)
	for i := range items {
		dek, _ := core.NewDEK()
		ec := core.Context{"row": fmt.Sprint(i)}
		s, err := lp.WrapKey(ctx, dek, ec)
		if err != nil {
			b.Fatal(err)
		}
		items[i] = core.RewrapItem{Key: &core.WrappedKey{Stanzas: []core.Stanza{s}}, Context: ec}
	}
	if _, err := lp.RotateKey(ctx); err != nil {
		b.Fatal(err)
	}
	viaPlugin := startLocal(b, path)
	workers := runtime.GOMAXPROCS(0)
	for _, impl := range []struct {
		name string
		p    core.KeyProvider
	}{{"inprocess", lp}, {"plugin", viaPlugin}} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			ring, err := core.NewKeyring(impl.p)
			if err != nil {
				b.Fatal(err)
			}
			rw, err := ring.NewRewrapper(ctx)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				for i, r := range rw.RewrapAll(ctx, items, workers) {
					if r.Err != nil || r.Status != core.Rewrapped {
						b.Fatalf("item %d: %v %v", i, r.Status, r.Err)
					}
				}
			}
			b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "keys/s")
		})
	}
}

// BenchmarkConcurrentCalls runs UnwrapKey from 16 goroutines per CPU: the
// plugin client coalesces the waiting calls into batched RPCs.
func BenchmarkConcurrentCalls(b *testing.B) {
	_, inproc, viaPlugin := benchProviders(b)
	for _, impl := range []struct {
		name string
		p    core.KeyProvider
	}{{"inprocess", inproc}, {"plugin", viaPlugin}} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			ctx := context.Background()
			dek, _ := core.NewDEK()
			s, err := impl.p.WrapKey(ctx, dek, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(16)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					got, err := impl.p.UnwrapKey(ctx, s, nil)
					if err != nil {
						b.Error(err)
						return
					}
					got.Zero()
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
		})
	}
}
