package store_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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
