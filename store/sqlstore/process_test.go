package sqlstore_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/store"
	"github.com/keyctl/keyctl/store/sqlstore"
)

const childUpdates = 25

// openKind opens a store of kind (file, sqlite, postgres) at target.
func openKind(t *testing.T, kind, target string) core.KeysetStore {
	t.Helper()
	var (
		s   core.KeysetStore
		err error
	)
	switch kind {
	case "file":
		s, err = store.OpenFile(target)
	case "sqlite":
		s, err = sqlstore.OpenSQLite(t.Context(), target, sqlstore.Options{})
	case "postgres":
		s, err = sqlstore.OpenPostgres(t.Context(), target, sqlstore.Options{})
	default:
		t.Fatalf("kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestStoreChild is the writer process of TestTwoProcesses.
func TestStoreChild(t *testing.T) {
	kind := os.Getenv("KEYCTL_STORE_CHILD")
	if kind == "" {
		t.Skip("run by TestTwoProcesses")
	}
	base, _ := strconv.Atoi(os.Getenv("KEYCTL_STORE_CHILD_BASE"))
	s := openKind(t, kind, os.Getenv("KEYCTL_STORE_CHILD_TARGET"))
	for i := range childUpdates {
		id := uint32(base + i)
		err := s.Update(t.Context(), func(ks *core.Keyset) error {
			ks.DEKs = append(ks.DEKs, core.KeysetEntry{ID: id, State: core.StateDecryptOnly, Created: time.Unix(1700000000, 0).UTC(),
				Wrapped: &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "child", Algorithm: core.AlgAES256GCM, Data: []byte{byte(i)}}}}})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestTwoProcesses: two processes add DEKs to one store at the same time;
// none is lost.
func TestTwoProcesses(t *testing.T) {
	if os.Getenv("KEYCTL_STORE_CHILD") != "" {
		t.Skip("child")
	}
	targets := map[string]string{
		"file":   filepath.Join(t.TempDir(), "keyset.json"),
		"sqlite": filepath.Join(t.TempDir(), "keyset.db"),
	}
	kinds := []string{"file", "sqlite"}
	if !testing.Short() {
		targets["postgres"] = startPostgres(t)
		kinds = append(kinds, "postgres")
	}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			target := targets[kind]
			s := openKind(t, kind, target)
			if err := s.Update(t.Context(), func(ks *core.Keyset) error {
				ks.DEKs = []core.KeysetEntry{{ID: 1, State: core.StatePrimary, Wrapped: &core.WrappedKey{Stanzas: []core.Stanza{{Provider: "local-file", KeyID: "parent", Algorithm: core.AlgAES256GCM, Data: []byte("x")}}}}}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for p := range 2 {
				wg.Go(func() {
					cmd := exec.Command(os.Args[0], "-test.run=^TestStoreChild$", "-test.count=1")
					cmd.Env = append(os.Environ(), "KEYCTL_STORE_CHILD="+kind, "KEYCTL_STORE_CHILD_TARGET="+target,
						fmt.Sprintf("KEYCTL_STORE_CHILD_BASE=%d", 1000*(p+1)))
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Errorf("writer process %d: %v\n%s", p, err, out)
					}
				})
			}
			wg.Wait()
			ks, err := s.Load(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(ks.DEKs) != 1+2*childUpdates {
				t.Fatalf("%d DEKs after two writer processes, want %d", len(ks.DEKs), 1+2*childUpdates)
			}
		})
	}
}
