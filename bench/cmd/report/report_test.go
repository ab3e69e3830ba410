package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// fixture writes n rounds of benchmark lines, one per (name, ns/op).
func fixture(n int, ns map[string]float64) string {
	var b strings.Builder
	b.WriteString("cpu: Test CPU\n")
	for r := range n {
		for name, v := range ns {
			// A little spread, so the U test has something to rank.
			fmt.Fprintf(&b, "%s-2 \t 1000\t %.1f ns/op\t 64 B/op\t 1 allocs/op\n", name, v*(1+float64(r)/1000))
		}
	}
	return b.String()
}

func TestPeerSectionFlagsAGapWithoutReason(t *testing.T) {
	ns := map[string]float64{}
	for _, w := range workloads {
		for _, im := range impls {
			ns[benchName(w, im.key)] = 100
		}
		ns[benchName(w, "gokms")] = 300
	}
	// go-kms-wrapping 30% faster than keyctl on a workload that has no
	// reason for it (one against tink-go has one).
	w := workloads[1]
	ns[benchName(w, "gokms")] = 77
	ns[benchName(workloads[2], "tink")] = 77
	r := &results{vals: map[string]map[string][]float64{}}
	if err := r.read(strings.NewReader(fixture(6, ns))); err != nil {
		t.Fatal(err)
	}
	if r.cpu != "Test CPU" {
		t.Errorf("cpu = %q", r.cpu)
	}
	table, _, targets, missing := peerSection(r)
	if !strings.Contains(table, "| Field encrypt 256 B |") {
		t.Errorf("table lacks the 256 B row:\n%s", table)
	}
	if len(missing) != 1 || !strings.Contains(missing[0], "Field encrypt 256 B") {
		t.Errorf("missing = %q, want the 256 B gap flagged", missing)
	}
	if !strings.Contains(targets, "No written reason yet") || !strings.Contains(targets, "Not a difference in code") {
		t.Errorf("targets do not flag the gap:\n%s", targets)
	}
	if !strings.Contains(targets, "1.25x the raw floor: keyctl takes 1.00x the floor's time: met") {
		t.Errorf("targets:\n%s", targets)
	}
}

func TestMedianAndPairedRatio(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
	// Round 3 was slowed for both: the paired ratio does not care.
	a := []float64{110, 111, 330, 109, 112, 110, 111, 110}
	b := []float64{100, 100, 300, 100, 101, 100, 100, 100}
	q, p := pairedRatio(a, b)
	if q < 1.09 || q > 1.11 {
		t.Errorf("ratio = %v, want 1.10", q)
	}
	if p >= 0.05 {
		t.Errorf("p = %v for 8 of 8 rounds slower", p)
	}
	if _, p := pairedRatio(a, a); p < 1 {
		t.Errorf("p = %v for identical samples", p)
	}
}

func TestSignTest(t *testing.T) {
	for _, c := range []struct {
		above, below int
		want         float64
	}{
		{8, 0, 2.0 / 256},
		{4, 4, 1},
		{0, 0, 1},
		{7, 1, 2 * 9.0 / 256},
	} {
		if got := signTest(c.above, c.below); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("signTest(%d, %d) = %v, want %v", c.above, c.below, got, c.want)
		}
	}
}

func TestReadSkipsFailedLines(t *testing.T) {
	r := &results{vals: map[string]map[string][]float64{}}
	in := "BenchmarkX/impl=raw-2 \t 10\t 5.0 ns/op\n--- FAIL: BenchmarkY\nBenchmarkZ-2 some text\n"
	if err := r.read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if got := r.get("BenchmarkX/impl=raw", "ns/op"); len(got) != 1 || got[0] != 5 {
		t.Errorf("got %v", got)
	}
	if len(r.vals) != 1 {
		t.Errorf("parsed %d benchmarks, want 1", len(r.vals))
	}
}
