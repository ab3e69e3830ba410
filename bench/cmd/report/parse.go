package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// results holds every measurement of every benchmark, one value per round,
// keyed by the benchmark's name without its -GOMAXPROCS suffix and by unit.
type results struct {
	vals map[string]map[string][]float64
	cpu  string
}

var procSuffix = regexp.MustCompile(`-\d+$`)

func readFiles(paths ...string) (*results, error) {
	r := &results{vals: map[string]map[string][]float64{}}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		err = r.read(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	return r, nil
}

// read parses the Go benchmark format: "BenchmarkName-N  iters  v unit  v unit ...".
func (r *results) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if cpu, ok := strings.CutPrefix(line, "cpu: "); ok {
			r.cpu = strings.TrimSpace(cpu)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // a benchmark that printed something, or failed
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := procSuffix.ReplaceAllString(f[0], "")
		m := r.vals[name]
		if m == nil {
			m = map[string][]float64{}
			r.vals[name] = m
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("%q: %w", line, err)
			}
			m[f[i+1]] = append(m[f[i+1]], v)
		}
	}
	return sc.Err()
}

// get returns the values of one benchmark and unit, sorted, or nil.
func (r *results) get(name, unit string) []float64 {
	v := append([]float64(nil), r.vals[name][unit]...)
	sort.Float64s(v)
	return v
}

// names returns the benchmark names with the prefix, sorted.
func (r *results) names(prefix string) []string {
	var out []string
	for n := range r.vals {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// raw returns the values of one benchmark and unit in the order they were
// measured: index i is round i.
func (r *results) raw(name, unit string) []float64 { return r.vals[name][unit] }

// pairedRatio returns the median over rounds of a[i]/b[i], where a[i] and
// b[i] were measured in the same round, seconds apart: load from other
// processes that lasts longer than a round slows both and cancels out. The
// second result is the two-sided p-value of a sign test that the ratio is 1
// (how often a beat b, against a fair coin).
func pairedRatio(a, b []float64) (float64, float64) {
	n := min(len(a), len(b))
	if n == 0 {
		return 0, 1
	}
	rs := make([]float64, 0, n)
	above, below := 0, 0
	for i := range n {
		if b[i] == 0 {
			continue
		}
		q := a[i] / b[i]
		rs = append(rs, q)
		switch {
		case q > 1:
			above++
		case q < 1:
			below++
		}
	}
	return median(rs), signTest(above, below)
}

// signTest returns the two-sided p-value of k = min(above, below) or fewer
// successes in above+below fair coin flips.
func signTest(above, below int) float64 {
	n, k := above+below, min(above, below)
	if n == 0 {
		return 1
	}
	// P(X <= k) for X ~ Binomial(n, 1/2), doubled.
	p, c := 0.0, 1.0 // c = C(n, i)
	for i := 0; i <= k; i++ {
		if i > 0 {
			c = c * float64(n-i+1) / float64(i)
		}
		p += c
	}
	p = 2 * p / math.Pow(2, float64(n))
	return min(p, 1)
}
