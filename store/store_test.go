package store_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/keyctl/keyctl/core"
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
