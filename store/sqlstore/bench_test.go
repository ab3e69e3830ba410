package sqlstore_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/internal/pgtest"
	"github.com/keyctl/keyctl/store/sqlstore"
)

// BenchmarkSQLiteSwapWrapped is one compare-and-swap (one transaction, one
// fsync) per op: the cost a bulk rewrap pays per DEK if it swaps them one by
// one.
func BenchmarkSQLiteSwapWrapped(b *testing.B) {
	s, err := sqlstore.OpenSQLite(b.Context(), filepath.Join(b.TempDir(), "k.db"), sqlstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	wk := func(v int) *core.WrappedKey {
		return &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "k", KeyVersion: fmt.Sprint(v), Algorithm: core.AlgAES256GCM, Data: make([]byte, 60)}}}
	}
	if err := s.Update(b.Context(), func(ks *core.Keyset) error {
		ks.DEKs = []core.KeysetEntry{{ID: 1, State: core.StatePrimary, Wrapped: wk(0)}}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		if err := s.SwapWrapped(b.Context(), 1, wk(i), wk(i+1)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSQLiteSwapAll1000 is a batch of 1,000 swaps in one transaction;
// ns/op is per batch.
func BenchmarkSQLiteSwapAll1000(b *testing.B) {
	s, err := sqlstore.OpenSQLite(b.Context(), filepath.Join(b.TempDir(), "k.db"), sqlstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchSwapAll(b, s, 1000)
}

// BenchmarkPostgresSwapAll16384 is a bulk rewrap's batch on PostgreSQL: 16,384
// swaps in one transaction (one UPDATE ... FROM unnest); ns/op is per batch.
func BenchmarkPostgresSwapAll16384(b *testing.B) {
	s, err := sqlstore.OpenPostgres(b.Context(), pgtest.Start(b), sqlstore.Options{Keyset: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchSwapAll(b, s, 16384)
}

// benchSwapAll fills s with n DEKs and swaps all their wraps in one SwapAll
// per op, reporting swaps/s.
func benchSwapAll(b *testing.B, s *sqlstore.SQLStore, n uint32) {
	wk := func(id uint32, v int) *core.WrappedKey {
		return &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "k", KeyVersion: fmt.Sprint(id, ".", v), Algorithm: core.AlgAES256GCM, Data: make([]byte, 60)}}}
	}
	if err := s.Update(b.Context(), func(ks *core.Keyset) error {
		for id := uint32(1); id <= n; id++ {
			st := core.StateDecryptOnly
			if id == 1 {
				st = core.StatePrimary
			}
			ks.DEKs = append(ks.DEKs, core.KeysetEntry{ID: id, State: st, Wrapped: wk(id, 0)})
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	swaps := make([]core.WrappedSwap, n)
	for i := 0; b.Loop(); i++ {
		for j := range swaps {
			id := uint32(j + 1)
			swaps[j] = core.WrappedSwap{ID: id, Prev: wk(id, i), Next: wk(id, i+1)}
		}
		res, err := s.SwapAll(b.Context(), swaps)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r != nil {
				b.Fatal(r)
			}
		}
	}
	b.ReportMetric(float64(int(n)*b.N)/b.Elapsed().Seconds(), "swaps/s")
}
