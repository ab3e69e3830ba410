package sqltable

import (
	"math"
	"testing"
)

func TestSplitRange(t *testing.T) {
	for _, tc := range []struct {
		lo, hi int64
		ok     bool
		span   int64
		n      int
	}{
		{0, 0, false, 10, 1},
		{5, 5, true, 10, 1},
		{1, 10, true, 10, 1},
		{1, 11, true, 10, 2},
		{1, 1000, true, 100, 10},
		{-500, 500, true, 100, 11},
		{math.MinInt64, math.MaxInt64, true, 1, MaxChunks},
		{0, math.MaxInt64, true, 1 << 40, MaxChunks},
		// Near the ends of int64 (keyctl reencrypt --chunk-keys 1): the
		// step is rounded up, so the last offsets would pass MaxInt64 and
		// wrap; chunks stop at hi instead.
		{math.MaxInt64 - 5000, math.MaxInt64, true, 1, 2501},
		{math.MinInt64, math.MinInt64 + 5000, true, 1, 2501},
		{math.MaxInt64 - 1, math.MaxInt64, true, 1, 2},
		{math.MaxInt64 - 10000, math.MaxInt64, true, 3, 3334},
	} {
		got := splitRange(tc.lo, tc.hi, tc.ok, tc.span)
		if len(got) != tc.n {
			t.Errorf("%+v: %d chunks, want %d", tc, len(got), tc.n)
			continue
		}
		if got[0][0] != math.MinInt64 || got[len(got)-1][1] != math.MaxInt64 {
			t.Errorf("%+v: does not cover every key: %v", tc, got)
		}
		for i := 1; i < len(got); i++ {
			if got[i][0] != got[i-1][1]+1 || got[i][0] > got[i][1] {
				t.Errorf("%+v: chunk %d %v after %v", tc, i, got[i], got[i-1])
			}
		}
	}
}
