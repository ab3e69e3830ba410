package core_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store"
)

// refs lists a record's stanzas as "keyid@version".
func refs(wk *core.WrappedKey) string {
	var s []string
	for _, st := range wk.Stanzas {
		s = append(s, st.KeyID+"@"+st.KeyVersion)
	}
	return strings.Join(s, ",")
}

func TestRewrapOptions(t *testing.T) {
	ctx := context.Background()
	ec := core.Context{"row": "7"}
	a, b, c := newMem("a"), newMem("b"), newMem("c")
	gone := core.KeyRef{Provider: "mem", KeyID: "gone"}
	// build returns a record holding one DEK wrapped by each of ps, in order.
	build := func(t *testing.T, ps ...*memProvider) (core.DEK, *core.WrappedKey) {
		dek, _ := core.NewDEK()
		wk := &core.WrappedKey{}
		for _, p := range ps {
			s, err := p.WrapKey(ctx, dek, ec)
			if err != nil {
				t.Fatal(err)
			}
			wk.Stanzas = append(wk.Stanzas, s)
		}
		return dek, wk
	}
	goneStanza := core.Stanza{Provider: gone.Provider, KeyID: gone.KeyID, KeyVersion: "1", Algorithm: core.Algorithm(1), Data: make([]byte, 60)}

	tests := []struct {
		name    string
		ring    []*memProvider // primary first
		opts    core.RewrapOptions
		record  []*memProvider
		addGone bool
		want    string // refs after, or "current", or "error:<text>"
	}{
		{"rotation keeps other KEKs", []*memProvider{a, b}, core.RewrapOptions{}, []*memProvider{b}, false, "a@1,b@1"},
		{"already current", []*memProvider{a, b}, core.RewrapOptions{}, []*memProvider{a, b}, false, "current"},
		{"to b removes the others", []*memProvider{a, b}, core.RewrapOptions{Target: b.Ref(), Exclusive: true}, []*memProvider{a, c}, false, "error:not configured"},
		{"to b with all configured", []*memProvider{a, b, c}, core.RewrapOptions{Target: b.Ref(), Exclusive: true}, []*memProvider{a, c}, false, "b@1"},
		{"to b when already only b", []*memProvider{a, b}, core.RewrapOptions{Target: b.Ref(), Exclusive: true}, []*memProvider{b}, false, "current"},
		{"add b goes last", []*memProvider{a, b}, core.RewrapOptions{Target: b.Ref()}, []*memProvider{a}, false, "a@1,b@1"},
		{"add b is current", []*memProvider{a, b}, core.RewrapOptions{Target: b.Ref()}, []*memProvider{a, b}, false, "current"},
		{"drop a", []*memProvider{a, b}, core.RewrapOptions{NoTarget: true, Drop: []core.KeyRef{a.Ref()}}, []*memProvider{a, b}, false, "b@1"},
		{"drop a, nothing else stays", []*memProvider{a, b}, core.RewrapOptions{NoTarget: true, Drop: []core.KeyRef{a.Ref()}}, []*memProvider{a}, false, "error:no configured wrap stays"},
		{"drop a, other wrap unconfigured", []*memProvider{a}, core.RewrapOptions{NoTarget: true, Drop: []core.KeyRef{a.Ref()}}, []*memProvider{a, c}, false, "error:no configured wrap stays"},
		{"drop a not present", []*memProvider{a, b}, core.RewrapOptions{NoTarget: true, Drop: []core.KeyRef{a.Ref()}}, []*memProvider{b}, false, "current"},
		{"drop unconfigured named KEK", []*memProvider{a}, core.RewrapOptions{Drop: []core.KeyRef{gone}}, []*memProvider{a}, true, "a@1"},
		{"to a with an unconfigured wrap", []*memProvider{a}, core.RewrapOptions{Exclusive: true}, []*memProvider{a}, true, "error:not configured"},
		{"add c and drop a", []*memProvider{a, b, c}, core.RewrapOptions{Target: c.Ref(), Drop: []core.KeyRef{a.Ref()}}, []*memProvider{a, b}, false, "b@1,c@1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var others []core.KeyProvider
			for _, p := range tt.ring[1:] {
				others = append(others, p)
			}
			ring, err := core.NewKeyring(tt.ring[0], others...)
			if err != nil {
				t.Fatal(err)
			}
			rw, err := ring.NewRewrapperWith(ctx, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			dek, wk := build(t, tt.record...)
			if tt.addGone {
				wk.Stanzas = append(wk.Stanzas, goneStanza)
			}
			before := wk.Clone()
			plan := rw.Plan(wk)
			out, st, err := rw.Rewrap(ctx, wk, ec)
			if !core.SameWrappedKey(wk, before) {
				t.Fatal("Rewrap modified its input")
			}
			switch {
			case strings.HasPrefix(tt.want, "error:"):
				if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tt.want, "error:")) {
					t.Fatalf("err = %v, want %q (result %v)", err, tt.want, st)
				}
				if st != core.RewrapFailed || out != nil {
					t.Fatalf("failed rewrap returned %v, %v", st, out)
				}
				return
			case err != nil:
				t.Fatal(err)
			case tt.want == "current":
				if st != core.AlreadyCurrent || out != wk || !plan.Current {
					t.Fatalf("status %v, plan %+v, want already current", st, plan)
				}
				return
			}
			if st != core.Rewrapped || plan.Current {
				t.Fatalf("status %v, plan %+v", st, plan)
			}
			if got := refs(out); got != tt.want {
				t.Fatalf("wraps = %s, want %s", got, tt.want)
			}
			// Every wrap that stays opens to the same DEK.
			all, _ := core.NewKeyring(a, b, c)
			for i, s := range out.Stanzas {
				one := &core.WrappedKey{Stanzas: []core.Stanza{s}}
				got, err := all.Unwrap(ctx, one, ec)
				if err != nil || !got.Equal(dek) {
					t.Fatalf("wrap %d (%s) does not open to the DEK: %v", i, s.KeyID, err)
				}
			}
			// And a second pass has nothing to do.
			if _, st, err := rw.Rewrap(ctx, out, ec); err != nil || st != core.AlreadyCurrent {
				t.Fatalf("second pass: %v, %v", st, err)
			}
		})
	}
}

func TestRewrapOptionsRefused(t *testing.T) {
	ctx := context.Background()
	a, b := newMem("a"), newMem("b")
	ring, _ := core.NewKeyring(a)
	for name, o := range map[string]core.RewrapOptions{
		"target not in keyring": {Target: b.Ref()},
		"target dropped":        {Target: a.Ref(), Drop: []core.KeyRef{a.Ref()}},
		"no target, no drop":    {NoTarget: true},
		"exclusive, no target":  {NoTarget: true, Exclusive: true, Drop: []core.KeyRef{b.Ref()}},
	} {
		if _, err := ring.NewRewrapperWith(ctx, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRewrapInconsistentRecordKeepsEverything: a record whose wraps hold
// different DEKs is never "fixed" by dropping one of them.
func TestRewrapInconsistentRecordKeepsEverything(t *testing.T) {
	ctx := context.Background()
	ec := core.Context{"k": "v"}
	a, b := newMem("a"), newMem("b")
	d1, _ := core.NewDEK()
	d2, _ := core.NewDEK()
	s1, _ := a.WrapKey(ctx, d1, ec)
	s2, _ := b.WrapKey(ctx, d2, ec)
	wk := &core.WrappedKey{Stanzas: []core.Stanza{s1, s2}}
	ring, _ := core.NewKeyring(a, b)
	for name, o := range map[string]core.RewrapOptions{
		"to a":   {Exclusive: true},
		"drop b": {NoTarget: true, Drop: []core.KeyRef{b.Ref()}},
	} {
		rw, err := ring.NewRewrapperWith(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := rw.Rewrap(ctx, wk, ec); err == nil || !errors.Is(err, core.ErrUnwrapFailed) {
			t.Errorf("%s: err = %v, want an inconsistent-record error", name, err)
		}
	}
}

// conflictStore changes one DEK's wrap (as another writer would) right
// after a bulk rewrap read it.
type conflictStore struct {
	*store.FileStore
	ring   *core.Keyring
	victim uint32
	done   atomic.Bool
}

func (s *conflictStore) SwapAll(ctx context.Context, swaps []core.WrappedSwap) ([]error, error) {
	if !s.done.Swap(true) {
		// Another writer rewraps the victim first.
		rw, _ := s.ring.NewRewrapperWith(ctx, core.RewrapOptions{})
		page, _ := s.Entries(ctx, s.victim-1, 1)
		out, _, err := rw.Rewrap(ctx, page[0].Wrapped, page[0].Context())
		if err != nil {
			return nil, err
		}
		// A different record of the same DEK: wrapped again.
		out.Stanzas = append(out.Stanzas[:0:0], out.Stanzas...)
		if err := s.SwapWrapped(ctx, s.victim, page[0].Wrapped, out); err != nil {
			return nil, err
		}
	}
	return s.FileStore.SwapAll(ctx, swaps)
}

func TestRewrapStore(t *testing.T) {
	ctx := context.Background()
	a := newMem("a")
	ring, _ := core.NewKeyring(a)
	path := filepath.Join(t.TempDir(), "keyset.json")
	fs, err := store.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2500
	deks := map[uint32]core.DEK{}
	if err := fs.Update(ctx, func(ks *core.Keyset) error {
		for range n {
			if _, err := ks.AddDEK(ctx, ring, time.Now()); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ks, _ := fs.Load(ctx)
	for _, e := range ks.DEKs {
		d, err := ring.Unwrap(ctx, e.Wrapped, e.Context())
		if err != nil {
			t.Fatal(err)
		}
		deks[e.ID] = d
	}
	if _, err := a.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	rw, _ := ring.NewRewrapper(ctx)

	// Dry run: everything would move from version 1; nothing is written.
	dry, err := rw.RewrapStore(ctx, fs, core.BulkOptions{DryRun: true, PageSize: 300})
	if err != nil || dry.Seen != n || dry.Rewrapped != n || dry.From["mem:a@1"] != n || len(dry.From) != 1 {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	if again, _ := fs.Load(ctx); !sameKeysetWraps(ks, again) {
		t.Fatal("dry run changed the store")
	}

	victim := ks.DEKs[0].ID // the lowest id: in the first page, read before any store
	for _, e := range ks.DEKs {
		victim = min(victim, e.ID)
	}
	cs := &conflictStore{FileStore: fs, ring: ring, victim: victim}
	var progress atomic.Int64
	stats, err := rw.RewrapStore(ctx, cs, core.BulkOptions{PageSize: 256, Pages: 3, Progress: func(s core.BulkStats) { progress.Store(int64(s.Seen)) }})
	if err != nil {
		t.Fatal(err)
	}
	// The victim is either rewrapped by the retry or found current.
	// The other writer already moved the victim: the retry finds it current.
	if stats.Seen != n || stats.Failed != 0 || stats.Rewrapped != n-1 || stats.AlreadyCurrent != 1 || stats.Conflicts != 1 {
		t.Fatalf("stats = %+v", stats)
	}
	if progress.Load() != n {
		t.Fatalf("last progress = %d, want %d", progress.Load(), n)
	}
	after, _ := fs.Load(ctx)
	for _, e := range after.DEKs {
		if refs(e.Wrapped) != "a@2" {
			t.Fatalf("DEK %08x wraps = %s", e.ID, refs(e.Wrapped))
		}
		d, err := ring.Unwrap(ctx, e.Wrapped, e.Context())
		if err != nil || !d.Equal(deks[e.ID]) {
			t.Fatalf("DEK %08x changed: %v", e.ID, err)
		}
	}
	// A rerun has nothing to do.
	stats, err = rw.RewrapStore(ctx, fs, core.BulkOptions{})
	if err != nil || stats.AlreadyCurrent != n || stats.Rewrapped != 0 {
		t.Fatalf("rerun = %+v, %v", stats, err)
	}
}

func TestRewrapStoreFailuresAndCancel(t *testing.T) {
	ctx := context.Background()
	a := newMem("a")
	ring, _ := core.NewKeyring(a)
	fs, _ := store.OpenFile(filepath.Join(t.TempDir(), "keyset.json"))
	if err := fs.Update(ctx, func(ks *core.Keyset) error {
		for range 50 {
			if _, err := ks.AddDEK(ctx, ring, time.Now()); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, _ = a.RotateKey(ctx)
	rw, _ := ring.NewRewrapper(ctx)
	a.failAll = fmt.Errorf("vault down: %w", core.ErrUnavailable)
	stats, err := rw.RewrapStore(ctx, fs, core.BulkOptions{MaxFailures: 5})
	if err != nil || stats.Failed != 50 || len(stats.Failures) != 5 || !errors.Is(stats.Failures[0].Err, core.ErrUnavailable) {
		t.Fatalf("stats = %+v, %v", stats, err)
	}
	a.failAll = nil
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := rw.RewrapStore(cctx, fs, core.BulkOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled run: %v", err)
	}
}

func sameKeysetWraps(a, b *core.Keyset) bool {
	if len(a.DEKs) != len(b.DEKs) {
		return false
	}
	for i := range a.DEKs {
		if !core.SameWrappedKey(a.DEKs[i].Wrapped, b.DEKs[i].Wrapped) {
			return false
		}
	}
	return true
}
