package localfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// testHookBeforeRename, when set by a test, runs after the temporary file is
// written and synced and before it replaces the key file; an error aborts
// the write.
var testHookBeforeRename func() error

// writeAtomic replaces (or, with noReplace, creates) the file at path with
// data: it writes a temporary file in the same directory with mode 0600,
// syncs it, renames it over path (or links it to path, which fails if path
// exists), and syncs the directory. On any failure the temporary file is
// removed and path is left as it was. It returns the FileInfo of the new
// file.
func writeAtomic(path string, data []byte, noReplace bool) (fi os.FileInfo, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if noReplace {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("%s already exists; refusing to overwrite a key file: %w", path, fs.ErrExist)
		}
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, osError(err)
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		if err != nil {
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return nil, osError(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return nil, osError(err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, osError(err)
	}
	err = tmp.Close()
	tmp = nil
	if err != nil {
		return nil, osError(err)
	}
	if testHookBeforeRename != nil {
		if err := testHookBeforeRename(); err != nil {
			return nil, err
		}
	}
	if noReplace {
		// A hard link fails if path exists, so a concurrent Create cannot be
		// overwritten. Fall back to rename where links are not supported.
		lerr := os.Link(tmpName, path)
		switch {
		case lerr == nil:
			os.Remove(tmpName)
		case errors.Is(lerr, fs.ErrExist):
			return nil, fmt.Errorf("%s already exists; refusing to overwrite a key file: %w", path, fs.ErrExist)
		default:
			if _, serr := os.Lstat(path); serr == nil {
				return nil, fmt.Errorf("%s already exists; refusing to overwrite a key file: %w", path, fs.ErrExist)
			}
			if err := os.Rename(tmpName, path); err != nil {
				return nil, osError(err)
			}
		}
	} else if err := os.Rename(tmpName, path); err != nil {
		return nil, osError(err)
	}
	if err := syncDir(dir); err != nil {
		return nil, osError(err)
	}
	fi, err = os.Stat(path)
	if err != nil {
		return nil, osError(err)
	}
	return fi, nil
}
