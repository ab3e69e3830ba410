package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/store"
	"github.com/keyctl/keyctl/store/storetest"
)

func TestFileStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		path := filepath.Join(t.TempDir(), "keyset.json")
		return storetest.Backend{
			Open: func(t *testing.T) core.KeysetStore {
				s, err := store.OpenFile(path)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
			Corrupt: func(t *testing.T, kind string) {
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				var m map[string]any
				if err := json.Unmarshal(b, &m); err != nil {
					t.Fatal(err)
				}
				deks := m["deks"].([]any)
				for _, d := range deks {
					d := d.(map[string]any)
					switch kind {
					case "garbage-wrapped":
						d["wrapped"] = "keyctl-wk1:!!!"
					case "two-primaries":
						d["state"] = "primary"
					case "bad-state":
						d["state"] = "bogus"
					case "zero-id":
						d["id"] = 0
					default:
						t.Fatalf("unknown corruption %q", kind)
					}
				}
				if b, err = json.Marshal(m); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
			},
		}
	})
}

func TestFileStoreTruncatedAndMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyset.json")
	if err := os.WriteFile(path, []byte(`{"format":1,"deks":[`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := store.OpenFile(path)
	if _, err := s.Load(t.Context()); !errors.Is(err, core.ErrMalformed) {
		t.Fatalf("truncated file: %v", err)
	}
	s, _ = store.OpenFile(filepath.Join(t.TempDir(), "no", "such", "keyset.json"))
	if err := s.Update(t.Context(), func(*core.Keyset) error { return nil }); err == nil {
		t.Fatal("Update into a missing directory succeeded")
	}
}

func TestFileStoreModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no unix modes")
	}
	path := filepath.Join(t.TempDir(), "keyset.json")
	s, _ := store.OpenFile(path)
	add := func(ks *core.Keyset) error {
		ks.DEKs = append(ks.DEKs, core.KeysetEntry{ID: uint32(len(ks.DEKs) + 1), State: core.StateDecryptOnly,
			Wrapped: &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "k", Algorithm: core.AlgAES256GCM, Data: []byte("x")}}}})
		ks.DEKs[0].State = core.StatePrimary
		return nil
	}
	if err := s.Update(t.Context(), add); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new keyset file mode %v (%v), want 0600", fi.Mode(), err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(t.Context(), add); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("replaced keyset file mode %v (%v), want 0640 kept", fi.Mode(), err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(t.Context()); !errors.Is(err, core.ErrPermission) {
		t.Fatalf("group-writable keyset: %v, want ErrPermission", err)
	}
	if err := s.Update(t.Context(), add); !errors.Is(err, core.ErrPermission) {
		t.Fatalf("Update of group-writable keyset: %v, want ErrPermission", err)
	}
}

// TestFileStoreStaleTempRemoved: a temporary file left by a process killed
// mid-write is removed by the next write (which holds the lock).
func TestFileStoreStaleTempRemoved(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "keyset.json")
	s, err := store.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".keyset.json.tmp-12345")
	other := filepath.Join(dir, ".other.json.tmp-1")
	for _, f := range []string{stale, other} {
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Update(ctx, func(ks *core.Keyset) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another file's temporary file was removed: %v", err)
	}
}

// TestFileStoreEntriesSeeChanges: pages come from a cache of the parsed
// file, which must follow every change, also one made by another store.
func TestFileStoreEntriesSeeChanges(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keyset.json")
	a, _ := store.OpenFile(path)
	b, _ := store.OpenFile(path)
	ring := newRing(t)
	for round := 1; round <= 3; round++ {
		if err := b.Update(ctx, func(ks *core.Keyset) error {
			_, err := ks.AddDEK(ctx, ring, time.Now())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		page, err := a.Entries(ctx, 0, 100)
		if err != nil || len(page) != round {
			t.Fatalf("round %d: %d entries, %v", round, len(page), err)
		}
		for i := 1; i < len(page); i++ {
			if page[i-1].ID >= page[i].ID {
				t.Fatal("entries not in ascending id order")
			}
		}
		if n, err := a.CountEntries(ctx); err != nil || n != round {
			t.Fatalf("count %d, %v", n, err)
		}
		// Pages after the last id, and after the largest id, are empty.
		if p, _ := a.Entries(ctx, page[len(page)-1].ID, 10); len(p) != 0 {
			t.Fatalf("page after the last id: %d entries", len(p))
		}
		if p, _ := a.Entries(ctx, ^uint32(0), 10); len(p) != 0 {
			t.Fatal("page after MaxUint32 not empty")
		}
		// A caller changing a returned entry does not change the cache.
		page[0].Wrapped.Stanzas[0].KeyVersion = "tampered"
		again, _ := a.Entries(ctx, 0, 1)
		if again[0].Wrapped.Stanzas[0].KeyVersion == "tampered" {
			t.Fatal("Entries returned the cache's own wrapped key")
		}
	}
}

func newRing(t *testing.T) *core.Keyring {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kek.json")
	p, err := localfile.Create(path, localfile.CreateOptions{KeyID: "store-test"})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := core.NewKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}
