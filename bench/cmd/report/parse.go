package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/perf/benchmath"
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

// differs reports whether two samples differ significantly (Mann-Whitney U
// test, alpha 0.05, as benchstat does), and the p-value.
func differs(a, b []float64) (bool, float64) {
	if len(a) == 0 || len(b) == 0 {
		return false, 1
	}
	sa := benchmath.NewSample(append([]float64(nil), a...), &benchmath.DefaultThresholds)
	sb := benchmath.NewSample(append([]float64(nil), b...), &benchmath.DefaultThresholds)
	c := benchmath.AssumeNothing.Compare(sa, sb)
	return c.P < c.Alpha, c.P
}
