// Package storetest is the conformance suite that every core.KeysetStore
// implementation passes (the file store, SQLite and PostgreSQL run it in
// package store's tests).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
)

// Backend is one fresh, empty backing store (a file path, a database).
type Backend struct {
	// Open returns a new handle on the backing store; each call is a
	// separate handle (its own database connection pool, its own lock file
	// descriptor), as a second process would have.
	Open func(t *testing.T) core.KeysetStore
	// Corrupt overwrites the stored keyset with malformed data of the given
	// kind (see Corruptions); the backing store already holds a keyset.
	Corrupt func(t *testing.T, kind string)
}

// Corruptions are the kinds of malformed stored data Backend.Corrupt makes.
var Corruptions = []string{"garbage-wrapped", "two-primaries", "bad-state", "zero-id"}

// Run runs the suite; newBackend returns a fresh backend per subtest.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	t.Run("EmptyLoad", func(t *testing.T) {
		s := newBackend(t).Open(t)
		ks, err := s.Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if ks.Format != core.KeysetFormatV1 || len(ks.DEKs) != 0 {
			t.Fatalf("empty store loaded %+v", ks)
		}
		es, err := s.Entries(t.Context(), 0, 10)
		if err != nil || len(es) != 0 {
			t.Fatalf("Entries on empty store: %v %v", es, err)
		}
	})
	t.Run("RoundTrip", func(t *testing.T) {
		b := newBackend(t)
		s := b.Open(t)
		want := sampleKeyset(5)
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		for _, h := range []core.KeysetStore{s, b.Open(t)} {
			got, err := h.Load(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			sameKeyset(t, got, want)
		}
		// Remove, reorder and change state; a second Update sees it all.
		if err := s.Update(t.Context(), func(ks *core.Keyset) error {
			ks.DEKs = ks.DEKs[1:]
			return ks.SetState(ks.DEKs[0].ID, core.StateRetired)
		}); err != nil {
			t.Fatal(err)
		}
		want.DEKs = append([]core.KeysetEntry(nil), want.DEKs[1:]...)
		want.DEKs[0].State = core.StateRetired
		got, err := b.Open(t).Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		sameKeyset(t, got, want)
	})
	t.Run("UpdateErrorAndInvalidStoreNothing", func(t *testing.T) {
		s := newBackend(t).Open(t)
		want := sampleKeyset(2)
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = nil; return boom }); !errors.Is(err, boom) {
			t.Fatalf("Update returned %v, want fn's error", err)
		}
		err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs[0].State = core.StatePrimary; return nil })
		if !errors.Is(err, core.ErrMalformed) {
			t.Fatalf("Update to two primaries: %v, want ErrMalformed", err)
		}
		got, err := s.Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		sameKeyset(t, got, want)
	})
	t.Run("EntriesPages", func(t *testing.T) {
		s := newBackend(t).Open(t)
		want := sampleKeyset(25)
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		var ids []uint32
		after := uint32(0)
		for {
			page, err := s.Entries(t.Context(), after, 7)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			if len(page) > 7 {
				t.Fatalf("page of %d > limit 7", len(page))
			}
			for _, e := range page {
				if e.ID <= after {
					t.Fatalf("id %08x not ascending after %08x", e.ID, after)
				}
				w, _ := want.Entry(e.ID)
				if w == nil || !core.SameWrappedKey(w.Wrapped, e.Wrapped) || w.State != e.State || !w.Created.Equal(e.Created) {
					t.Fatalf("entry %08x differs", e.ID)
				}
				after = e.ID
				ids = append(ids, e.ID)
			}
		}
		if len(ids) != len(want.DEKs) {
			t.Fatalf("paged %d entries, want %d", len(ids), len(want.DEKs))
		}
	})
	t.Run("SwapWrapped", func(t *testing.T) {
		b := newBackend(t)
		s := b.Open(t)
		want := sampleKeyset(3)
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		e := want.DEKs[1]
		next := wrapped("v2", 99)
		if err := s.SwapWrapped(t.Context(), e.ID, e.Wrapped, next); err != nil {
			t.Fatal(err)
		}
		// The old value no longer matches: refused, nothing changed.
		err := b.Open(t).SwapWrapped(t.Context(), e.ID, e.Wrapped, wrapped("v3", 1))
		if !errors.Is(err, core.ErrConflict) {
			t.Fatalf("stale swap: %v, want ErrConflict", err)
		}
		if err := s.SwapWrapped(t.Context(), 0xdeadbeef, e.Wrapped, next); !errors.Is(err, core.ErrKeyNotFound) {
			t.Fatalf("swap of unknown id: %v, want ErrKeyNotFound", err)
		}
		if err := s.SwapWrapped(t.Context(), e.ID, next, &core.WrappedKey{}); !errors.Is(err, core.ErrMalformed) {
			t.Fatalf("swap to invalid: %v, want ErrMalformed", err)
		}
		want.DEKs[1].Wrapped = next
		got, err := s.Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		sameKeyset(t, got, want)
	})
	t.Run("SwapAll", func(t *testing.T) {
		b := newBackend(t)
		s := b.Open(t)
		want := sampleKeyset(4)
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		d := want.DEKs
		swaps := []core.WrappedSwap{
			{ID: d[0].ID, Prev: d[0].Wrapped, Next: wrapped("n0", 1)},   // ok
			{ID: d[1].ID, Prev: d[2].Wrapped, Next: wrapped("n1", 1)},   // stale prev
			{ID: 0xdeadbeef, Prev: d[1].Wrapped, Next: wrapped("n", 1)}, // unknown id
			{ID: d[2].ID, Prev: d[2].Wrapped, Next: &core.WrappedKey{}}, // invalid next
			{ID: d[3].ID, Prev: d[3].Wrapped, Next: wrapped("n3", 1)},   // ok
		}
		res, err := s.SwapAll(t.Context(), swaps)
		if err != nil {
			t.Fatal(err)
		}
		wantErr := []error{nil, core.ErrConflict, core.ErrKeyNotFound, core.ErrMalformed, nil}
		if len(res) != len(swaps) {
			t.Fatalf("%d results for %d swaps", len(res), len(swaps))
		}
		for i, e := range wantErr {
			if (e == nil) != (res[i] == nil) || (e != nil && !errors.Is(res[i], e)) {
				t.Fatalf("swap %d: %v, want %v", i, res[i], e)
			}
		}
		want.DEKs[0].Wrapped = swaps[0].Next
		want.DEKs[3].Wrapped = swaps[4].Next
		got, err := b.Open(t).Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		sameKeyset(t, got, want)
		// All refused: nothing changes, no error.
		res, err = s.SwapAll(t.Context(), swaps[1:2])
		if err != nil || !errors.Is(res[0], core.ErrConflict) {
			t.Fatalf("all-refused SwapAll: %v, %v", res, err)
		}
	})
	t.Run("SwapAllSameIDTwice", func(t *testing.T) {
		// Swaps of one DEK in one batch apply in order, as one by one.
		b := newBackend(t)
		s := b.Open(t)
		want := sampleKeyset(2)
		if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		d := want.DEKs[1]
		a, c, x := wrapped("a", 1), wrapped("c", 1), wrapped("x", 1)
		res, err := s.SwapAll(t.Context(), []core.WrappedSwap{
			{ID: d.ID, Prev: d.Wrapped, Next: a}, // ok
			{ID: d.ID, Prev: a, Next: c},         // ok: after the first
			{ID: d.ID, Prev: d.Wrapped, Next: x}, // stale by now
		})
		if err != nil {
			t.Fatal(err)
		}
		if res[0] != nil || res[1] != nil || !errors.Is(res[2], core.ErrConflict) {
			t.Fatalf("results %v, want nil, nil, conflict", res)
		}
		want.DEKs[1].Wrapped = c
		got, err := b.Open(t).Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		sameKeyset(t, got, want)
	})
	t.Run("ConcurrentWriters", func(t *testing.T) {
		// Goroutines on two handles each add DEKs through Update and swap
		// wraps with compare-and-swap retries; no change may be lost.
		b := newBackend(t)
		handles := []core.KeysetStore{b.Open(t), b.Open(t)}
		first := sampleKeyset(1)
		if err := handles[0].Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = first.DEKs; return nil }); err != nil {
			t.Fatal(err)
		}
		const writers, each = 6, 5
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, writers*each*2)
		for w := range writers {
			wg.Go(func() {
				h := handles[w%2]
				for i := range each {
					id := uint32(1000 + w*100 + i)
					err := h.Update(ctx, func(ks *core.Keyset) error {
						ks.DEKs = append(ks.DEKs, core.KeysetEntry{ID: id, State: core.StateDecryptOnly, Created: time.Unix(1700000000, 0).UTC(), Wrapped: wrapped("1", byte(i))})
						return nil
					})
					if err != nil {
						errs <- err
					}
					// A counter in the primary's wrap: read, bump, swap;
					// retry on conflict.
					for {
						ks, err := h.Load(ctx)
						if err != nil {
							errs <- err
							return
						}
						p, _ := ks.Primary()
						n := counter(p.Wrapped)
						err = h.SwapWrapped(ctx, p.ID, p.Wrapped, withCounter(n+1))
						if err == nil {
							break
						}
						if !errors.Is(err, core.ErrConflict) {
							errs <- err
							return
						}
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		ks, err := handles[1].Load(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(ks.DEKs) != 1+writers*each {
			t.Fatalf("%d DEKs, want %d: an Update was lost", len(ks.DEKs), 1+writers*each)
		}
		p, _ := ks.Primary()
		if n := counter(p.Wrapped); n != writers*each {
			t.Fatalf("counter %d, want %d: a SwapWrapped was lost", n, writers*each)
		}
	})
	t.Run("Malformed", func(t *testing.T) {
		for _, kind := range Corruptions {
			t.Run(kind, func(t *testing.T) {
				b := newBackend(t)
				s := b.Open(t)
				want := sampleKeyset(3)
				if err := s.Update(t.Context(), func(ks *core.Keyset) error { ks.DEKs = want.DEKs; return nil }); err != nil {
					t.Fatal(err)
				}
				b.Corrupt(t, kind)
				if _, err := s.Load(t.Context()); !errors.Is(err, core.ErrMalformed) {
					t.Fatalf("Load of %s: %v, want ErrMalformed", kind, err)
				}
				called := false
				err := s.Update(t.Context(), func(*core.Keyset) error { called = true; return nil })
				if !errors.Is(err, core.ErrMalformed) || called {
					t.Fatalf("Update of %s: %v (fn called %v), want ErrMalformed before fn", kind, err, called)
				}
			})
		}
	})
}

func sameKeyset(t *testing.T, got, want *core.Keyset) {
	t.Helper()
	if got.Format != want.Format || len(got.DEKs) != len(want.DEKs) {
		t.Fatalf("keyset: format %d with %d DEKs, want %d with %d", got.Format, len(got.DEKs), want.Format, len(want.DEKs))
	}
	for i, g := range got.DEKs {
		w := want.DEKs[i]
		if g.ID != w.ID || g.State != w.State || !g.Created.Equal(w.Created) || !core.SameWrappedKey(g.Wrapped, w.Wrapped) {
			t.Fatalf("DEK %d: got %08x %s %v %s, want %08x %s %v %s", i, g.ID, g.State, g.Created, g.Wrapped, w.ID, w.State, w.Created, w.Wrapped)
		}
	}
}

// sampleKeyset returns n DEKs (ids not in order, the last one primary).
func sampleKeyset(n int) *core.Keyset {
	ks := core.NewKeyset()
	for i := range n {
		st := core.StateDecryptOnly
		if i == n-1 {
			st = core.StatePrimary
		}
		ks.DEKs = append(ks.DEKs, core.KeysetEntry{
			ID:      uint32(0x9e3779b1*uint32(i+1)) | 1,
			State:   st,
			Created: time.Unix(1700000000+int64(i)*3600, 0).UTC(),
			Wrapped: wrapped(fmt.Sprint(i+1), byte(i)),
		})
	}
	return ks
}

func wrapped(version string, fill byte) *core.WrappedKey {
	data := make([]byte, 60)
	for i := range data {
		data[i] = fill + byte(i)
	}
	return &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "storetest", KeyVersion: version, Algorithm: core.AlgAES256GCM, Data: data}}}
}

func withCounter(n int) *core.WrappedKey { return wrapped(fmt.Sprintf("c%d", n), 7) }

func counter(w *core.WrappedKey) int {
	var n int
	if _, err := fmt.Sscanf(w.Stanzas[0].KeyVersion, "c%d", &n); err != nil {
		return 0
	}
	return n
}
