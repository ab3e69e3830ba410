package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/keyctl/keyctl/core"
)

// FileStore keeps a keyset in one JSON file (the form of core.ParseKeyset).
// Every change takes an exclusive flock on path+".lock", reads the file,
// writes the new content to a temporary file in the same directory, fsyncs
// it, renames it over the file and fsyncs the directory: a reader sees the
// old or the new keyset, never a mix, and two processes cannot lose each
// other's changes. Per-DEK operations rewrite the whole file (a keyset holds
// at most core.MaxKeysetBytes of JSON, about 200,000 DEKs; use a SQL store
// beyond a few thousand).
type FileStore struct {
	path string

	mu    sync.Mutex
	cache entriesCache // the last file Entries parsed, sorted by id
}

// entriesCache keeps the parsed entries of one version of the file, so that
// the pages of a bulk pass do not each parse the whole file again. A version
// is told by the file's identity, size and times: every write renames a new
// file into place. A stale page is harmless (a swap against it is a
// compare-and-swap that fails with core.ErrConflict), so this is an
// optimisation, not a source of truth.
type entriesCache struct {
	fi     os.FileInfo
	sorted []core.KeysetEntry
}

var _ core.KeysetStore = (*FileStore)(nil)

// OpenFile returns the store for the keyset file at path. The file need not
// exist yet: Load then returns an empty keyset and the first Update creates
// it (mode 0600; a replaced file keeps its mode). A file writable by group or
// others is refused with core.ErrPermission, as keyctl refuses it.
func OpenFile(path string) (*FileStore, error) {
	if path == "" {
		return nil, fmt.Errorf("keyset file: empty path: %w", core.ErrMalformed)
	}
	return &FileStore{path: path}, nil
}

// Path returns the keyset file's path.
func (s *FileStore) Path() string { return s.path }

// Close does nothing; a FileStore holds no open file between calls.
func (s *FileStore) Close() error { return nil }

// Load reads and validates the keyset file.
func (s *FileStore) Load(ctx context.Context) (*core.Keyset, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.read()
}

func (s *FileStore) read() (*core.Keyset, error) {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return core.NewKeyset(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	if !fi.Mode().IsRegular() {
		what := "not a regular file"
		if fi.IsDir() {
			what = "is a directory"
		}
		return nil, fmt.Errorf("keyset file %s: %s", s.path, what)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0 {
		// Anyone who can write the keyset can swap a DEK's wrap for one of
		// a DEK they know, or delete DEKs (keyctl refuses it too).
		return nil, fmt.Errorf("keyset file %s has mode %04o: it is writable by group or others (chmod 600): %w", s.path, fi.Mode().Perm(), core.ErrPermission)
	}
	b, err := io.ReadAll(io.LimitReader(f, core.MaxKeysetBytes+1))
	if err != nil {
		return nil, fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	ks, err := core.ParseKeyset(b)
	if err != nil {
		return nil, fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	return ks, nil
}

// Update runs fn on the current keyset under the file's lock and replaces the
// file atomically with the result.
func (s *FileStore) Update(ctx context.Context, fn func(*core.Keyset) error) error {
	unlock, err := LockFile(ctx, s.path)
	if err != nil {
		return err
	}
	defer unlock()
	ks, err := s.read()
	if err != nil {
		return err
	}
	if err := fn(ks); err != nil {
		return err
	}
	return s.write(ks)
}

// Entries returns a page of entries in ascending id order.
func (s *FileStore) Entries(ctx context.Context, after uint32, limit int) ([]core.KeysetEntry, error) {
	sorted, err := s.sortedEntries(ctx)
	if err != nil {
		return nil, err
	}
	i, _ := slices.BinarySearchFunc(sorted, after+1, func(e core.KeysetEntry, id uint32) int {
		return cmp.Compare(e.ID, id)
	})
	if after == math.MaxUint32 {
		i = len(sorted)
	}
	rest := sorted[i:]
	if limit > 0 && len(rest) > limit {
		rest = rest[:limit]
	}
	out := make([]core.KeysetEntry, len(rest))
	for j, e := range rest {
		e.Wrapped = e.Wrapped.Clone()
		out[j] = e
	}
	return out, nil
}

// sortedEntries returns the file's entries by ascending id, parsing the file
// only when it changed since the last call.
func (s *FileStore) sortedEntries(ctx context.Context) ([]core.KeysetEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fi, statErr := os.Stat(s.path)
	s.mu.Lock()
	if statErr == nil && s.cache.fi != nil && sameVersion(s.cache.fi, fi) {
		sorted := s.cache.sorted
		s.mu.Unlock()
		return sorted, nil
	}
	s.mu.Unlock()
	ks, err := s.read()
	if err != nil {
		return nil, err
	}
	sorted := slices.Clone(ks.DEKs)
	slices.SortFunc(sorted, func(a, b core.KeysetEntry) int { return cmp.Compare(a.ID, b.ID) })
	if statErr == nil {
		if fi2, err := os.Stat(s.path); err == nil && sameVersion(fi, fi2) {
			s.mu.Lock()
			s.cache = entriesCache{fi: fi, sorted: sorted}
			s.mu.Unlock()
		}
	}
	return sorted, nil
}

// sameVersion reports whether a and b describe the same version of a file.
func sameVersion(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) && changeTime(a) == changeTime(b)
}

// CountEntries returns the number of DEKs in the file (core.EntryCounter).
func (s *FileStore) CountEntries(ctx context.Context) (int, error) {
	sorted, err := s.sortedEntries(ctx)
	if err != nil {
		return 0, err
	}
	return len(sorted), nil
}

// SwapWrapped replaces DEK id's wrapped key if it still equals prev.
func (s *FileStore) SwapWrapped(ctx context.Context, id uint32, prev, next *core.WrappedKey) error {
	return s.Update(ctx, func(ks *core.Keyset) error { return swapInKeyset(ks, id, prev, next) })
}

// errNoSwap makes Update store nothing when no swap of a SwapAll succeeded.
var errNoSwap = errors.New("no swap succeeded")

// SwapAll applies the swaps in one locked read-change-write of the file.
func (s *FileStore) SwapAll(ctx context.Context, swaps []core.WrappedSwap) ([]error, error) {
	var results []error
	err := s.Update(ctx, func(ks *core.Keyset) error {
		results = make([]error, len(swaps))
		byID := make(map[uint32]*core.KeysetEntry, len(ks.DEKs))
		for i := range ks.DEKs {
			byID[ks.DEKs[i].ID] = &ks.DEKs[i]
		}
		ok := 0
		for i, w := range swaps {
			e, found := byID[w.ID]
			if !found {
				results[i] = fmt.Errorf("keyset: no DEK %08x: %w", w.ID, core.ErrKeyNotFound)
				continue
			}
			if results[i] = swapEntry(e, w.Prev, w.Next); results[i] == nil {
				ok++
			}
		}
		if ok == 0 {
			return errNoSwap
		}
		return nil
	})
	if errors.Is(err, errNoSwap) {
		return results, nil
	}
	if err != nil {
		return nil, err
	}
	return results, nil
}

func (s *FileStore) write(ks *core.Keyset) error {
	b, err := ks.Marshal()
	if err != nil {
		return fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	dir := filepath.Dir(s.path)
	// write runs under the file's lock, so a temporary file of an earlier
	// write is left over from a process that died mid-write: remove it.
	if stale, err := filepath.Glob(filepath.Join(dir, "."+globEscape(filepath.Base(s.path))+".tmp-*")); err == nil {
		for _, f := range stale {
			_ = os.Remove(f)
		}
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	mode := os.FileMode(0o600) // a new file; a replaced one keeps its mode
	if fi, err := os.Stat(s.path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("keyset file %s: fsync: %w", s.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("keyset file %s: %w", s.path, err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil && !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("keyset file %s: fsync of the directory: %w", s.path, err)
		}
	}
	return nil
}

// globEscape quotes the pattern characters of a file name for filepath.Glob.
func globEscape(name string) string {
	var b strings.Builder
	for _, c := range name {
		if strings.ContainsRune(`*?[\\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func swapInKeyset(ks *core.Keyset, id uint32, prev, next *core.WrappedKey) error {
	e, err := ks.Entry(id)
	if err != nil {
		return err
	}
	return swapEntry(e, prev, next)
}

// swapEntry replaces e's wrapped key with next if it still equals prev.
func swapEntry(e *core.KeysetEntry, prev, next *core.WrappedKey) error {
	id := e.ID
	if next == nil {
		return fmt.Errorf("keyset: DEK %08x: no new wrapped key: %w", id, core.ErrMalformed)
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("keyset: DEK %08x: new wrapped key: %w", id, err)
	}
	if !core.SameWrappedKey(e.Wrapped, prev) {
		return fmt.Errorf("keyset: DEK %08x: its wrapped key is no longer the one read: %w", id, core.ErrConflict)
	}
	e.Wrapped = next.Clone()
	return nil
}
